"""The KV cache as an explicit, fixed-shape pytree (donated through every jitted call).

One row ("slot") per episode being decoded. A slot's `length` is how many tokens its keys/values
hold; `delta` is HF's M-RoPE rope delta, so the next text token of the slot sits at M-RoPE position
`length + delta` on all three axes. Rows past `length` hold stale values and are masked out.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mini_o3_jax.model.config import TextConfig

# Logical axes (parallel/rules.py): slots shard like a batch, heads like the attention weights.
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


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


def init_cache(cfg: TextConfig, slots: int, max_len: int, dtype: jnp.dtype | str = jnp.bfloat16) -> KVCache:
    shape = (cfg.num_hidden_layers, slots, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
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
