"""Training progress and metrics: console lines, TensorBoard event files and a JSONL log.

The JSONL file is the source of truth for scripts and tests (plain JSON, flushed per line, so a crashed run
keeps what it logged); TensorBoard is for looking at curves; the console line is for a human watching.
``read_tensorboard_scalars`` parses event files directly, so checking them needs neither TensorFlow nor
TensorBoard.

An object-store logdir (``gs://...``) cannot be appended to: the files are written in a local staging directory
and copied up whole every ``upload_every`` seconds and at ``flush``/``close`` (TensorBoard reads them there).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mini_o3_jax import storage

JSONL_NAME = "metrics.jsonl"
TEXT_JSONL_NAME = "text.jsonl"


def _to_python(name: str, value: Any) -> float | int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
    item = arr.reshape(()).item()
    if isinstance(item, bool):
        return int(item)
    if not isinstance(item, int | float):
        raise ValueError(f"metric {name!r} must be a real number, got {item!r}")
    return item


def _format(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3e}"
    return f"{value:.4g}"


def _json_value(value: float | int) -> float | int | None:
    return value if isinstance(value, int) or math.isfinite(value) else None  # strict JSON has no nan/inf


class MetricsWriter:
    """Per-step scalars to the console (one compact line every `log_every` steps), to TensorBoard event
    files (tensorboardX SummaryWriter, under logdir) and to logdir/metrics.jsonl (one JSON object per step,
    flushed per line, so a crashed run keeps what it logged).

    ``logdir=None`` logs to the console only. ``console`` is any ``str -> None`` (``print``, a logger method,
    ``tqdm.write``) or None for silence. Only the process that should log (e.g. ``jax.process_index() == 0``)
    should create a writer with a logdir.
    """

    def __init__(
        self,
        logdir: str | os.PathLike | None,
        *,
        log_every: int = 1,
        console: Callable[[str], Any] | None = print,
        prefix: str = "",
        upload_every: float = 60.0,
    ):
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.remote = None  # the object-store logdir the local staging directory is copied to
        self.upload_every, self._uploaded = upload_every, time.monotonic()
        if logdir is not None and storage.is_uri(logdir):
            self.remote = storage.path(storage.require_backend(logdir, "logdir"))
            logdir = tempfile.mkdtemp(prefix="mini_o3_logs-")
            for name in (JSONL_NAME, TEXT_JSONL_NAME):  # a resumed run appends to what its last run logged
                if (self.remote / name).exists():
                    (Path(logdir) / name).write_bytes((self.remote / name).read_bytes())
        self.logdir = None if logdir is None else Path(logdir)
        self.log_every = log_every
        self.console = console
        self.prefix = prefix
        self._tb = None
        self._jsonl = None
        self._text = None
        if self.logdir is not None:
            from tensorboardX import SummaryWriter  # deferred: console-only use needs no tensorboardX

            self.logdir.mkdir(parents=True, exist_ok=True)
            # Event file names only carry the second and host: a unique, time-ordered suffix stops a writer
            # reopened on the same logdir within a second (a quick resume) from overwriting the first file.
            self._tb = SummaryWriter(
                logdir=str(self.logdir), filename_suffix=f".{time.time_ns()}.{os.getpid()}"
            )
            self._jsonl = open(self.logdir / JSONL_NAME, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, step: int, scalars: Mapping[str, float | int | np.ndarray | jax.Array]) -> None:
        """Log one step. Device scalars are fetched in one ``device_get`` (a single sync, not one per value).

        Non-finite values are logged as they are (console and TensorBoard show nan/inf; JSON gets null).
        """
        step = int(step)
        host = jax.device_get(dict(scalars))
        values = {name: _to_python(name, host[name]) for name in scalars}  # caller's order, not sorted
        if self._jsonl is not None:
            record = {
                "step": step,
                "wall_time": time.time(),
                **{k: _json_value(v) for k, v in values.items()},
            }
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()
            if self.remote is not None and time.monotonic() - self._uploaded >= self.upload_every:
                self.flush()
        if self._tb is not None:
            for name, v in values.items():
                self._tb.add_scalar(f"{self.prefix}{name}", float(v), step)
        if self.console is not None and step % self.log_every == 0:
            body = " ".join(f"{k}={_format(v)}" for k, v in values.items())
            self.console(f"{self.prefix}step {step}: {body}")

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Log a text sample (e.g. a rollout trajectory) to TensorBoard and logdir/text.jsonl."""
        if self.logdir is None:
            if self.console is not None:
                self.console(f"{self.prefix}step {int(step)} [{tag}]:\n{text}")
            return
        self._tb.add_text(f"{self.prefix}{tag}", text, int(step))
        if self._text is None:
            self._text = open(self.logdir / TEXT_JSONL_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._text.write(json.dumps({"step": int(step), "tag": tag, "text": text}) + "\n")
        self._text.flush()

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        for f in (self._jsonl, self._text):
            if f is not None:
                f.flush()
        self._upload()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for f in (self._jsonl, self._text):
            if f is not None:
                f.close()
        self._jsonl = self._text = None
        self._upload()
        if self.remote is not None and self.logdir is not None:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None

    def _upload(self) -> None:
        """Copy the staged files up whole (each object write is all-or-nothing: readers never see a torn file)."""
        if self.remote is None or self.logdir is None or not self.logdir.exists():
            return
        self.remote.mkdir(parents=True, exist_ok=True)
        for f in sorted(self.logdir.iterdir()):
            if f.is_file():
                (self.remote / f.name).write_bytes(f.read_bytes())
        self._uploaded = time.monotonic()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl_metrics(logdir: str | os.PathLike) -> list[dict]:
    """All records of logdir/metrics.jsonl in order (local or gs://); a torn last line (crash mid-write) is
    skipped."""
    text = storage.path(storage.join(os.fspath(logdir), JSONL_NAME)).read_text(encoding="utf-8")
    records = []
    for line in io.StringIO(text):  # lines as a file yields them (split at \n only)
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if line.endswith("\n"):
                raise
    return records


def _read_records(path: Path, verify: bool) -> list[bytes]:
    """TFRecord framing: uint64 length, uint32 masked crc(length), data, uint32 masked crc(data); all LE."""
    from tensorboardX.record_writer import masked_crc32c

    data = path.read_bytes()
    records, pos = [], 0
    while pos + 12 <= len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        end = pos + 12 + length + 4
        if end > len(data):
            break  # torn record at the tail: the writer died mid-write
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[end - 4 : end])
        if verify and (masked_crc32c(header) != header_crc or masked_crc32c(body) != body_crc):
            raise ValueError(f"corrupt TFRecord in {path} at byte {pos}")
        records.append(body)
        pos = end
    return records


