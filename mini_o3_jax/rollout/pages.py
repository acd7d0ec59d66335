"""A paged KV cache: fixed-size pages in one preallocated pool, and a host-side page table per slot.

The dense cache (`rollout/cache.py`) gives every slot a whole `max_len` row: at 7B and 32K tokens that is
1.88 GB a slot, used or not. Here a slot holds only the pages its tokens fill, so the pool is sized by the
tokens actually in flight, and the samples of a group share the prompt's pages by reference:

* ``PagePool`` (host, numpy) owns the page table ``(slots, pages_per_slot)``, each page's reference count and
  the free list. ``reserve`` grows a slot to a length, ``fork`` makes a slot share another's prefix (whole
  pages by reference; a partly filled last page is copied, since both slots will write into it), ``release``
  returns a slot's pages (a page shared by the group stays until its last sample ends).
* ``write_pages`` / ``gather_pages`` (device, jittable; `model/paged_cache.py`, which the model's cached
  forward uses too) are the XLA reference path: scatter a chunk's keys or values into its slots' pages, and
  gather the first ``kv_len`` positions of each slot into the dense layout the attention code reads. Pallas
  ragged paged attention (TPU/GPU) reads the pages directly; it must equal this path.

Page 0 is never handed out: table entries past a slot's pages point at it, so writes of idle slots and the
padding of a chunk land there and are never read unmasked.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from mini_o3_jax.model.paged_cache import NULL_PAGE, gather_pages, write_pages

__all__ = ["NULL_PAGE", "PagePool", "PoolExhausted", "copy_pages", "device_free_bytes", "gather_pages", "pool_pages",
           "write_pages"]


class PoolExhausted(RuntimeError):
    """No free page for a reservation (the caller waits for episodes to end, or was sized too small)."""


@dataclasses.dataclass
class PagePool:
    """Host-side page allocation for `slots` sequences of at most `pages_per_slot * page_size` tokens.

    `partitions` > 1 splits slots and pages into that many equal blocks, one per device of a sharded cache:
    slot s takes pages only from its block (s // (slots / partitions)), and the table holds *local* page ids,
    each block with its own null page 0, so a device reads its slots' pages from its own shard of the pool.
    """

    num_pages: int  # including the null page of every partition
    page_size: int
    slots: int
    pages_per_slot: int
    partitions: int = 1

    def __post_init__(self) -> None:
        if (self.page_size < 1 or self.pages_per_slot < 1 or self.partitions < 1 or self.slots % self.partitions
                or self.num_pages % self.partitions or self.num_pages // self.partitions < 2
                or self.slots < self.partitions):
            raise ValueError(f"bad page pool {self}: slots and pages must split evenly over the partitions, with "
                             "at least 2 pages each")
        self.local_pages = self.num_pages // self.partitions
        self.slots_per_part = self.slots // self.partitions
        self.table = np.full((self.slots, self.pages_per_slot), NULL_PAGE, np.int32)  # local page ids
        self.held = np.zeros(self.slots, np.int32)  # pages each slot holds (a prefix of its table row)
        self.refs = np.zeros((self.partitions, self.local_pages), np.int32)
        # pop() hands out low pages first
        self._free = [list(range(self.local_pages - 1, NULL_PAGE, -1)) for _ in range(self.partitions)]

    @property
    def max_len(self) -> int:
        return self.pages_per_slot * self.page_size

    @property
    def free_pages(self) -> int:
        return sum(len(f) for f in self._free)

    @property
    def used_pages(self) -> int:
        return self.num_pages - self.partitions - self.free_pages

    def part(self, slot: int) -> int:
        """The partition (device) whose pages `slot` uses."""
        return int(slot) // self.slots_per_part

    def free_by_part(self) -> list[int]:
        """Free pages of each partition."""
        return [len(f) for f in self._free]

    def pages_for(self, length: int) -> int:
        return -(-int(length) // self.page_size)

    def _take(self, part: int) -> int:
        if not self._free[part]:
            raise PoolExhausted(f"all {self.local_pages - 1} pages of {self.page_size} tokens of partition {part} "
                                "are in use")
        page = self._free[part].pop()
        self.refs[part, page] = 1
        return page

    def reserve(self, slot: int, length: int) -> None:
        """Give `slot` pages for its first `length` tokens (new pages at its end; none are ever taken away)."""
        need = self.pages_for(length)
        if need > self.pages_per_slot:
            raise ValueError(f"slot {slot}: {length} tokens exceed its {self.max_len}-token page table")
        part = self.part(slot)
        if need - self.held[slot] > len(self._free[part]):
            raise PoolExhausted(f"slot {slot} needs {need - self.held[slot]} more pages, "
                                f"{len(self._free[part])} free")
        for i in range(int(self.held[slot]), need):
            self.table[slot, i] = self._take(part)
        self.held[slot] = max(int(self.held[slot]), need)

    def fork(self, src: int, dst: int, length: int) -> list[tuple[int, int]]:
        """Make empty slot `dst` (of `src`'s partition) hold `src`'s first `length` tokens: the whole pages by
        reference, the partly filled last page (if any) as a fresh page. Returns the (from, to) page copies the
        device must make, as global page ids (partition * local_pages + local id)."""
        if self.held[dst]:
            raise ValueError(f"slot {dst} still holds pages: release it first")
        part = self.part(src)
        if self.part(dst) != part:
            raise ValueError(f"slots {src} and {dst} are on different partitions ({part}, {self.part(dst)})")
        full, tail = divmod(int(length), self.page_size)
        if self.pages_for(length) > self.held[src]:
            raise ValueError(f"slot {src} holds {self.held[src]} pages, fewer than {length} tokens need")
        shared = self.table[src, :full]
        self.refs[part, shared] += 1
        self.table[dst, :full] = shared
        self.held[dst] = full
        copies = []
        if tail:
            page = self._take(part)
            self.table[dst, full] = page
            self.held[dst] = full + 1
            base = part * self.local_pages
            copies.append((base + int(self.table[src, full]), base + page))
        return copies

    def release(self, slot: int) -> None:
        """Return `slot`'s pages; a page another slot still references stays in use."""
        part = self.part(slot)
        for page in self.table[slot, : self.held[slot]]:
            self.refs[part, page] -= 1
            if self.refs[part, page] == 0:
                self._free[part].append(int(page))
        self.table[slot] = NULL_PAGE
        self.held[slot] = 0


@functools.partial(jax.jit, donate_argnums=0)
def copy_pages(pool: jax.Array, src: jax.Array, dst: jax.Array) -> jax.Array:
    """Page dst[i] = page src[i] in every layer and head of `pool` (layers, kv_heads, num_pages, page_size,
    head_dim): the partly filled last pages `PagePool.fork` hands out. The pool is donated: no second copy."""
    return pool.at[:, :, dst].set(pool[:, :, src])


def device_free_bytes(devices: list[jax.Device]) -> tuple[int, str]:
    """The least free memory over `devices` (HBM: limit - in use; a CPU device: the host's available RAM over
    its devices), and the device it is on."""
    free = []
    for d in devices:
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and stats.get("bytes_limit"):
            free.append((int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), str(d)))
        else:
            free.append((_available_ram() // max(1, len(jax.local_devices())), f"{d} (host RAM)"))
    return min(free)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def pool_pages(requested: int, slots: int, pages_per_slot: int, partitions: int, page_bytes: int,
               free_bytes: int, where: str, fraction: float = 0.9) -> int:
    """The pool size (pages, null pages included) for a config asking `requested` (0: every slot's max_len, or
    as many as fit in `fraction` of the free memory), checked against `free_bytes` per device before anything is
    allocated: a pool that cannot fit, or that cannot hold one whole episode per device, is a ConfigError with
    the numbers (a smaller `requested` pool is allowed: its slots wait for pages, and a run where all wait fails)."""
    from mini_o3_jax.errors import ConfigError

    gib = 1 << 30
    full = slots // partitions * pages_per_slot + 1  # per device: every slot at max_len, and the null page
    fits = int(free_bytes * fraction) // page_bytes
    local = requested // partitions if requested else min(full, fits)
    episode = pages_per_slot * page_bytes
    if local * page_bytes > free_bytes * fraction:
        raise ConfigError(
            f"rollout.pages = {requested}: {local} pages per device need {local * page_bytes / gib:.2f} GiB, but "
            f"{free_bytes / gib:.2f} GiB is free on {where} (a pool of at most {fits * partitions} pages fits in "
            f"{fraction:.0%} of it); lower rollout.pages or set 0 to size it to the memory")
    if not requested and local < pages_per_slot + 1:  # a pool asked for by size is the config's choice
        raise ConfigError(
            f"the KV cache cannot hold one {pages_per_slot}-page episode per device: {local} pages fit "
            f"({free_bytes / gib:.2f} GiB free on {where}, {episode / gib:.2f} GiB per episode); lower "
            "rollout.max_len or free memory (fewer weights per device: a tensor axis)")
    return local * partitions
