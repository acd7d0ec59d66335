"""Orbax training checkpoints: exact resume of a run, on the same or a different device mesh.

A checkpoint step holds two items:

* ``state``: the training-state pytree (params, optimizer state, step counter...) written by Orbax's
  ``StandardCheckpointHandler`` (tensorstore, one shard per device, so large sharded states never gather on
  one host);
* ``meta``: a small JSON dict (data-iterator position, RNG key data, last metrics...) for everything that is
  not an array but is needed to continue the run bit-for-bit.

Orbax writes each step into a ``<step>.orbax-checkpoint-tmp*`` directory and renames it only once every item
is committed, so a process killed mid-save leaves no half-written step visible.

Files can still be damaged after the commit (a full disk, a bad copy, bit rot), and Orbax's data files carry no
checksums: a flipped byte restores silently as wrong numbers. So ``save`` also stores an exact checksum of every
state array in the meta, ``restore`` compares it, and any read failure becomes one ``CorruptCheckpointError``
line naming the step directory. ``restore_latest`` then falls back to the newest step that restores.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mini_o3_jax.errors import CheckpointError, CorruptCheckpointError

_STATE, _META = "state", "meta"
_CHECKSUMS = "_state_checksums"  # reserved meta key: {path: [dtype, checksum]} written by `save`
_MAX_LISTED = 20  # mismatching paths shown in an error before "... and N more"


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """A pytree of ``jax.ShapeDtypeStruct`` mirroring ``tree``: the restore target without allocating.

    ``shardings`` is ``None`` (keep each array's own sharding), one ``jax.sharding.Sharding`` for every leaf,
    or a pytree of shardings matching ``tree`` (e.g. the shardings of a state laid out on a new mesh).
    """

    def struct(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        x = x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    if shardings is None:
        return jax.tree.map(lambda x: struct(x, getattr(x, "sharding", None)), tree)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: struct(x, shardings), tree)
    return jax.tree.map(struct, tree, shardings)


def key_data(key: jax.Array) -> list:
    """A ``jax.random.key`` as nested lists of ints, for the JSON meta (``key_from_data`` inverts it)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(jax.device_get(key)).astype(np.uint32).tolist()


def key_from_data(data: Iterable, impl: str | None = None) -> jax.Array:
    """Rebuild the typed key saved by ``key_data`` (``impl`` as given to ``jax.random.key``; default impl)."""
    return jax.random.wrap_key_data(np.asarray(data, dtype=np.uint32), impl=impl)


def _path_str(path: tuple) -> str:
    """'opt/0/mu/w' for any key kind, so a NamedTuple/dataclass field and the saved dict key compare equal."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        _path_str(p): (tuple(leaf.shape) if getattr(leaf, "shape", None) is not None else None)
        for p, leaf in leaves
    }


# ----------------------------------------------------------------------------- integrity helpers
def _words(x: jax.Array) -> jax.Array:
    """The raw bits of `x` as uint32 words (one per element; two for 8-byte dtypes)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
    """sum((2i + 1) * word_i) mod 2**32: integer addition is exact and order-free, so the value does not depend
    on the device mesh; odd weights make any single changed word change the sum, and the position weight
    catches swapped elements."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= w.shape[axis]
    return jnp.sum(w * (2 * index + 1), dtype=jnp.uint32)


_checksums_jit = jax.jit(lambda leaves: [_checksum(x) for x in leaves])


def state_checksums(tree: Any) -> dict[str, list]:
    """``{path: [dtype, checksum]}`` of every array leaf, computed on device (no host gather of sharded arrays)."""
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(x, "dtype")]
    values = jax.device_get(_checksums_jit([jnp.asarray(x) for _, x in flat]))
    return {_path_str(p): [str(x.dtype), int(v)] for (p, x), v in zip(flat, values)}


def changed_arrays(saved: dict[str, list], tree: Any) -> list[str]:
    """Paths whose restored contents differ from the checksums written at save time (same dtype only: a
    restore that casts cannot be compared)."""
    now = state_checksums(tree)
    return sorted(p for p, (dtype, value) in saved.items() if p in now and now[p][0] == dtype and now[p][1] != value)


_SPEC_NOISE = re.compile(r"\s*(\[tensorstore_spec=.*|See full TensorStore details.*)$")


def read_error_summary(exc: BaseException) -> str:
    """One line for an Orbax/TensorStore read failure: the innermost cause (TensorStore names the file and the
    byte range), without the multi-kilobyte spec dumps Orbax appends."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(chain):
        text = str(err).strip()
        line = _SPEC_NOISE.sub("", text.splitlines()[0]) if text else ""
        if line:
            return f"{type(err).__name__}: {line[:400]}"
    return type(exc).__name__


_previous_unraisablehook: Callable[..., None] | None = None


def _is_orbax_read_noise(unraisable: Any) -> bool:
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(obj, "cr_code", None)  # an abandoned Orbax read coroutine, garbage-collected with its error
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _drop_closed_loop_noise(unraisable: Any) -> None:
    if not _is_orbax_read_noise(unraisable):
        (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _from_orbax_read(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) is an Orbax/TensorStore array read failure."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        text = str(exc)
        if "TensorStore" in text or "OCDBT" in text or "reading array index" in text:
            return True
        tb = exc.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if f"{os.sep}orbax{os.sep}" in name or f"{os.sep}tensorstore{os.sep}" in name:
                return True
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


class _OrbaxNeverRetrievedFilter(logging.Filter):
    """asyncio's "Task/Future exception was never retrieved" for sibling reads of a failed Orbax restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg):
            return True
        return not _from_orbax_read(record.exc_info[1] if record.exc_info else None)


_NEVER_RETRIEVED_FILTER = _OrbaxNeverRetrievedFilter()


def quiet_closed_loop_noise() -> None:
    """Drop the tracebacks TensorStore/asyncio print after a failed Orbax read.

    When one read fails, Orbax closes its event loop while sibling reads are in flight; as each finishes,
    TensorStore's callback hits the closed loop ("RuntimeError: Event loop is closed") and the abandoned read
    coroutines are collected with their own copy of the error. These go through ``sys.unraisablehook`` or, when
    the sibling task had finished first, asyncio's logger ("Task exception was never retrieved"; seen on a busy
    machine): dozens of tracebacks, possibly after the error was already handled, carrying nothing new: the
    real error is raised to the caller. Installed once; filters only those kinds and passes everything else on."""
    global _previous_unraisablehook
    if sys.unraisablehook is not _drop_closed_loop_noise:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_closed_loop_noise
    asyncio_log = logging.getLogger("asyncio")
    if _NEVER_RETRIEVED_FILTER not in asyncio_log.filters:
        asyncio_log.addFilter(_NEVER_RETRIEVED_FILTER)


class TrainCheckpointer:
    """Orbax checkpoints of a training run: the state pytree (params, optimizer state, step...) plus JSON
    metadata (data-iterator position, RNG key data, metrics...). Async save, keep-N, exact resume.

    With ``async_save`` the arrays are copied off the device before ``save`` returns and written in a
    background thread, so training continues while the checkpoint is written; call ``wait()`` before exiting.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()},
        )
        self._started: set[int] = set()  # steps handed to Orbax, including in-flight async saves

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Start saving ``state`` and ``meta`` as ``step``; returns whether a save started.

        A step that is already saved (or being saved) is never written again: re-saving would race the
        pending commit or overwrite the step a resumed run restored from. ``force`` only bypasses Orbax's
        save-interval policy.
        """
        step = int(step)
        if step in self._started or step in self._manager.all_steps():
            return False
        try:
            json.dumps(meta, allow_nan=False)  # fail here, not later in the background writer thread
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint meta for step {step} is not strict JSON: {e}") from e
        meta = {**meta, _CHECKSUMS: state_checksums(state)}
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)})
        started = bool(self._manager.save(step, args=args, force=force))
        if started:
            self._started.add(step)
        return started

    def latest_step(self) -> int | None:
        """The newest committed step (in-flight async saves are not counted), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` from ``step`` (default: the latest).

        ``target`` is a pytree of ``jax.ShapeDtypeStruct`` (see ``abstract_like``) or of arrays; restored
        arrays take the target's shardings, so a checkpoint written on one mesh restores onto another.
        The target is checked against the checkpoint's metadata first, so a model/config mismatch is a
        ``CheckpointError`` listing the paths rather than a tensorstore error deep in Orbax. Damaged files
        (unreadable, or contents that fail the checksums written at save time) are a ``CorruptCheckpointError``.
        """
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is None:
            step = steps[-1]
        elif int(step) not in steps:
            raise CheckpointError(f"no checkpoint step {step} in {self.directory}; available steps: {steps}")
        step = int(step)
        where = os.path.join(self.directory, str(step))
        quiet_closed_loop_noise()
        try:
            self._check_target(target, step)
            args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()})
            restored = self._manager.restore(step, args=args)
        except CheckpointError:
            raise
        except Exception as e:  # Orbax raises bare Exception for failed array reads
            summary = read_error_summary(e)
            raise CorruptCheckpointError(f"{where}: cannot read checkpoint step {step} ({summary})") from None
        state, meta = restored[_STATE], dict(restored[_META] or {})
        saved = meta.pop(_CHECKSUMS, None)
        changed = changed_arrays(saved, state) if isinstance(saved, dict) else []
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise CorruptCheckpointError(
                f"{where}: checkpoint step {step} is corrupt: {', '.join(changed[:3])}{more} read back different "
                "from what was saved (checksum mismatch: a data file was altered)"
            )
        return state, meta

    def restore_latest(self, target: Any, warn: Callable[[str], None] | None = print) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest step that restores, or None when there is no checkpoint.

        A corrupt step is skipped with a warning and moved aside to ``<step>.corrupt`` (kept for inspection;
        the resumed run then saves that step afresh instead of refusing to overwrite it). A mismatching target
        is raised at once: an older step would not fit either. If no step restores, one error lists them all.
        """
        failures: list[str] = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(target, step)
            except CorruptCheckpointError as e:
                failures.append(str(e))
                moved = self._set_aside(step)
                if warn:
                    warn(f"warning: skipping checkpoint step {step}: {e}; moved to {moved}")
                continue
            return step, state, meta
        if failures:
            raise CorruptCheckpointError(
                f"{self.directory}: no checkpoint restores ({len(failures)} corrupt): " + "; ".join(failures)
            )
        return None

    def _set_aside(self, step: int) -> str:
        """Rename step ``step`` to ``<step>.corrupt[-n]`` (Orbax ignores it from then on)."""
        src = os.path.join(self.directory, str(step))
        dst, n = f"{src}.corrupt", 1
        while os.path.exists(dst):
            dst, n = f"{src}.corrupt-{n}", n + 1
        if jax.process_index() == 0:
            os.replace(src, dst)
        self._manager.reload()
        return dst

    def _check_target(self, target: Any, step: int) -> None:
        metadata = self._manager.item_metadata(step)[_STATE]
        if metadata is None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has no readable state metadata"
            )
        saved = _shapes(getattr(metadata, "tree", metadata))
        wanted = _shapes(target)
        problems = [
            f"{p}: missing in checkpoint (target shape {wanted[p]})" for p in wanted if p not in saved
        ]
        problems += [
            f"{p}: in checkpoint (shape {saved[p]}) but not in target" for p in saved if p not in wanted
        ]
        problems += [
            f"{p}: checkpoint shape {saved[p]} != target shape {wanted[p]}"
            for p in wanted
            if p in saved and None not in (saved[p], wanted[p]) and saved[p] != wanted[p]
        ]
        if problems:
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            listed = "\n  ".join(problems[:_MAX_LISTED])
            raise CheckpointError(
                f"restore target does not match checkpoint step {step} in {self.directory}:\n  {listed}{more}"
            )

    def wait(self) -> None:
        """Block until every started save is committed (call before exiting or reading the directory)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release Orbax's threads."""
        self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PreemptionGuard:
    """Turn SIGTERM (and optionally SIGINT) into a flag, so a preempted trainer finishes its step, saves,
    ``wait()``s and exits cleanly instead of dying mid-save.

    Usage::

        with PreemptionGuard() as guard:
            for step in ...:
                train_step(...)
                if guard.requested:
                    ckpt.save(step, state, meta); ckpt.wait(); break

    The handler only sets the flag (anything more is unsafe in a signal handler). Signal handlers can only be
    installed from the main thread. On multi-host runs each host sees its own signal: agree across hosts
    (e.g. an all-reduce of the flag) before acting on it, or some hosts will wait forever in a collective.
    """

    def __init__(self, *, sigint: bool = False):
        self._signals = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
        self._previous: dict[int, Any] = {}
        self.requested = False
        self.signum: int | None = None

    @property
    def reason(self) -> str | None:
        """Name of the signal that requested the stop ('SIGTERM'), or None."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.signum = signum

    def __enter__(self) -> PreemptionGuard:
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # None: not set from Python
        self._previous.clear()
