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
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mini_o3_jax import storage
from mini_o3_jax.errors import CheckpointError, CorruptCheckpointError
from mini_o3_jax.integrity import (
    changed_arrays,
    path_str,
    quiet_closed_loop_noise,
    read_error_summary,
    state_checksums,
)

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


def _shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        path_str(p): (tuple(leaf.shape) if getattr(leaf, "shape", None) is not None else None)
        for p, leaf in leaves
    }


class TrainCheckpointer:
    """Orbax checkpoints of a training run: the state pytree (params, optimizer state, step...) plus JSON
    metadata (data-iterator position, RNG key data, metrics...). Async save, keep-N, exact resume.

    With ``async_save`` the arrays are copied off the device before ``save`` returns and written in a
    background thread, so training continues while the checkpoint is written; call ``wait()`` before exiting.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = storage.require_backend(directory, "checkpoint directory")  # a local path or gs://...
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
        where = storage.join(self.directory, str(step))
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
        src = storage.join(self.directory, str(step))
        dst, n = f"{src}.corrupt", 1
        while storage.path(dst).exists():
            dst, n = f"{src}.corrupt-{n}", n + 1
        if jax.process_index() == 0:
            storage.path(src).rename(dst)
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
