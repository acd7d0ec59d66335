"""Damaged checkpoints on disk: every read failure is ONE error line naming the file/directory (no
TensorStore/asyncio tracebacks), a training resume falls back to the newest step that restores, and a
`convert` killed with SIGKILL leaves the previous checkpoint intact.

Real files are corrupted in the three ways disks and copies fail: truncated, deleted, bytes flipped.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mini_o3_jax import cli
from mini_o3_jax.errors import CheckpointError, CorruptCheckpointError
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.model.weights import ORBAX_META, load_orbax, save_hf, save_orbax
from mini_o3_jax.train.checkpoint import TrainCheckpointer, abstract_like
from tests.helpers import small_model_config, small_tokenizer, train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("truncated", "deleted", "flipped")
NOISE = ("Traceback", "Event loop is closed", "asyncio", "TensorStore(")


def corrupt(path: str, mode: str) -> None:
    """Damage one file: cut it in half, delete it, or flip one bit in the middle."""
    if mode == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif mode == "deleted":
        os.remove(path)
    else:
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x01]))


def largest_file(directory: str) -> str:
    files = [f for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(tree)]


def assert_quiet_stderr(err: str) -> None:
    for noise in NOISE:
        assert noise not in err, err[-3000:]


# ----------------------------------------------------------------------------- model checkpoints
@pytest.fixture(scope="module")
def tiny_model():
    return Qwen25VL(small_model_config(small_tokenizer()), dtype="float32", rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def orbax_ckpt(tiny_model, tmp_path_factory):
    return save_orbax(tiny_model, tmp_path_factory.mktemp("pristine") / "orbax")


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


@pytest.mark.parametrize("mode", MODES)
def test_corrupt_orbax_model_is_one_clear_cli_error(orbax_ckpt, tmp_path, mode, capfd):
    ckpt = _copy(orbax_ckpt, tmp_path / "ckpt")
    victim = largest_file(os.path.join(ckpt, "params"))
    corrupt(victim, mode)
    assert cli.main(["export", "--model", ckpt, "--out", str(tmp_path / "hf")]) == 2
    time.sleep(0.3)  # TensorStore reports its closed-loop callbacks from its own threads, after the error
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert_quiet_stderr(err)
    expected = {"truncated": (victim, "truncated"), "deleted": (victim, "missing"),
                "flipped": (os.path.join(ckpt, "params"), "checksum mismatch")}[mode]
    assert all(part in lines[0] for part in expected), lines[0]
    assert not os.path.exists(tmp_path / "hf")  # nothing half-exported


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return env


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_orbax_read_failure_is_one_line_in_a_real_process(orbax_ckpt, tmp_path):
    """A checkpoint written before file sizes were recorded, with a deleted data file: Orbax itself fails, and a
    real process (no pytest hooks) prints one `error:` line and none of TensorStore's asyncio tracebacks."""
    ckpt = _copy(orbax_ckpt, tmp_path / "ckpt")
    meta_path = os.path.join(ckpt, ORBAX_META)
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    del meta["files"], meta["checksums"]
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    corrupt(largest_file(os.path.join(ckpt, "params")), "deleted")
    run = _run(["-m", "mini_o3_jax.cli", "export", "--model", ckpt, "--out", str(tmp_path / "hf")])
    assert run.returncode == 2, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith(f"error: {os.path.join(ckpt, 'params')}: cannot restore Orbax params (")
    assert "TensorStore(" not in lines[0] and len(lines[0]) < 700


