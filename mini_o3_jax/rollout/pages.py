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

import jax
import numpy as np

from mini_o3_jax.model.paged_cache import NULL_PAGE, gather_pages, write_pages

__all__ = ["NULL_PAGE", "PagePool", "PoolExhausted", "copy_pages", "gather_pages", "write_pages"]


class PoolExhausted(RuntimeError):
    """No free page for a reservation (the caller waits for episodes to end, or was sized too small)."""


@dataclasses.dataclass
class PagePool:
    """Host-side page allocation for `slots` sequences of at most `pages_per_slot * page_size` tokens."""

    num_pages: int  # including the null page
    page_size: int
    slots: int
    pages_per_slot: int

    def __post_init__(self) -> None:
        if self.num_pages < 2 or self.page_size < 1 or self.slots < 1 or self.pages_per_slot < 1:
            raise ValueError(f"bad page pool {self}")
        self.table = np.full((self.slots, self.pages_per_slot), NULL_PAGE, np.int32)
        self.held = np.zeros(self.slots, np.int32)  # pages each slot holds (a prefix of its table row)
        self.refs = np.zeros(self.num_pages, np.int32)
        self._free = list(range(self.num_pages - 1, NULL_PAGE, -1))  # pop() hands out low pages first

    @property
    def max_len(self) -> int:
        return self.pages_per_slot * self.page_size

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def used_pages(self) -> int:
        return self.num_pages - 1 - len(self._free)

    def pages_for(self, length: int) -> int:
        return -(-int(length) // self.page_size)

    def _take(self) -> int:
        if not self._free:
            raise PoolExhausted(f"all {self.num_pages - 1} pages of {self.page_size} tokens are in use")
        page = self._free.pop()
        self.refs[page] = 1
        return page

    def reserve(self, slot: int, length: int) -> None:
        """Give `slot` pages for its first `length` tokens (new pages at its end; none are ever taken away)."""
        need = self.pages_for(length)
        if need > self.pages_per_slot:
            raise ValueError(f"slot {slot}: {length} tokens exceed its {self.max_len}-token page table")
        if need - self.held[slot] > len(self._free):
            raise PoolExhausted(f"slot {slot} needs {need - self.held[slot]} more pages, {len(self._free)} free")
        for i in range(int(self.held[slot]), need):
            self.table[slot, i] = self._take()
        self.held[slot] = max(int(self.held[slot]), need)

    def fork(self, src: int, dst: int, length: int) -> list[tuple[int, int]]:
        """Make empty slot `dst` hold `src`'s first `length` tokens: the whole pages by reference, the partly
        filled last page (if any) as a fresh page. Returns the (from, to) page copies the device must make."""
        if self.held[dst]:
            raise ValueError(f"slot {dst} still holds pages: release it first")
        full, tail = divmod(int(length), self.page_size)
        if self.pages_for(length) > self.held[src]:
            raise ValueError(f"slot {src} holds {self.held[src]} pages, fewer than {length} tokens need")
        shared = self.table[src, :full]
        self.refs[shared] += 1
        self.table[dst, :full] = shared
        self.held[dst] = full
        copies = []
        if tail:
            page = self._take()
            self.table[dst, full] = page
            self.held[dst] = full + 1
            copies.append((int(self.table[src, full]), page))
        return copies

    def release(self, slot: int) -> None:
        """Return `slot`'s pages; a page another slot still references stays in use."""
        for page in self.table[slot, : self.held[slot]]:
            self.refs[page] -= 1
            if self.refs[page] == 0:
                self._free.append(int(page))
        self.table[slot] = NULL_PAGE
        self.held[slot] = 0


@functools.partial(jax.jit, donate_argnums=0)
def copy_pages(pool: jax.Array, src: jax.Array, dst: jax.Array) -> jax.Array:
    """pool[:, dst[i]] = pool[:, src[i]] in every layer of `pool` (layers, num_pages, page_size, ...): the
    partly filled last pages `PagePool.fork` hands out. The pool is donated: no second copy of the cache."""
    return pool.at[:, dst].set(pool[:, src])