def read_tensorboard_scalars(
    logdir: str | os.PathLike, *, verify: bool = True
) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the event files directly in ``logdir``, in file then write order."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for record in _read_records(path, verify):
            event = Event.FromString(record)
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
                elif value.HasField("tensor") and len(value.tensor.float_val) == 1:
                    scalars.setdefault(value.tag, []).append(
                        (int(event.step), float(value.tensor.float_val[0]))
                    )
    return scalars


class StepTimer:
    """Wall time of training steps. JAX dispatch is async: block on the step's outputs inside the timed
    region (``jax.block_until_ready``), or the time measured is only the dispatch.

    ``with timer: ...`` or ``timer.start(); ...; timer.stop()``; ``last`` is the latest step's seconds,
    ``mean`` the average over all timed steps.
    """

    def __init__(self) -> None:
        self.last = 0.0
        self.total = 0.0
        self.count = 0
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self._t0 is None:
            raise RuntimeError("StepTimer.stop() called without start()")
        self.last = time.perf_counter() - self._t0
        self._t0 = None
        self.total += self.last
        self.count += 1
        return self.last

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def __enter__(self) -> StepTimer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tokens_per_second(tokens: int | float, seconds: float) -> float:
    """Throughput; 0.0 when no time was measured (so the first log line is not inf)."""
    return float(tokens) / seconds if seconds > 0 else 0.0
