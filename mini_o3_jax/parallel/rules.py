"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

Parameters carry logical names (`embed`, `heads`, `mlp`, `vocab`, ...) as `axes` metadata; a new
parallelism layout is a different rule table, never a model change. A dimension whose size does
not divide evenly over its mesh axes is replicated instead (e.g. 4 kv heads on 8-way tensor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("patch", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("merger_in", "fsdp"),
    ("merger_hidden", "tensor"),
)


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> PartitionSpec:
    """PartitionSpec for an array with logical `axes`; each mesh axis is used at most once."""
    table: Mapping[str, str | tuple[str, ...] | None] = dict(rules)
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for name, size in zip(axes, shape):
        target = table.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n in mesh.shape and mesh.shape[n] > 1 and n not in used)
        if names and size % int(np.prod([mesh.shape[n] for n in names])) == 0:
            used.update(names)
            out.append(names[0] if len(names) == 1 else names)
        else:
            out.append(None)
    return PartitionSpec(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for every Param of an (abstract) NNX state, as a pure nested dict."""

    def one(var):
        axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
        return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules))

    flat = [(path, one(var)) for path, var in nnx.to_flat_state(state)]
    return _unflatten(flat)


def _unflatten(flat):
    out: dict = {}
    for path, value in flat:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def shard_state(state, shardings):
    """Place a pure dict of arrays according to a matching dict of shardings."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), state, shardings)