def test_intact_orbax_checkpoint_loads_equal(tiny_model, orbax_ckpt):
    """The checksums do not reject a good checkpoint (and the directory keeps normal permissions)."""
    for a, b in zip(leaves(nnx.state(load_orbax(orbax_ckpt))), leaves(nnx.state(tiny_model)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert os.stat(orbax_ckpt).st_mode & 0o055 == 0o055 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- training checkpoints
@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("train") / "ckpt")
    with TrainCheckpointer(d, async_save=False) as ckpt:
        for step in (1, 2, 3):
            assert ckpt.save(step, train_state(step), {"step": step})
    return d


@pytest.mark.parametrize("mode", MODES)
def test_resume_skips_corrupt_newest_step(three_steps, tmp_path, mode, capfd):
    d = _copy(three_steps, tmp_path / "ckpt")
    corrupt(largest_file(os.path.join(d, "3")), mode)
    warnings: list[str] = []
    with TrainCheckpointer(d) as ckpt:
        step, state, meta = ckpt.restore_latest(abstract_like(train_state(0)), warn=warnings.append)
        assert (step, meta) == (2, {"step": 2})
        for a, b in zip(leaves(state), leaves(train_state(2)), strict=True):
            np.testing.assert_array_equal(a, b)
        assert ckpt.all_steps() == [1, 2]
        assert ckpt.save(3, train_state(3), {"step": 3})  # the skipped step is written afresh
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "skipping checkpoint step 3" in warnings[0] and os.path.join(d, "3") in warnings[0]
    assert os.path.isdir(os.path.join(d, "3.corrupt"))  # kept for inspection, invisible to Orbax
    time.sleep(0.3)
    assert_quiet_stderr(capfd.readouterr().err)


def test_flipped_data_byte_is_caught_by_checksum(three_steps, tmp_path):
    """Orbax's array data carries no checksum: without ours this restores silently as wrong numbers."""
    d = _copy(three_steps, tmp_path / "ckpt")
    victim = largest_file(os.path.join(d, "3"))
    assert os.path.basename(os.path.dirname(victim)) == "d"  # an array data file, not metadata
    corrupt(victim, "flipped")
    with TrainCheckpointer(d) as ckpt, pytest.raises(CorruptCheckpointError) as info:
        ckpt.restore(abstract_like(train_state(0)), 3)
    assert "params/w" in str(info.value) and "checksum mismatch" in str(info.value)


def test_no_step_restores_is_one_error(three_steps, tmp_path):
    d = _copy(three_steps, tmp_path / "ckpt")
    for step, mode in zip((1, 2, 3), MODES):
        corrupt(largest_file(os.path.join(d, str(step))), mode)
    with TrainCheckpointer(d) as ckpt, pytest.raises(CorruptCheckpointError) as info:
        ckpt.restore_latest(abstract_like(train_state(0)), warn=None)
    msg = str(info.value)
    assert msg.startswith(f"{d}: no checkpoint restores (3 corrupt)") and "\n" not in msg
    assert all(os.path.join(d, str(s)) in msg for s in (1, 2, 3))


def test_mismatching_target_does_not_fall_back(three_steps, tmp_path):
    """A config change is not corruption: older steps would not fit either, so it is raised at once."""
    d = _copy(three_steps, tmp_path / "ckpt")
    wrong = abstract_like(train_state(0))
    wrong["params"]["w"] = jax.ShapeDtypeStruct((128, 64), jnp.float32)
    with TrainCheckpointer(d) as ckpt, pytest.raises(CheckpointError) as info:
        ckpt.restore_latest(wrong, warn=None)
    assert not isinstance(info.value, CorruptCheckpointError) and "params/w" in str(info.value)
    assert sorted(os.listdir(d)) == ["1", "2", "3"]  # nothing moved aside


_RESUME = r"""
import sys
from tests.helpers import train_state
from mini_o3_jax.train.checkpoint import TrainCheckpointer, abstract_like
with TrainCheckpointer(sys.argv[1]) as ckpt:
    step, _, meta = ckpt.restore_latest(abstract_like(train_state(0)), warn=lambda m: print(m, file=sys.stderr))
print("RESUMED", step, meta["step"])
"""


def test_resume_fallback_stderr_in_a_real_process(three_steps, tmp_path):
    """The deleted-data case makes Orbax abandon sibling reads: stderr is the one warning line, nothing else."""
    d = _copy(three_steps, tmp_path / "ckpt")
    corrupt(largest_file(os.path.join(d, "3")), "deleted")
    run = _run(["-c", _RESUME, d])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "RESUMED 2 2"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: skipping checkpoint step 3: "), run.stderr[-3000:]


# ----------------------------------------------------------------------------- SIGKILL during convert
def test_sigkill_during_convert_keeps_old_checkpoint(tiny_model, orbax_ckpt, tmp_path):
    """`convert` writes into `.<name>.tmp-*` and renames at the end. Kill -9 it as soon as that temp dir
    exists: the old checkpoint must load unchanged. The write takes Orbax ~1 s, far longer than the 10 ms
    poll; should a busy machine still let it finish first, the new checkpoint must then be complete, and the
    test retries (up to 3 times) until a kill really lands mid-write."""
    other = Qwen25VL(tiny_model.config, dtype="float32", rngs=nnx.Rngs(4))
    hf = save_hf(other, str(tmp_path / "hf"), dtype="float32")
    old = [np.asarray(x) for x in leaves(nnx.state(tiny_model))]
    new = [np.asarray(x) for x in leaves(nnx.state(other))]
    killed = False
    for attempt in range(3):
        out = _copy(orbax_ckpt, tmp_path / f"out{attempt}")
        pattern = os.path.join(str(tmp_path), f".out{attempt}.tmp-*")
        proc = subprocess.Popen([sys.executable, "-m", "mini_o3_jax.cli", "convert", "--hf", hf, "--out", out],
                                env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and not glob.glob(pattern):
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
        got = leaves(nnx.state(load_orbax(out)))
        if code == -signal.SIGKILL:
            killed = True
            assert glob.glob(pattern)  # it died mid-write, leaving only its temp dir
            for a, b in zip(got, old, strict=True):
                np.testing.assert_array_equal(a, b)
            break
        assert code == 0, stderr[-3000:]
        for a, b in zip(got, new, strict=True):  # finished first: then the new checkpoint is whole
            np.testing.assert_array_equal(a, b)
    assert killed, "convert finished before it could be killed three times"


def test_asyncio_never_retrieved_noise_of_a_failed_read_is_filtered_and_nothing_else(caplog):
    """On a busy machine a failed restore's sibling reads finish first and asyncio logs each as "Task exception was
    never retrieved" (the race the real-process test hits only under load): those records are dropped, any other
    asyncio error is kept."""
    import logging

    from mini_o3_jax.integrity import quiet_closed_loop_noise

    quiet_closed_loop_noise()
    log = logging.getLogger("asyncio")

    def never_retrieved(exc: BaseException) -> None:
        try:
            raise exc
        except BaseException as e:
            log.error("Task exception was never retrieved\nfuture: <Task finished>", exc_info=(type(e), e, e.__traceback__))

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        never_retrieved(ValueError('FAILED_PRECONDITION: Error reading "a/0.0" in OCDBT database at local file "/x/"'))
        try:
            try:
                raise ValueError("Truncated Zstd-compressed stream")
            except ValueError as inner:
                raise Exception("Encountered error while reading array index: (slice(0, 3, 1),)") from inner
        except Exception as e:
            never_retrieved(e)
        never_retrieved(ZeroDivisionError("a bug elsewhere"))
        log.error("Task was destroyed but it is pending!")
    kept = [r.getMessage().splitlines()[0] for r in caplog.records]
    assert kept == ["Task exception was never retrieved", "Task was destroyed but it is pending!"], kept
    assert caplog.records[0].exc_info[0] is ZeroDivisionError
