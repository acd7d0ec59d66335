"""Integrity of saved array trees: exact, mesh-independent checksums of every array, and one readable line
for an Orbax/TensorStore read failure (with the asyncio noise such a failure leaves behind silenced).

Below the model and training layers because both write Orbax checkpoints: `model.weights.save_orbax` (an
exported model) and `train.checkpoint.TrainCheckpointer` (a run's steps) store and compare the same checksums.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def path_str(path: tuple) -> str:
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
    return {path_str(p): [str(x.dtype), int(v)] for (p, x), v in zip(flat, values)}


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
