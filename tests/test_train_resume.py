"""Training killed mid-run and resumed ends with the same parameters as an uninterrupted run, and
one train step on 8 fake CPU devices (fsdp x tensor) equals the same step on one device.

Both run the real entry points in subprocesses: `mini-o3 sft` for kill/resume (SIGKILL, no chance
to clean up), and a script with `--xla_force_host_platform_device_count=8` for the mesh check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.compile_flags import xla_flags
from tests.helpers import write_sharegpt, write_small_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=xla_flags())
    env.update(extra)
    return env


STEPS = 12  # enough steps after the first checkpoint that the signal lands mid-run


def _sft_cmd(data, out, model, steps=STEPS):
    return [sys.executable, "-m", "mini_o3_jax.cli", "sft", "--config", os.path.join(REPO, "configs/sft_tiny.py"),
            f"--config.data.path={data}", f"--config.out_dir={out}", f"--config.model_path={model}",
            f"--config.train.steps={steps}", "--config.checkpoint.every=2", "--config.optim.schedule='cosine'"]


def _final_params(out):
    import jax
    from flax import nnx

    from mini_o3_jax.model.weights import load_model

    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_model(os.path.join(out, "final"))))]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Data, a small model checkpoint, and an uninterrupted SFT run to compare against."""
    d = tmp_path_factory.mktemp("resume")
    data = write_sharegpt(str(d / "data"), 4)
    model = write_small_checkpoint(str(d / "model"))
    straight = str(d / "straight")
    subprocess.run(_sft_cmd(data, straight, model), env=_env(), check=True, capture_output=True, timeout=600)
    return data, model, _final_params(straight), straight


def _interrupt(data, out, model, sig, log):
    """Start `mini-o3 sft`, send `sig` once its step-2 checkpoint exists, return the exit code."""
    with open(log, "w") as f:
        proc = subprocess.Popen(_sft_cmd(data, out, model), env=_env(), stdout=f, stderr=subprocess.STDOUT)
        ckpt = os.path.join(out, "checkpoints", "2")
        deadline = time.time() + 300
        while not os.path.isdir(ckpt) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(sig)
        return proc.wait(timeout=300)


def _resume_and_compare(data, out, model, expected):
    assert not os.path.isdir(os.path.join(out, "final"))
    done = subprocess.run(_sft_cmd(data, out, model), env=_env(), check=True, capture_output=True, text=True,
                          timeout=600)
    assert "resumed from" in done.stdout + done.stderr
    got = _final_params(out)
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        np.testing.assert_array_equal(x, y)
    with open(os.path.join(out, "logs", "metrics.jsonl"), encoding="utf-8") as f:
        logged = [json.loads(line)["step"] for line in f]
    assert logged[-1] == STEPS and set(logged) == set(range(1, STEPS + 1))


def test_killed_and_resumed_sft_matches_an_uninterrupted_run(straight_run, tmp_path):
    data, model, expected, _ = straight_run
    out = str(tmp_path / "killed")
    assert _interrupt(data, out, model, signal.SIGKILL, str(tmp_path / "log")) == -signal.SIGKILL
    _resume_and_compare(data, out, model, expected)


def test_sigterm_saves_the_current_step_and_exits_cleanly(straight_run, tmp_path):
    data, model, expected, _ = straight_run
    out, log = str(tmp_path / "preempted"), str(tmp_path / "log")
    assert _interrupt(data, out, model, signal.SIGTERM, log) == 0
    with open(log, encoding="utf-8") as f:
        text = f.read()
    saved = int(text.split("SIGTERM: saved step ")[1].split(",")[0])
    assert 2 <= saved < STEPS
    assert str(saved) in os.listdir(os.path.join(out, "checkpoints"))  # the step it was at, not just step 2
    _resume_and_compare(data, out, model, expected)


