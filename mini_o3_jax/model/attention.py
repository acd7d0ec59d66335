"""One attention function for the ViT (bidirectional, segment-masked) and the LLM (causal, GQA).

Masks are built from small per-token arrays (segment ids, positions) inside the kernel, never
materialised as (L, L) tensors on the host, and applied with a boolean `where` on fp32 scores:
the bf16 min-value additive mask is what broke HF's Qwen2.5-VL vision attention (HF PR #37363).
Long query axes are processed in chunks so score memory stays O(chunk * L_k).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mini_o3_jax.model import attention_backends as backends
from mini_o3_jax.parallel.rules import active_sharding

_NEG = float(jnp.finfo(jnp.float32).min)


def _head_major(q: jax.Array, kvh: int) -> jax.Array:
    """(B, Lq, H, D) -> (B, KV, G*Lq, D): query head j uses kv head j // G (HF repeat_kv), so each kv head is
    read once for all its G query heads. On XLA:CPU this layout plus the explicit softmax below is ~5x faster
    than the equivalent 5-D einsums."""
    b, lq, h, d = q.shape
    g = h // kvh
    return q.reshape(b, lq, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * lq, d)


def _from_head_major(x: jax.Array, lq: int, h: int) -> jax.Array:
    """(B, KV, G*Lq, D) -> (B, Lq, H, D), the inverse of `_head_major`."""
    b, kvh, _, d = x.shape
    return x.reshape(b, kvh, h // kvh, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)


def _scores(q, k, q_seg, kv_seg, q_pos, kv_pos, scale):
    """Masked fp32 scores (B, KV, G, Lq, Lk) and the mask (B, Lq, Lk)."""
    b, lq, h, _ = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    s = jnp.matmul(_head_major(q, kvh), k.transpose(0, 2, 3, 1), preferred_element_type=jnp.float32) * scale
    s = s.reshape(b, kvh, h // kvh, lq, lk)
    mask = q_seg[:, :, None] == kv_seg[:, None, :]
    if q_pos is not None:
        mask = mask & (kv_pos[:, None, :] <= q_pos[:, :, None])
    return jnp.where(mask[:, None, None], s, _NEG), mask


def _forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale):
    """The attention output and the per-row log-sum-exp of the scores (what the backward needs)."""
    b, lq, h, d = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    s, _ = _scores(q, k, q_seg, kv_seg, q_pos, kv_pos, scale)
    m = s.max(axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    total = e.sum(axis=-1, keepdims=True)
    p = (e / total).astype(v.dtype)  # fp32 softmax, one rounding (HF order)
    o = jnp.matmul(p.reshape(b, kvh, -1, lk), v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    return _from_head_major(o, lq, h).astype(q.dtype), m + jnp.log(total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attend(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale):
    """Softmax attention whose backward keeps O(L) per row instead of every (Lq, Lk) score.

    Autodiff of the forward saved the fp32 scores, exponentials and the broadcast mask of every layer for
    the backward: for the toy demo's 4 layers x 16 rows x 320 tokens that was ~150 MB written and read each
    step (zero-filled, then sliced per layer), most of a CPU training step; at 32K tokens it is what does not
    fit (issue 19). The backward here recomputes the scores from q and k and the probabilities from the saved
    log-sum-exp (flash-attention's backward), so the residuals are the inputs, the output and one float per
    query row. The forward is the plain computation above, unchanged (same rounding as before and as HF).
    """
    return _forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale)[0]


def _attend_fwd(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale):
    o, lse = _forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale)
    return o, (q, k, v, q_seg, kv_seg, q_pos, kv_pos, o, lse)


def _attend_bwd(scale, res, do):
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, o, lse = res
    b, lq, h, d = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    s, mask = _scores(q, k, q_seg, kv_seg, q_pos, kv_pos, scale)
    p = jnp.where(mask[:, None, None], jnp.exp(s - lse), 0.0).reshape(b, kvh, -1, lk)  # fp32 probabilities
    do_h = _head_major(do, kvh).astype(jnp.float32)  # (B, KV, G*Lq, D)
    dv = jnp.matmul(p.transpose(0, 1, 3, 2), do_h)  # (B, KV, Lk, D)
    dp = jnp.matmul(do_h, v.transpose(0, 2, 3, 1).astype(jnp.float32))  # (B, KV, G*Lq, Lk)
    delta = jnp.sum(do_h * _head_major(o, kvh).astype(jnp.float32), axis=-1, keepdims=True)
    ds = p * (dp - delta) * scale
    dq = _from_head_major(jnp.matmul(ds, k.transpose(0, 2, 1, 3).astype(jnp.float32)), lq, h)
    dk = jnp.matmul(ds.transpose(0, 1, 3, 2), _head_major(q, kvh).astype(jnp.float32))  # (B, KV, Lk, D)
    return (dq.astype(q.dtype), dk.transpose(0, 2, 1, 3).astype(k.dtype), dv.transpose(0, 2, 1, 3).astype(v.dtype),
            None, None, None, None)


_attend.defvjp(_attend_fwd, _attend_bwd)


def _query_chunk(chunk: int, lk: int, heads: int, budget: int = 1 << 25) -> int:
    """Query rows per call: at most `chunk`, and few enough that one call's fp32 scores (rows x keys x heads)
    stay within `budget` elements (128 MB): a 32K-token 7B row reads 32 rows at a time, not 1,024 (3.8 GB of
    scores per array, several alive in the backward)."""
    fit = max(budget // max(lk * heads, 1), 16)
    return min(chunk, 1 << (fit.bit_length() - 1))


def _fused(q, k, v, q_seg, kv_seg, q_pos, causal: bool, scale: float) -> jax.Array | None:
    """The backend's result where it computes this call exactly, else None (the XLA path)."""
    backend = backends.resolve()
    whole = q_pos is None or causal  # no per-row cache offsets
    if backend == "splash" and whole and q.shape[1] % 128 == 0 and k.shape[1] % 128 == 0:
        fn = functools.partial(backends.splash_attention, causal=causal, scale=scale,
                               interpret=backends._INTERPRET.get())
        active = active_sharding()
        if active is not None:
            fn = backends.sharded(fn, *active)
        return fn(q, k, v, q_seg, kv_seg)
    if backend == "cudnn" and causal and q.dtype in (jnp.bfloat16, jnp.float16):  # cuDNN: half precision only
        return backends.cudnn_attention(q, k, v, kv_seg, scale=scale)
    return None


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
    causal: bool = False,
) -> jax.Array:
    """Scaled dot-product attention where query i sees key j iff segments match (and, when
    positions are given, kv_pos[j] <= q_pos[i]: causal, also across a KV cache).

    q: (B, Lq, H, D); k, v: (B, Lk, KV, D) with H a multiple of KV; segments/positions (B, L).
    Every query must see at least one key (padding rows share a segment with themselves).
    `causal=True` promises the positions are 0..L-1 on both sides (a whole row: train and prefill), which
    lets a fused kernel take the call (`attention_backends`: splash on TPU, cuDNN on GPU, each row one
    sequence then padding); otherwise, and on CPU, the XLA code below computes it.
    """
    scale = q.shape[-1] ** -0.5
    fused = _fused(q, k, v, q_seg, kv_seg, q_pos, causal, scale)
    if fused is not None:
        return fused
    # each chunk rematerialised: the loop's backward keeps only its inputs per chunk
    return _by_query_chunks(jax.checkpoint(lambda q, s, p: _attend(q, k, v, s, kv_seg, p, kv_pos, scale)),
                            q, q_seg, q_pos, _query_chunk(chunk, k.shape[1], q.shape[2]))


