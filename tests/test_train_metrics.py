"""MetricsWriter: console cadence, JSONL and TensorBoard contents (read back without TensorFlow), timers."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from mini_o3_jax.train.metrics import (
    MetricsWriter,
    StepTimer,
    read_jsonl_metrics,
    read_tensorboard_scalars,
    tokens_per_second,
)

STEPS = {
    1: {"loss": 2.5, "lr": 3e-4, "tokens": 512},
    2: {"loss": jnp.float32(2.25), "lr": np.float32(3e-4), "tokens": jnp.asarray(640, jnp.int32)},
    3: {"loss": jnp.asarray([1.875], jnp.bfloat16), "lr": 2e-4, "tokens": np.int64(700)},
    4: {"loss": 1.75, "lr": 1e-4, "tokens": 800},
}


def write_run(logdir, **kwargs):
    lines: list[str] = []
    with MetricsWriter(logdir, console=lines.append, **kwargs) as writer:
        for step, scalars in STEPS.items():
            writer.write(step, scalars)
        writer.write_text(4, "sample", "<think>zoom</think> answer: B")
    return lines


def expected(step: int, name: str) -> float:
    return float(np.asarray(STEPS[step][name], np.float64).reshape(()))


def test_jsonl_and_tensorboard_have_every_step(tmp_path):
    lines = write_run(tmp_path, log_every=2)
    records = read_jsonl_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        for name in ("loss", "lr", "tokens"):
            assert r[name] == pytest.approx(expected(r["step"], name), rel=1e-6)
    assert isinstance(records[1]["tokens"], int)

    scalars = read_tensorboard_scalars(tmp_path)
    assert set(scalars) >= {"loss", "lr", "tokens"}
    for name in ("loss", "lr", "tokens"):
        assert [s for s, _ in scalars[name]] == [1, 2, 3, 4]
        for step, value in scalars[name]:
            assert value == pytest.approx(expected(step, name), rel=1e-6)  # stored as float32

    # console only every log_every steps, with formatted numbers
    assert len(lines) == 2
    assert lines[0].startswith("step 2:") and "loss=2.25" in lines[0] and "lr=3.000e-04" in lines[0]
    assert "tokens=640" in lines[0]
    assert lines[1].startswith("step 4:") and "loss=1.75" in lines[1] and "tokens=800" in lines[1]

    text = [json.loads(line) for line in (tmp_path / "text.jsonl").read_text().splitlines()]
    assert text == [{"step": 4, "tag": "sample", "text": "<think>zoom</think> answer: B"}]


def test_prefix_nonfinite_and_append(tmp_path):
    lines: list[str] = []
    with MetricsWriter(tmp_path, console=lines.append, prefix="rl/") as writer:
        writer.write(1, {"loss": float("nan"), "grad_norm": jnp.inf, "ok": True})
    with MetricsWriter(tmp_path, console=None) as writer:  # a resumed run appends to the same files
        writer.write(2, {"loss": 1.0})
    records = read_jsonl_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] is None and records[0]["grad_norm"] is None and records[0]["ok"] == 1
    assert lines == ["rl/step 1: loss=nan grad_norm=inf ok=1"]
    scalars = read_tensorboard_scalars(tmp_path)
    assert math.isnan(scalars["rl/loss"][0][1]) and scalars["rl/grad_norm"] == [(1, math.inf)]
    assert scalars["loss"] == [(2, 1.0)]


def test_console_only_and_bad_values(tmp_path):
    lines: list[str] = []
    writer = MetricsWriter(None, console=lines.append)
    writer.write(5, {"loss": jnp.float32(0.125)})
    writer.close()
    assert lines == ["step 5: loss=0.125"]
    with MetricsWriter(tmp_path, console=None) as writer, pytest.raises(ValueError, match="'acc'"):
        writer.write(1, {"acc": np.zeros(3)})


def test_torn_jsonl_tail_is_skipped(tmp_path):
    with MetricsWriter(tmp_path, console=None) as writer:
        writer.write(1, {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # crash mid-line
    assert [r["step"] for r in read_jsonl_metrics(tmp_path)] == [1]


def test_step_timer_and_throughput():
    timer = StepTimer()
    with timer:
        sum(range(1000))
    timer.start()
    seconds = timer.stop()
    assert timer.count == 2 and seconds == timer.last >= 0.0
    assert timer.mean == pytest.approx(timer.total / 2)
    with pytest.raises(RuntimeError):
        timer.stop()
    assert tokens_per_second(1000, 0.5) == 2000.0
    assert tokens_per_second(1000, 0.0) == 0.0