def _corrupt(path, mode):
    """Cut the file in half, delete it, or flip one bit in its middle."""
    if mode == "deleted":
        os.remove(path)
        return
    with open(path, "r+b") as f:
        if mode == "truncated":
            f.truncate(os.path.getsize(path) // 2)
        else:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("mode", ["flipped"])  # truncated/deleted: test_checkpoint_corruption.py (~30 s each here)
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(straight_run, tmp_path, mode):
    """A run killed after its step-10 save (steps 8 and 10 kept), whose step 10 then got damaged on disk:
    resume warns, restores step 8 and still ends exactly where the uninterrupted run did. A flipped bit is the
    hard case: Orbax has no checksum on array data and used to restore it silently."""
    data, model, expected, straight = straight_run
    out = str(tmp_path / "damaged")
    shutil.copytree(straight, out)
    shutil.rmtree(os.path.join(out, "final"))
    ckpts = os.path.join(out, "checkpoints")
    shutil.rmtree(os.path.join(ckpts, str(STEPS)))  # as if killed before step 12 was saved
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpts, "10", "state")) for f in fs]
    _corrupt(max(files, key=os.path.getsize), mode)  # the largest array data file
    done = subprocess.run(_sft_cmd(data, out, model), env=_env(), check=True, capture_output=True, text=True,
                          timeout=600)
    assert f"warning: skipping checkpoint step 10: {os.path.join(ckpts, '10')}" in done.stderr, done.stderr[-3000:]
    assert f"resumed from {ckpts} step 8" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
    got = _final_params(out)
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        np.testing.assert_array_equal(x, y)
    assert os.path.isdir(os.path.join(ckpts, "10.corrupt")) and os.path.isdir(os.path.join(ckpts, "10"))


