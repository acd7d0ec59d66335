"""TrainCheckpointer round trips (state + JSON meta), keep-N, errors, cross-mesh restore, PreemptionGuard."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mini_o3_jax.errors import CheckpointError
from mini_o3_jax.train.checkpoint import (
    PreemptionGuard,
    TrainCheckpointer,
    abstract_like,
    key_data,
    key_from_data,
)
from tests.compile_flags import xla_flags

REPO = Path(__file__).resolve().parents[1]


def make_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = {
        "dense": {"kernel": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32), "bias": jnp.zeros(8)},
        "embed": jnp.asarray(rng.standard_normal((16, 4)), jnp.bfloat16),
    }
    opt_state = optax.adamw(1e-3).init(params)
    # one real update so mu/nu/count are not all zeros
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = optax.adamw(1e-3).update(grads, opt_state, params)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed + 7, jnp.int32)}


def assert_trees_identical(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_state_meta_and_key(tmp_path):
    state = make_state()
    key = jax.random.split(jax.random.key(42))[1]
    meta = {"data": {"epoch": 1, "position": 1234}, "rng": key_data(key), "loss": 0.5}
    with TrainCheckpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(10, state, meta)
        assert ckpt.latest_step() == 10 and ckpt.all_steps() == [10]
        restored, restored_meta = ckpt.restore(abstract_like(state))
    assert_trees_identical(restored, state)
    assert restored_meta == meta
    json.dumps(restored_meta)
    rebuilt = key_from_data(restored_meta["rng"])
    np.testing.assert_array_equal(jax.random.key_data(rebuilt), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.normal(rebuilt, (3,)), jax.random.normal(key, (3,)))


def test_keep_last_two_async_wait_and_no_double_save(tmp_path):
    ckpt = TrainCheckpointer(tmp_path / "ckpt", keep=2, async_save=True)
    try:
        for step in range(1, 5):
            assert ckpt.save(step, make_state(step), {"step": step})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_step() == 4
        assert ckpt.save(4, make_state(4), {"step": 4}) is False
        assert ckpt.save(4, make_state(4), {"step": 4}, force=True) is False
        restored, meta = ckpt.restore(abstract_like(make_state(0)), step=3)
        assert meta == {"step": 3}
        assert_trees_identical(restored, make_state(3))
        # restoring into concrete arrays works too
        restored, _ = ckpt.restore(make_state(0))
        assert_trees_identical(restored, make_state(4))
    finally:
        ckpt.close()
    # a fresh checkpointer on the same directory sees the committed steps and refuses to re-save them
    with TrainCheckpointer(tmp_path / "ckpt", keep=2) as again:
        assert again.latest_step() == 4
        assert again.save(3, make_state(3), {}) is False


def test_restore_without_checkpoint_names_directory(tmp_path):
    directory = tmp_path / "empty_run"
    with TrainCheckpointer(directory) as ckpt, pytest.raises(CheckpointError, match="empty_run"):
        ckpt.restore(abstract_like(make_state()))


def test_restore_missing_step_and_bad_meta(tmp_path):
    with TrainCheckpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        ckpt.save(1, make_state(), {})
        with pytest.raises(CheckpointError, match=r"step 5.*\[1\]"):
            ckpt.restore(abstract_like(make_state()), step=5)
        with pytest.raises(CheckpointError, match="not strict JSON"):
            ckpt.save(2, make_state(), {"lr": np.float32(1.0)})


def test_restore_wrong_shape_or_structure_lists_paths(tmp_path):
    state = make_state()
    with TrainCheckpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        ckpt.save(1, state, {})
        wrong = abstract_like(state)
        wrong["params"]["dense"]["kernel"] = jax.ShapeDtypeStruct((4, 9), jnp.float32)
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(wrong)
        message = str(info.value)
        assert "params/dense/kernel" in message and "(4, 8)" in message and "(4, 9)" in message
        assert "opt_state" not in message  # only the mismatching path is listed

        extra = abstract_like(state)
        extra["params"]["new_head"] = jax.ShapeDtypeStruct((2,), jnp.float32)
        del extra["params"]["embed"]
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(extra)
        assert "params/new_head: missing in checkpoint" in str(info.value)
        assert "params/embed: in checkpoint" in str(info.value)


def test_uncommitted_step_directory_is_invisible(tmp_path):
    """What a kill mid-save leaves behind (Orbax's tmp dir, never renamed) is not a restorable step."""
    directory = tmp_path / "ckpt"
    state = make_state()
    with TrainCheckpointer(directory, async_save=False) as ckpt:
        ckpt.save(1, state, {"step": 1})
    shutil.copytree(directory / "1", directory / "2.orbax-checkpoint-tmp")
    (directory / "2.orbax-checkpoint-tmp" / "commit_success.txt").unlink(missing_ok=True)
    with TrainCheckpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        _, meta = ckpt.restore(abstract_like(state))
        assert meta == {"step": 1}


_KILLED_MID_SAVE = r"""
import os, sys
import jax.numpy as jnp, numpy as np
from mini_o3_jax.train.checkpoint import TrainCheckpointer

ckpt = TrainCheckpointer(sys.argv[1], async_save=True)
ckpt.save(1, {"w": jnp.ones((4096, 4096), jnp.float32)}, {"step": 1})
ckpt.wait()
ckpt.save(2, {"w": jnp.full((4096, 4096), 2.0, jnp.float32)}, {"step": 2})  # 64 MiB, written in the background
os._exit(0)  # killed before the background write commits
"""


def _subprocess_env(**extra: str) -> dict:
    pythonpath = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath, **extra}


