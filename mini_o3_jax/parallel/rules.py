"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

Parameters carry logical names (`embed`, `heads`, `mlp`, `vocab`, ...) as `axes` metadata and
activations are constrained at layer boundaries with `constrain` (`act_*` names); a new parallelism
layout is a different rule table (`rules_from_config`, the config's `sharding` block), never a model
change. A dimension whose size does not divide evenly over its mesh axes is replicated (e.g. a vocab
of odd size), except attention heads: heads replicated over the tensor axis would silently compute
every head on every device, so a tensor axis that does not divide them is a ConfigError.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.parallel.mesh import AXES

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
# logical axes that must split evenly over their mesh axes (never replicated as a fallback)
STRICT = frozenset({"heads", "kv_heads", "vision_heads"})

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
    # activations (train step): rows over the data-parallel axes, the rest whole on each device
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_patches", ("data", "fsdp")),  # ViT rows (windows of 64 patches) of a micro-batch
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
        ways = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        if names and size % ways == 0:
            used.update(names)
            out.append(names[0] if len(names) == 1 else names)
        elif names and name in STRICT:
            raise ConfigError(f"{size} {name.replace('_', ' ')} do not divide over mesh axis "
                              f"{'x'.join(names)} = {ways}: choose a tensor size that divides {size} (replicating "
                              "the heads would compute all of them on every device)")
        else:
            out.append(None)
    return PartitionSpec(*out)


def rules_from_config(overrides: Mapping[str, Any] | None) -> Rules:
    """DEFAULT_RULES with `overrides` ({logical axis: mesh axis, list of mesh axes, or None}) applied.

    An unknown logical or mesh axis is a ConfigError naming it, not a silently replicated array.
    """
    table = dict(DEFAULT_RULES)
    for name, target in dict(overrides or {}).items():
        if name not in table:
            raise ConfigError(f"sharding.{name}: unknown logical axis; known: {', '.join(table)}")
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        bad = [t for t in targets if t not in AXES]
        if bad:
            raise ConfigError(f"sharding.{name} = {target!r}: {bad[0]!r} is not a mesh axis {AXES}")
        table[name] = None if not targets else targets[0] if len(targets) == 1 else targets
    return tuple(table.items())


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("activation_sharding",
                                                                                    default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """While tracing under this context, `constrain` pins activations to `mesh` by `rules` (no mesh: no-op)."""
    token = _ACTIVE.set(None if mesh is None else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def batch_ways(mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways a micro-batch's rows are split: the product of the mesh axes of `act_batch` (1: no mesh)."""
    if mesh is None:
        return 1
    target = dict(rules).get("act_batch")
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return int(np.prod([mesh.shape[n] for n in names if n in mesh.shape]))


def active_sharding() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) of the enclosing `activation_sharding`, or None (kernels that need `shard_map`)."""
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` with a sharding constraint from its logical `axes`, when traced inside `activation_sharding`.

    Pinning the layer boundaries keeps the partitioner from choosing a layout per op (and from
    re-gathering rows between layers): every device holds its rows, whole, from layer to layer.
    """
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for every Param of an (abstract) NNX state, as a pure nested dict."""

    def one(path, var):
        axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
        try:
            return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules))
        except ConfigError as e:
            raise ConfigError(f"{'.'.join(map(str, path))} {tuple(var.shape)}: {e}") from None

    flat = [(path, one(path, var)) for path, var in nnx.to_flat_state(state)]
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