def _by_query_chunks(fn, q: jax.Array, q_seg: jax.Array, q_pos: jax.Array | None, chunk: int):
    """`fn(q, q_seg, q_pos)` (outputs with the query rows on axis 1) over `chunk` query rows at a time (`lax.map`),
    the outputs put back together: one call when the rows fit."""
    lq = q.shape[1]
    if lq <= chunk:
        return fn(q, q_seg, q_pos)
    n = -(-lq // chunk)
    pad = n * chunk - lq

    def split(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)

    out = jax.lax.map(lambda a: fn(*a), (split(q), split(q_seg), split(q_pos) if q_pos is not None else None))
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], n * chunk, *x.shape[3:])[:, :lq], out)


def attention_lse(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array | None = None,
    kv_pos: jax.Array | None = None,
    *,
    chunk: int = 1024,
) -> tuple[jax.Array, jax.Array]:
    """`attention`'s forward (same masks, query rows in chunks) returning (out float32 (B, Lq, H, D), lse (B, Lq, H)):
    a part of the keys whose result `paged_kernel.merge` combines with another part's. A query that sees no key
    gets out 0 and lse -inf. Not differentiated (decode and extend only)."""
    b, _, h, d = q.shape
    kvh = k.shape[2]
    scale = d ** -0.5

    def one(q, q_seg, q_pos):
        n = q.shape[1]
        s, mask = _scores(q, k, q_seg, kv_seg, q_pos, kv_pos, scale)
        m = s.max(axis=-1, keepdims=True)
        e = jnp.where(mask[:, None, None], jnp.exp(s - m), 0.0)
        total = e.sum(axis=-1, keepdims=True)
        p = (e / jnp.where(total > 0, total, 1.0)).astype(v.dtype)
        o = jnp.matmul(p.reshape(b, kvh, -1, k.shape[1]), v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
        lse = jnp.where(total > 0, m + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)  # (B, KV, G, n, 1)
        return _from_head_major(o, n, h), lse[..., 0].transpose(0, 3, 1, 2).reshape(b, n, h)

    return _by_query_chunks(one, q, q_seg, q_pos, _query_chunk(chunk, k.shape[1], h))
