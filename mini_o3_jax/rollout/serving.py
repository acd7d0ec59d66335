"""The rollout's layout on a mesh: slots (and their KV pages) split over the data-parallel axes, weights whole
on every device of those axes (split over `tensor` only), each device decoding its own slots.

Training shards weights over `fsdp`; decoding in that layout all-gathers every layer's weights for every
token. `Serving.reshard` moves the weights once per RL step into the serving layout instead (the cost is
measured: `EngineStats.reshard_s`), and the jitted rollout steps run inside `shard_map` over the slot axes:
a device reads only its slots' rows of the cache, or with a paged cache its own partition of the pool
(`PagePool(partitions=ways)`), and no collective runs in the decode loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mini_o3_jax.parallel.rules import DEFAULT_RULES, Rules, shard_state, state_shardings
from mini_o3_jax.rollout.cache import PagedKVCache

SLOT_AXES = ("data", "fsdp")  # the mesh axes slots split over


def serving_rules(rules: Rules = DEFAULT_RULES) -> Rules:
    """`rules` with every parameter axis kept whole over the slot axes (tensor parallelism stays)."""
    out = []
    for name, target in rules:
        names = (target,) if isinstance(target, str) else tuple(target or ())
        kept = tuple(n for n in names if n not in SLOT_AXES)
        if name.startswith("act_") or name == "batch":
            out.append((name, target))
        else:
            out.append((name, kept[0] if len(kept) == 1 else (kept or None)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Serving:
    """A mesh and the axes its slots split over (static: part of the jitted steps' cache key)."""

    mesh: Mesh
    axes: tuple[str, ...]

    @property
    def ways(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.axes)

    @property
    def rows(self) -> Any:
        """The PartitionSpec entry of a slot (or batch-row) axis."""
        return self.axes[0] if len(self.axes) == 1 else self.axes

    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def reshard(self, state: nnx.State, rules: Rules = DEFAULT_RULES) -> tuple[nnx.State, float]:
        """The weights in the serving layout, and the seconds the move took (until the arrays are ready)."""
        t0 = time.perf_counter()
        placed = shard_state(nnx.to_pure_dict(state), state_shardings(state, self.mesh, serving_rules(rules)))
        jax.block_until_ready(placed)
        out = jax.tree.map(lambda x: x, state)  # a new State (the model's own keeps the trainer's layout)
        nnx.replace_by_pure_dict(out, placed)
        return out, time.perf_counter() - t0

    def run(self, fn: Callable, in_specs: Any, out_specs: Any) -> Callable:
        """`fn` over each device's block of slots (manual over the slot axes and every axis of size 1; `tensor`, if
        split, left to XLA). A region manual over every axis can call Mosaic kernels (the paged prefix kernel)."""
        single = {a for a in self.mesh.axis_names if self.mesh.shape[a] == 1}
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                             axis_names=frozenset(self.axes) | single, check_vma=False)


def serving_for(state: nnx.State) -> Serving | None:
    """The serving layout for weights placed on a mesh (None on one device: the plain jitted steps)."""
    leaf = next((x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)), None)
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
        return None
    mesh = sharding.mesh
    axes = tuple(a for a in SLOT_AXES if a in mesh.shape and mesh.shape[a] > 1)
    return Serving(mesh, axes) if axes else None


def cache_specs(cache: Any, rows: Any) -> Any:
    """PartitionSpecs of a cache (dense or paged) with its slots, and a paged cache's pages, split over `rows`."""
    if isinstance(cache, PagedKVCache):
        pages = P(None, None, rows)
        return PagedKVCache(pages, pages, P(rows), P(rows), P(rows))
    return type(cache)(P(None, rows), P(None, rows), P(rows), P(rows))
