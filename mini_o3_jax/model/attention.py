"""One attention function for the ViT (bidirectional, segment-masked) and the LLM (causal, GQA).

Masks are built from small per-token arrays (segment ids, positions) inside the kernel, never
materialised as (L, L) tensors on the host, and applied with a boolean `where` on fp32 scores:
the bf16 min-value additive mask is what broke HF's Qwen2.5-VL vision attention (HF PR #37363).
Long query axes are processed in chunks so score memory stays O(chunk * L_k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)


def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array | None,
    kv_pos: jax.Array | None,
    scale: float,
) -> jax.Array:
    b, lq, h, d = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    # Head-major batched matmuls with the query group folded into the rows: query head j uses kv
    # head j // g (HF repeat_kv), and each kv head is read once for all its g query heads. On XLA:CPU
    # this layout plus the explicit softmax below is ~5x faster than the equivalent 5-D einsums.
    qt = q.reshape(b, lq, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * lq, d)
    s = jnp.matmul(qt, k.transpose(0, 2, 3, 1), preferred_element_type=jnp.float32) * scale
    s = s.reshape(b, kvh, g, lq, lk)
    mask = q_seg[:, :, None] == kv_seg[:, None, :]
    if q_pos is not None:
        mask = mask & (kv_pos[:, None, :] <= q_pos[:, :, None])
    s = jnp.where(mask[:, None, None], s, _NEG)
    e = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
    p = (e / e.sum(axis=-1, keepdims=True)).astype(v.dtype)  # fp32 softmax, one rounding (HF order)
    o = jnp.matmul(p.reshape(b, kvh, g * lq, lk), v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    o = o.reshape(b, kvh, g, lq, d).transpose(0, 3, 1, 2, 4)
    return o.astype(q.dtype).reshape(b, lq, h, d)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array | None = None,
    kv_pos: jax.Array | None = None,
    *,
    chunk: int = 1024,
) -> jax.Array:
    """Scaled dot-product attention where query i sees key j iff segments match (and, when
    positions are given, kv_pos[j] <= q_pos[i]: causal, also across a KV cache).

    q: (B, Lq, H, D); k, v: (B, Lk, KV, D) with H a multiple of KV; segments/positions (B, L).
    Every query must see at least one key (padding rows share a segment with themselves).
    """
    scale = q.shape[-1] ** -0.5
    lq = q.shape[1]
    if lq <= chunk:
        return _attend(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale)
    n = -(-lq // chunk)
    pad = n * chunk - lq

    def split(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)

    xs = (split(q), split(q_seg), split(q_pos) if q_pos is not None else None)
    out = jax.lax.map(lambda a: _attend(a[0], k, v, a[1], kv_seg, a[2], kv_pos, scale), xs)
    out = jnp.moveaxis(out, 0, 1).reshape(q.shape[0], n * chunk, *q.shape[2:])
    return out[:, :lq]