def test_kill_during_async_save_leaves_last_committed_step(tmp_path):
    directory = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_SAVE, str(directory)],
        env=_subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    target = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
    with TrainCheckpointer(directory, async_save=False) as ckpt:
        latest = ckpt.latest_step()
        # Normally step 2 never committed; if the machine was fast enough to commit it, it must restore whole.
        assert latest in (1, 2)
        restored, meta = ckpt.restore(target)
        assert meta == {"step": latest} and float(restored["w"][0, 0]) == float(latest)
        if latest == 1:  # the resumed run saves step 2 again over the leftover tmp directory
            assert ckpt.save(2, {"w": jnp.zeros((4096, 4096), jnp.float32)}, {"step": 2})
            assert ckpt.all_steps() == [1, 2]


_CROSS_MESH = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mini_o3_jax.train.checkpoint import TrainCheckpointer, abstract_like

assert len(jax.devices()) == 8
mesh8 = Mesh(np.array(jax.devices()).reshape(8), ("fsdp",))
w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
b = np.arange(8, dtype=np.int32)
state = {
    "w": jax.device_put(w, NamedSharding(mesh8, P("fsdp", None))),
    "b": jax.device_put(b, NamedSharding(mesh8, P("fsdp"))),
}
ckpt = TrainCheckpointer(sys.argv[1], async_save=True)
ckpt.save(3, state, {"mesh": "fsdp8"})
ckpt.wait()

mesh24 = Mesh(np.array(jax.devices()).reshape(2, 4), ("fsdp", "tensor"))
new_shardings = {"w": NamedSharding(mesh24, P("tensor", "fsdp")), "b": NamedSharding(mesh24, P(None))}
restored, meta = ckpt.restore(abstract_like(state, new_shardings))
ckpt.close()
print(json.dumps({
    "meta": meta,
    "w_equal": bool(np.array_equal(np.asarray(restored["w"]), w)),
    "b_equal": bool(np.array_equal(np.asarray(restored["b"]), b)),
    "w_sharding_ok": restored["w"].sharding == new_shardings["w"],
    "b_sharding_ok": restored["b"].sharding == new_shardings["b"],
    "w_mesh_shape": dict(restored["w"].sharding.mesh.shape),
    "w_spec": str(restored["w"].sharding.spec),
    "w_shard_shape": list(restored["w"].addressable_shards[0].data.shape),
}))
"""


def test_restore_onto_different_mesh(tmp_path):
    env = _subprocess_env(XLA_FLAGS=xla_flags(8))
    proc = subprocess.run(
        [sys.executable, "-c", _CROSS_MESH, str(tmp_path / "ckpt")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["meta"] == {"mesh": "fsdp8"}
    assert result["w_equal"] and result["b_equal"]
    assert result["w_sharding_ok"] and result["b_sharding_ok"]
    assert result["w_mesh_shape"] == {"fsdp": 2, "tensor": 4}
    assert result["w_shard_shape"] == [4, 4]  # 16 rows over tensor=4, 8 columns over fsdp=2


def test_preemption_guard_sets_flag_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested and guard.reason is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
        assert guard.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    # SIGINT only when asked for
    before_int = signal.getsignal(signal.SIGINT)
    with PreemptionGuard(sigint=True) as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested and guard.reason == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before_int