MESH_SCRIPT = r'''
import json, sys
import jax, numpy as np, optax
from flax import nnx
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.data.direct import read_sharegpt
from mini_o3_jax.sft.data import sharegpt_trajectories
from mini_o3_jax.train.batch import BatchSpec, examples_from_trajectories, micro_batches
from mini_o3_jax.train.step import StepConfig, Trainer
from tests.helpers import small_model_config, small_tokenizer

data = sys.argv[1]
proc = ImageProcessor(min_pixels=3136, max_pixels=60000)
tok = small_tokenizer()
trajs = list(sharegpt_trajectories(read_sharegpt(data), tok, proc, min_pixels=3136, max_pixels=60000))
out = {"devices": len(jax.devices())}
for loss, agg, trainable in (("sft", "token-mean", "language_model"), ("ppo", "seq-mean-token-mean", "all")):
    cfg = small_model_config(tok)
    ex = examples_from_trajectories(trajs, proc, agg=agg, advantages=[0.7, -1.1, 0.4, -0.2])
    batches, _ = micro_batches(ex, cfg, BatchSpec(micro_batch=4, min_length=16, pad_id=tok.endoftext_id))
    params = {}
    for name, mesh in (("single", None), ("mesh", make_mesh({"data": 1, "fsdp": 4, "tensor": 2}))):
        model = Qwen25VL(cfg, rngs=nnx.Rngs(7))
        # plain SGD: Adam's g/sqrt(v) turns last-bit differences of near-zero gradients into whole steps
        tr = Trainer(model, optax.sgd(0.5), StepConfig(loss=loss, trainable=trainable), mesh=mesh)
        bs = batches
        if loss == "ppo":
            bs = [b._replace(old_logprobs=np.asarray(tr.logprobs(b)) - 0.05) for b in batches]
        m = tr.train_step(bs)
        m = tr.train_step(bs)
        leaves = jax.tree_util.tree_leaves_with_path(tr.params)
        params[name] = {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves}
        if mesh is not None:
            out[loss + "_sharded_leaves"] = sum(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
                                                for _, x in leaves)
        out[loss + "_" + name + "_loss"] = m["loss"]
    first = Qwen25VL(cfg, rngs=nnx.Rngs(7))
    init = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        nnx.to_pure_dict(nnx.state(first)))}
    out[loss + "_moved"] = max(float(np.abs(v - init[k]).max()) for k, v in params["single"].items() if k in init)
    diffs = {k: float(np.abs(params["single"][k] - params["mesh"][k]).max()) for k in params["single"]}
    out[loss + "_max_diff"] = max(diffs.values())
# data parallelism really divides the work: per-device FLOPs of one gradient micro-batch (8 rows) on an
# 8-way fsdp mesh against one device, from the compiled programs' cost analysis
from mini_o3_jax.parallel.rules import activation_sharding
ex = examples_from_trajectories(trajs, proc, agg="token-mean")
b8 = micro_batches(ex, cfg, BatchSpec(micro_batch=8, min_length=16, pad_id=tok.endoftext_id))[0][0]
flops = {}
for name, mesh in (("single", None), ("fsdp8", make_mesh({"fsdp": 8}))):
    tr = Trainer(Qwen25VL(cfg, rngs=nnx.Rngs(7)), optax.adamw(1e-3), StepConfig(loss="sft"), mesh=mesh)
    with activation_sharding(mesh, tr.rules):
        flops[name] = tr._grad_fn.lower(tr.params, tr.frozen, tr.put(b8)).compile().cost_analysis()["flops"]
    if mesh is not None:
        mu = jax.tree.leaves(tr.opt_state)
        out["opt_state_sharded"] = sum(not x.sharding.is_fully_replicated for x in mu)
        out["opt_state_on_8"] = all(len(x.sharding.device_set) == 8 for x in mu)
        try:
            tr.put(batches[0]._replace())  # 4 rows cannot split 8 ways
            out["indivisible_rows"] = None
        except Exception as e:
            out["indivisible_rows"] = f"{type(e).__name__}: {e}"
out["flops_single"], out["flops_fsdp8"] = flops["single"], flops["fsdp8"]
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def mesh_result(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("mesh"))
    data = write_sharegpt(d, 4)
    env = _env(XLA_FLAGS=xla_flags(8))
    run = subprocess.run([sys.executable, "-c", MESH_SCRIPT, data], env=env, capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("loss", ["sft", "ppo"])
def test_train_step_on_8_devices_equals_one_device(mesh_result, loss):
    r = mesh_result
    assert r["devices"] == 8
    assert r[loss + "_sharded_leaves"] >= 10  # the parameters really are split over the mesh
    assert r[loss + "_single_loss"] == pytest.approx(r[loss + "_mesh_loss"], rel=1e-5)
    # two SGD steps; sharded reductions sum in another order, so equal up to fp32 rounding
    assert r[loss + "_max_diff"] < 2e-6, r
    assert r[loss + "_moved"] > 1e-4  # and the steps did change the parameters


def test_data_parallel_step_splits_the_work_and_the_optimizer_state(mesh_result):
    r = mesh_result
    ratio = r["flops_fsdp8"] / r["flops_single"]
    assert 0.12 <= ratio <= 0.125 * 1.1, ratio  # ~1/8 of one device's FLOPs per device (was ~1/3 with rows=1)
    assert r["opt_state_on_8"] and r["opt_state_sharded"] >= 20  # created sharded, not whole on device 0
    assert r["indivisible_rows"].startswith("ConfigError: a micro-batch of 4 rows does not split over the 8")


def test_resume_on_an_8_device_mesh_equals_the_uninterrupted_run(tmp_path):
    """The restore target comes from the trainer's own shardings: a run stopped after 2 steps on a (1, 4, 2) mesh
    and resumed for 2 more ends with the parameters of 4 uninterrupted steps, bit for bit."""
    data = write_sharegpt(str(tmp_path / "data"), 4)
    model = write_small_checkpoint(str(tmp_path / "model"))
    # every program stored, however fast it compiled
    env = _env(XLA_FLAGS=xla_flags(8), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the run's own cache, under out_dir, is what this test checks
    mesh = ["--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.train.batch_size=4"]

    def sft(out, steps):  # constant lr: 2 + 2 steps follow the same schedule as 4
        return subprocess.run(_sft_cmd(data, out, model, steps)[:-1] + mesh, env=env, capture_output=True, text=True,
                              timeout=600, check=False)

    straight = sft(str(tmp_path / "straight"), 4)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = str(tmp_path / "split")
    first = sft(out, 2)
    assert first.returncode == 0, first.stderr[-3000:]
    cached = os.listdir(os.path.join(out, "compile_cache"))  # the persistent cache, on by default under the run
    assert any(name.startswith("jit__grads") for name in cached), cached
    second = sft(out, 4)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr
    with open(os.path.join(out, "logs", "metrics.jsonl"), encoding="utf-8") as f:
        programs = [json.loads(line)["compiled_programs"] for line in f]
    assert programs[:2] == [3, 3] and programs[2] == 3  # init, grads, apply: one shape, no recompiles
    got, expected = _final_params(out), _final_params(str(tmp_path / "straight"))
    assert len(got) == len(expected) > 20
    for x, y in zip(got, expected):
        np.testing.assert_array_equal(x, y)
