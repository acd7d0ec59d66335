"""Build a (data, fsdp, tensor) device mesh from a small shape mapping."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from mini_o3_jax.errors import ConfigError

AXES = ("data", "fsdp", "tensor")


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """Mesh over `devices` (default: all) with axes data/fsdp/tensor; one size may be -1 (the rest).

    Uses classic `Mesh` (Auto axis types) so shardings propagate through jit without explicit
    sharding-in-types annotations.
    """
    devices = np.asarray(devices if devices is not None else jax.devices())
    shape = dict(shape or {"fsdp": -1})
    unknown = set(shape) - set(AXES)
    if unknown:
        raise ConfigError(f"mesh: unknown axes {sorted(unknown)}; expected a subset of {AXES}")
    sizes = [int(shape.get(a, 1)) for a in AXES]
    bad = {a: s for a, s in zip(AXES, sizes) if s != -1 and s < 1}
    if bad:
        raise ConfigError(f"mesh {shape}: axis sizes must be >= 1 or -1 (the rest), got {bad}")
    if sizes.count(-1) > 1:
        raise ConfigError(f"mesh {shape}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if devices.size % known:
            raise ConfigError(f"mesh {shape}: {devices.size} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = devices.size // known
    if int(np.prod(sizes)) != devices.size:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, have {devices.size}")
    return Mesh(devices.reshape(sizes), AXES)
