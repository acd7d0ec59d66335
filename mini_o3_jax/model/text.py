"""The Qwen2 decoder of Qwen2.5-VL: GQA with q/k/v bias, M-RoPE, SwiGLU, RMSNorm; layers scanned.

Head-structured kernels (q: embed x heads x head_dim) keep the head axis explicit so the
`heads`/`kv_heads` logical axes can be sharded over the tensor mesh axis without reshapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from mini_o3_jax.model import attention_backends as backends
from mini_o3_jax.model.attention import attention
from mini_o3_jax.model.config import TextConfig
from mini_o3_jax.model.layers import apply_rotary, dense, matmul_fp32, param, rms_norm
from mini_o3_jax.model.paged_cache import gather_pages, table_rows, write_chunk, write_layer, write_pages
from mini_o3_jax.model.paged_kernel import chunk_attention, merge, paged_prefix_attention
from mini_o3_jax.model.vision import _remat_policy
from mini_o3_jax.parallel.rules import constrain

HIDDEN = ("act_batch", "act_length", "act_embed")  # logical axes of the (B, L, D) residual stream

S = TypeVar("S")  # what the attention threads through the layer loop: nothing, or the KV cache


class DecoderLayers(nnx.Module):
    """All decoder layers, parameters stacked on a leading `layers` axis."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs | None):
        n, d, f = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.input_norm = param(rngs, (n, d), ("layers", "embed"), dtype, "ones")
        self.q = param(rngs, (n, d, h, hd), ("layers", "embed", "heads", "head_dim"), dtype)
        self.q_bias = param(rngs, (n, h, hd), ("layers", "heads", "head_dim"), dtype, "zeros")
        self.k = param(rngs, (n, d, kv, hd), ("layers", "embed", "kv_heads", "head_dim"), dtype)
        self.k_bias = param(rngs, (n, kv, hd), ("layers", "kv_heads", "head_dim"), dtype, "zeros")
        self.v = param(rngs, (n, d, kv, hd), ("layers", "embed", "kv_heads", "head_dim"), dtype)
        self.v_bias = param(rngs, (n, kv, hd), ("layers", "kv_heads", "head_dim"), dtype, "zeros")
        self.o = param(rngs, (n, h, hd, d), ("layers", "heads", "head_dim", "embed"), dtype)
        self.post_norm = param(rngs, (n, d), ("layers", "embed"), dtype, "ones")
        self.gate = param(rngs, (n, d, f), ("layers", "embed", "mlp"), dtype)
        self.up = param(rngs, (n, d, f), ("layers", "embed", "mlp"), dtype)
        self.down = param(rngs, (n, f, d), ("layers", "mlp", "embed"), dtype)


def decoder_layer(
    x: jax.Array,
    w: dict[str, jax.Array],
    cos: jax.Array,
    sin: jax.Array,
    eps: float,
    attend: Callable[[jax.Array, jax.Array, jax.Array, S], tuple[jax.Array, S]],
    state: S,
) -> tuple[jax.Array, S]:
    """One pre-norm decoder layer. `attend(q, k, v, state) -> (out, state)` supplies the attention:
    plain (no state) or KV-cached (the cache goes in and comes back written, a value the scan carries).
    """
    h = rms_norm(x, w["input_norm"], eps)
    q = apply_rotary(dense(h, w["q"], "bld,dhk->blhk", w["q_bias"]), cos, sin)
    k = apply_rotary(dense(h, w["k"], "bld,dhk->blhk", w["k_bias"]), cos, sin)
    v = dense(h, w["v"], "bld,dhk->blhk", w["v_bias"])
    out, state = attend(q, k, v, state)
    x = x + dense(out, w["o"], "blhk,hkd->bld")
    h = rms_norm(x, w["post_norm"], eps)
    g = dense(h, w["gate"], "bld,df->blf")
    u = dense(h, w["up"], "bld,df->blf")
    act = jax.nn.silu(g.astype(jnp.float32)).astype(g.dtype) * u
    return x + dense(act, w["down"], "blf,fd->bld"), state


class TextDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs | None, remat: str = "none",
                 unroll: bool = False):
        self.cfg = cfg
        self.remat = remat
        self.unroll = unroll
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dtype)
        self.layers = DecoderLayers(cfg, dtype=dtype, rngs=rngs)
        self.norm = param(rngs, (cfg.hidden_size,), ("embed",), dtype, "ones")
        if not cfg.tie_word_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dtype)

    def layer_weights(self) -> dict[str, jax.Array]:
        return {k: v[...] for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)}

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        segment_ids: jax.Array,
        token_pos: jax.Array,
    ) -> jax.Array:
        """(B, L, D) embeddings -> (B, L, D) final-norm hidden states, causal within segments."""
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        eps = self.cfg.rms_norm_eps

        def attend(q, k, v, state: None) -> tuple[jax.Array, None]:
            return attention(q, k, v, segment_ids, segment_ids, token_pos, token_pos, causal=True), state

        def body(x, w):
            x = decoder_layer(constrain(x, HIDDEN), w, cos, sin, eps, attend, None)[0]
            return constrain(x, HIDDEN), None

        if self.remat != "none":
            body = jax.checkpoint(body, policy=_remat_policy(self.remat))
        x, _ = jax.lax.scan(body, x, self.layer_weights(), unroll=bool(self.unroll))
        return rms_norm(x, self.norm[...], eps)

    def cached(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        k_cache: jax.Array,
        v_cache: jax.Array,
        starts: jax.Array,
        valid: jax.Array,
        slots: jax.Array | None = None,
        kv_len: int | None = None,
        table: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Run a (B, C) chunk against a KV cache: write its keys/values at `starts` and attend causally
        over everything the slot holds. Same layer code as the full forward.

        With `table` (S, pages_per_slot) the caches are page pools (layers, kv_heads, num_pages, page_size,
        head_dim) (`rollout/pages.py`): row b's tokens live in the pages `table[slots[b]]` names (a row past
        the table, a batch's padding, writes to the null page), and `kv_len` (rounded up to the page size) is
        read back through the table; a decode step (C == 1) on GPU and any chunk on TPU read the pages directly
        (Pallas kernels, `attention_backends`).

        k_cache/v_cache: (layers, S, max_len, kv_heads, head_dim); `slots` (B,) picks the rows (None:
        all S rows in order, B == S); `valid` (B, C) marks real tokens (padding is written past the
        slot's end, where it is masked and later overwritten). `kv_len` (static) attends over the first
        `kv_len` cache positions only: the caller guarantees every real token's slot ends within them
        (decoding reads the keys it needs, not a 32k-token row). Returns (hidden, k_cache, v_cache).
        """
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        eps = self.cfg.rms_norm_eps
        b, c = x.shape[:2]
        rows = jnp.arange(b) if slots is None else slots
        if table is not None:
            table = table_rows(table, rows)
            page_size = k_cache.shape[3]
            full = table.shape[1] * page_size
            kv_len = full if kv_len is None else min(-(-kv_len // page_size) * page_size, full)
        else:
            kv_len = k_cache.shape[2] if kv_len is None else min(kv_len, k_cache.shape[2])
        q_pos = starts[:, None] + jnp.arange(c, dtype=jnp.int32)[None, :]
        kv_pos = jnp.broadcast_to(jnp.arange(kv_len, dtype=jnp.int32), (b, kv_len))
        end = starts + valid.sum(axis=-1).astype(jnp.int32)
        kv_seg = (kv_pos < end[:, None]).astype(jnp.int32)
        q_seg = valid.astype(jnp.int32)

        layers = jnp.arange(self.cfg.num_hidden_layers, dtype=jnp.int32)
        weights = self.layer_weights()
        kernel = table is not None and c == 1 and backends.paged_decode_enabled()
        prefix_kernel = table is not None and backends.paged_prefix_enabled()
        # the XLA backend (CPU): each layer writes the chunk into its pages, then reads them back, as the dense
        # cache does; reading the old pool and writing after the loop (below) made XLA:CPU copy the whole pool
        # twice per decoded token
        write_first = table is not None and not kernel and not prefix_kernel and backends.resolve() == "xla"
        if table is not None and not kernel and not write_first:
            # through the page table: each layer attends over the pages already written and the chunk itself, and
            # all layers' keys/values are written after the loop (`write_chunk`: the pool stays in place on TPU)
            def paged_body(x, layer):
                w, i = layer

                def attend(q, k, v, _):
                    if prefix_kernel:  # TPU: the kernel reads the filled pages; the chunk's own part merged in
                        scale = q.shape[-1] ** -0.5
                        old = paged_prefix_attention(q, k_cache, v_cache, i, table[:, : kv_len // page_size], starts,
                                                     scale=scale, interpret=backends._INTERPRET.get())
                        own = chunk_attention(q, k.astype(k_cache.dtype), v.astype(v_cache.dtype), valid, q_pos)
                        return merge([old, own]).astype(q.dtype), (k, v)
                    old = (kv_pos < starts[:, None]).astype(jnp.int32)
                    keys = jnp.concatenate([gather_pages(k_cache, table, kv_len, layer=i), k.astype(k_cache.dtype)], 1)
                    values = jnp.concatenate([gather_pages(v_cache, table, kv_len, layer=i),
                                              v.astype(v_cache.dtype)], 1)
                    out = attention(q, keys, values, q_seg, jnp.concatenate([old, q_seg], 1), q_pos,
                                    jnp.concatenate([kv_pos, q_pos], 1))
                    return out, (k, v)

                return decoder_layer(x, w, cos, sin, eps, attend, None)

            x, (k_new, v_new) = jax.lax.scan(paged_body, x, (weights, layers), unroll=bool(self.unroll))
            k_cache = write_chunk(k_cache, table, q_pos, k_new)
            v_cache = write_chunk(v_cache, table, q_pos, v_new)
            return rms_norm(x, self.norm[...], eps), k_cache, v_cache

        def body(carry, layer):
            x, cache = carry
            w, i = layer

            def attend(q, k, v, cache: tuple[jax.Array, jax.Array]):
                kc, vc = cache
                if kernel:  # a decode step on GPU: the token into its page, then the kernel reads the pages
                    kc, vc = write_pages(kc[i], table, q_pos, k), write_pages(vc[i], table, q_pos, v)
                    out = backends.paged_decode_attention(q, kc, vc, table[:, : kv_len // page_size], end,
                                                          scale=q.shape[-1] ** -0.5,
                                                          interpret=backends._INTERPRET.get())
                    return out, (cache[0].at[i].set(kc), cache[1].at[i].set(vc))
                if write_first:
                    kc, vc = write_layer(kc, i, table, q_pos, k), write_layer(vc, i, table, q_pos, v)
                    keys, values = gather_pages(kc, table, kv_len, layer=i), gather_pages(vc, table, kv_len, layer=i)
                    return attention(q, keys, values, q_seg, kv_seg, q_pos, kv_pos), (kc, vc)
                kc = kc.at[i, rows[:, None], q_pos].set(k.astype(kc.dtype), mode="drop")
                vc = vc.at[i, rows[:, None], q_pos].set(v.astype(vc.dtype), mode="drop")
                keys = (kc[i] if slots is None else kc[i, rows])[:, :kv_len]
                values = (vc[i] if slots is None else vc[i, rows])[:, :kv_len]
                return attention(q, keys, values, q_seg, kv_seg, q_pos, kv_pos), (kc, vc)

            return decoder_layer(x, w, cos, sin, eps, attend, cache), None

        (x, (k_cache, v_cache)), _ = jax.lax.scan(body, (x, (k_cache, v_cache)), (weights, layers),
                                                  unroll=bool(self.unroll))
        return rms_norm(x, self.norm[...], eps), k_cache, v_cache

    def logits(self, hidden: jax.Array, out_dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """LM head with fp32 accumulation; `out_dtype=hidden.dtype` reproduces HF's rounded logits."""
        kernel = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
        lead = "abcefgh"[: hidden.ndim - 1]
        y = matmul_fp32(f"{lead}d,dv->{lead}v", hidden, kernel)
        return y.astype(out_dtype)
