"""The KV cache as an explicit, fixed-shape pytree (donated through every jitted call): dense or paged.

One row ("slot") per episode being decoded. A slot's `length` is how many tokens its keys/values
hold; `delta` is HF's M-RoPE rope delta, so the next text token of the slot sits at M-RoPE position
`length + delta` on all three axes. Rows past `length` hold stale values and are masked out.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mini_o3_jax.model.config import TextConfig

# Logical axes (parallel/rules.py): slots and pages shard like a batch, heads like the attention weights.
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")
PAGE_AXES = ("layers", "kv_heads", "batch", "length", "head_dim")


class KVCache(NamedTuple):
    k: jax.Array  # (layers, slots, max_len, kv_heads, head_dim)
    v: jax.Array  # (layers, slots, max_len, kv_heads, head_dim)
    length: jax.Array  # (slots,) int32
    delta: jax.Array  # (slots,) int32

    @property
    def num_slots(self) -> int:
        return int(self.k.shape[1])

    @property
    def max_len(self) -> int:
        return int(self.k.shape[2])


class PagedKVCache(NamedTuple):
    """The paged form (`rollout/pages.py`): pools of pages and each slot's page-table row. The host's `PagePool`
    owns the table; the engine sends it with every call that writes or reads."""

    k: jax.Array  # (layers, kv_heads, num_pages, page_size, head_dim)
    v: jax.Array
    length: jax.Array  # (slots,) int32
    delta: jax.Array  # (slots,) int32
    table: jax.Array  # (slots, pages_per_slot) int32

    @property
    def num_slots(self) -> int:
        return int(self.table.shape[0])

    @property
    def page_size(self) -> int:
        return int(self.k.shape[3])

    @property
    def max_len(self) -> int:
        return int(self.table.shape[1]) * self.page_size


def _zeros(shape: tuple[int, ...], dtype, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """Zeros made where `sharding` puts them: each device allocates only its shard."""
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


def page_bytes(cfg: TextConfig, page_size: int, dtype: jnp.dtype | str) -> int:
    """Bytes one page holds over all layers, keys and values."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * page_size * jnp.dtype(dtype).itemsize


def init_paged_cache(cfg: TextConfig, slots: int, num_pages: int, page_size: int, pages_per_slot: int,
                     dtype: jnp.dtype | str = jnp.bfloat16, sharding: jax.sharding.Sharding | None = None
                     ) -> PagedKVCache:
    """Zero pools made where `sharding` puts them (each device allocates only its shard), and an all-null table."""
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, num_pages, page_size, cfg.head_dim)
    return PagedKVCache(k=_zeros(shape, dtype, sharding), v=_zeros(shape, dtype, sharding), length=jnp.zeros((slots,), jnp.int32),
                        delta=jnp.zeros((slots,), jnp.int32), table=jnp.zeros((slots, pages_per_slot), jnp.int32))


def init_cache(cfg: TextConfig, slots: int, max_len: int, dtype: jnp.dtype | str = jnp.bfloat16,
               sharding: jax.sharding.Sharding | None = None) -> KVCache:
    """Zero rows made where `sharding` puts them (each device allocates only its shard)."""
    shape = (cfg.num_hidden_layers, slots, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(
        k=_zeros(shape, dtype, sharding),
        v=_zeros(shape, dtype, sharding),
        length=jnp.zeros((slots,), jnp.int32),
        delta=jnp.zeros((slots,), jnp.int32),
    )


def copy_slots(cache: KVCache, src: jax.Array, dst: jax.Array) -> KVCache:
    """Copy slot rows src[i] -> dst[i] (n samples of one prompt share one prefill)."""
    return KVCache(
        k=cache.k.at[:, dst].set(cache.k[:, src]),
        v=cache.v.at[:, dst].set(cache.v[:, src]),
        length=cache.length.at[dst].set(cache.length[src]),
        delta=cache.delta.at[dst].set(cache.delta[src]),
    )
