"""What the processes of a multi-host run agree on, and which rows of a micro-batch each one feeds.

Every process runs the same program on its own share of the data. Anything that decides shapes or control
flow (how many micro-batches, their lengths, whether to stop for preemption) must come out the same on
every host, or one host waits forever in a collective the others never reach; these helpers make the
decision once from every host's view. They are collectives: call them from the main thread, at the same
point of the program on every host. On one process they cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mini_o3_jax.errors import ConfigError, MiniO3Error
from mini_o3_jax.parallel.rules import Rules, logical_to_spec

T = TypeVar("T")


def multi_host() -> bool:
    return jax.process_count() > 1


def is_main() -> bool:
    """Process 0: the one that prints progress, writes logs and owns shared files."""
    return jax.process_index() == 0


def gathered(values: np.ndarray) -> np.ndarray:
    """`values` of every host, stacked in process order: (processes, ...)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values), tiled=False))


def agree_max(values) -> np.ndarray:
    """Elementwise max over hosts of a small array (the same shape on every host)."""
    values = np.asarray(values)
    return gathered(values).max(axis=0) if multi_host() else values


def agree_sum(values) -> np.ndarray:
    """Elementwise sum over hosts of a small array (the same shape on every host)."""
    values = np.asarray(values)
    return gathered(values).sum(axis=0) if multi_host() else values


def any_host(flag: bool) -> bool:
    """True on every host if it is True on any (a preemption signal that reached one host)."""
    return bool(agree_max(np.int32(bool(flag)))) if multi_host() else bool(flag)


def broadcast(value: int) -> int:
    """Process 0's `value` on every host."""
    if not multi_host():
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def main_first(fn: Callable[[], T], what: str) -> T | None:
    """`fn()` on process 0 (shared files it alone writes), then every host goes on together; returns its value on
    process 0, None elsewhere. Its error is raised on every host (the others name process 0): without this they
    would wait for it in the next collective until the runtime's heartbeat gives up."""
    if not multi_host():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # re-raised below, after the other hosts heard of it
            error = e
    if any_host(error is not None):
        if error is not None:
            raise error
        raise MiniO3Error(f"{what} failed on process 0 (its log has the error)")
    return result


def barrier(name: str) -> None:
    """Wait until every host reaches `name`."""
    if multi_host():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def row_share(mesh: Mesh | None, rules: Rules, rows: int) -> tuple[int, int]:
    """(index, count): this host builds `rows / count` of a micro-batch's `rows` rows, from share `index` of
    the step's examples. Hosts whose devices hold the same rows (rows replicated over a `tensor` axis that
    spans hosts) get the same index and must build the same data; `count` is the number of distinct row
    sets. `jax.make_array_from_process_local_data` then places each host's rows (`Trainer.put`)."""
    if mesh is None or not multi_host():
        return 0, 1
    sharding = NamedSharding(mesh, logical_to_spec(("act_batch",), (rows,), mesh, rules))
    owners: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((rows,)).items():
        start, stop, _ = index[0].indices(rows)
        owners.setdefault(device.process_index, set()).update(range(start, stop))
    sets = sorted({tuple(sorted(s)) for s in owners.values()})
    sizes = {len(s) for s in sets}
    flat = [r for s in sets for r in s]
    if len(sizes) != 1 or sorted(flat) != list(range(rows)):
        raise ConfigError(f"mesh {dict(mesh.shape)}: hosts hold overlapping or unequal sets of a micro-batch's "
                          f"{rows} rows ({[len(s) for s in sets]} rows); choose data/fsdp sizes that split rows "
                          "evenly over the hosts")
    return sets.index(tuple(sorted(owners[jax.process_index()]))), len(sets)


def check_shared(directory: str, what: str) -> None:
    """Refuse, on every host, a `directory` the hosts do not share: process 0 writes a file there and every
    host looks for it. Checkpoints written to a host-local disk would be split over the hosts' disks and
    never restore; better one clear error before the first step. An object-store URI (gs://) is checked the
    same way (it also proves every host can reach it)."""
    if not multi_host():
        return
    import secrets

    from mini_o3_jax import storage

    marker = storage.path(storage.join(directory, f".mini_o3_shared-{broadcast(secrets.randbits(62)):016x}"))
    if is_main():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by process 0 to check that every host sees this directory\n")
    barrier("check_shared:written")
    missing = agree_max(np.array([0 if marker.exists() else jax.process_index() + 1]))
    barrier("check_shared:read")
    if is_main():
        marker.unlink()
    if int(missing[0]):
        raise ConfigError(f"{what} = {directory}: process {int(missing[0]) - 1} cannot see a file process 0 wrote "
                          "there; a multi-host run needs a directory every host shares (NFS, a bucket: "
                          "gs://..., a GCS FUSE mount): checkpoints on each host's own disk would never restore")


def _boxes(mesh: Mesh) -> list[tuple[slice, ...]]:
    """Each host's block of `mesh.devices` (index = process), all of one shape, or a ConfigError."""
    owner = np.vectorize(lambda d: d.process_index)(mesh.devices)
    boxes = []
    for process in range(jax.process_count()):
        where = np.argwhere(owner == process)
        lo, hi = where.min(axis=0), where.max(axis=0) + 1
        if int(np.prod(hi - lo)) != len(where):
            raise ConfigError(f"mesh {dict(mesh.shape)}: process {process}'s devices are not one block of the mesh")
        boxes.append(tuple(slice(a, b) for a, b in zip(lo, hi)))
    if len({tuple(b.stop - b.start for b in box) for box in boxes}) != 1:
        raise ConfigError(f"mesh {dict(mesh.shape)}: the hosts hold blocks of different shapes")
    return boxes


def local_mesh(mesh: Mesh) -> Mesh:
    """This host's devices as a mesh with the same axes (the block of `mesh` they occupy)."""
    return Mesh(mesh.devices[_boxes(mesh)[jax.process_index()]], mesh.axis_names)


def host_local_copier(mesh: Mesh, local_shardings):
    """A function copying global arrays (a tree like `local_shardings`) onto this host's devices alone, laid out
    by `local_shardings` (on `local_mesh(mesh)`): what a host needs to run its own rollouts, whose host loop
    (tools, turns, stopping) differs from the other hosts' and so cannot run as one global program. Each call
    is one all-gather across hosts: every host's devices receive the whole tree, sharded over the host's
    devices as on its local mesh. Built once: the gather compiles once."""
    if not multi_host():
        return lambda tree: tree
    boxes = _boxes(mesh)
    hybrid = Mesh(np.stack([mesh.devices[box] for box in boxes]), ("hosts",) + tuple(mesh.axis_names))
    gather = jax.jit(lambda t: t, out_shardings=jax.tree.map(lambda s: NamedSharding(hybrid, s.spec), local_shardings))

    def copy(tree):
        return jax.tree.map(lambda x, s: jax.make_array_from_single_device_arrays(
            x.shape, s, [shard.data for shard in x.addressable_shards]), gather(tree), local_shardings)
    return copy
