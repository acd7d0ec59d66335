"""Ragged paged attention over a layer-stacked page pool: a Pallas TPU kernel.

A cached chunk (a decode token or an extend's tokens) attends over two parts: the tokens its sequence cached
before it, which sit in the page pool, and the chunk itself (causal), which is not written until after the layer
loop (`paged_cache.write_chunk` keeps the pool in place). This kernel computes the first part, reading only the
pages each sequence fills, and returns the log-sum-exp with it; `merge` adds the chunk's own attention.

Why not `jax.experimental.pallas.ops.tpu.(ragged_)paged_attention`: they take one layer's pool, and our layers are
scanned over a pool stacked on a leading layer axis, so every call would slice (copy) the layer's whole pool out
first. Here the layer index is a scalar the kernel's DMAs use, `pool.at[layer, :, page]`, and nothing is copied.
They also need the chunk's keys written before the call (the write-inside-the-loop that copies the pool on TPU).

Per grid step (sequence b, a tile of its query rows): blocks of `pages_per_block` pages are copied HBM -> VMEM,
double-buffered (block i+1 in flight while block i is computed), as many blocks as the sequence's length needs;
an online softmax over them per kv head, its G query heads (GQA) sharing each K/V read. Queries are laid out
(B, kv_heads, C * G rows, head_dim) so a head group is one matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mini_o3_jax.model.attention import attention_lse

LANES = 128  # running max / sum kept lane-broadcast (TPU vector layout), as the Pallas flash kernels do
MASK = -0.7 * float(jnp.finfo(jnp.float32).max)


def _kernel(layer_ref, table_ref, lengths_ref, q_ref, k_hbm, v_hbm, o_ref, lse_ref, kbuf, vbuf, sems, m_ref,
            l_ref, acc_ref, *, pages_per_block: int, pages_per_seq: int, scale: float):
    b = pl.program_id(0)
    heads, page_size = kbuf.shape[1], kbuf.shape[3]
    # a float32 pool is float32 math (tests, a float32 model); bf16 pools take the MXU's one pass
    precision = jax.lax.Precision.HIGHEST if kbuf.dtype == jnp.float32 else None
    tokens = pages_per_block * page_size
    layer, length = layer_ref[0], lengths_ref[b]
    blocks = (length + tokens - 1) // tokens
    last = jnp.maximum((length + page_size - 1) // page_size - 1, 0)  # past it, re-read the last page (masked)

    def copies(block, slot):
        out = []
        for j in range(pages_per_block):
            page = table_ref[b * pages_per_seq + jnp.minimum(block * pages_per_block + j, last)]
            out.append(pltpu.make_async_copy(k_hbm.at[layer, :, page], kbuf.at[slot, :, j], sems.at[0, slot]))
            out.append(pltpu.make_async_copy(v_hbm.at[layer, :, page], vbuf.at[slot, :, j], sems.at[1, slot]))
        return out

    @pl.when(blocks > 0)
    def _first():
        for c in copies(0, 0):
            c.start()

    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def block(i, carry):
        slot = i % 2

        @pl.when(i + 1 < blocks)
        def _next():
            for c in copies(i + 1, 1 - slot):
                c.start()

        for c in copies(i, slot):
            c.wait()
        rows = q_ref.shape[2]
        valid = i * tokens + jax.lax.broadcasted_iota(jnp.int32, (rows, tokens), 1) < length
        for h in range(heads):
            k = kbuf[slot, h].reshape(tokens, -1)
            v = vbuf[slot, h].reshape(tokens, -1)
            s = jax.lax.dot_general(q_ref[0, h], k, (((1,), (1,)), ((), ())), precision=precision,
                                    preferred_element_type=jnp.float32)
            s = jnp.where(valid, s * scale, MASK)
            m_prev, l_prev = m_ref[h][:, :1], l_ref[h][:, :1]
            m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
            p = jnp.exp(s - m_new)
            alpha = jnp.exp(m_prev - m_new)
            l_ref[h] = jnp.broadcast_to(alpha * l_prev + p.sum(axis=-1, keepdims=True), (rows, LANES))
            m_ref[h] = jnp.broadcast_to(m_new, (rows, LANES))
            acc_ref[h] = alpha * acc_ref[h] + jnp.dot(p.astype(v.dtype), v, precision=precision,
                                                                 preferred_element_type=jnp.float32)
        return carry

    jax.lax.fori_loop(0, blocks, block, 0)
    for h in range(heads):
        total, m = l_ref[h][:, :1], m_ref[h][:, :1]
        seen = total > 0
        o_ref[0, h] = jnp.where(seen, acc_ref[h] / jnp.where(seen, total, 1.0), 0.0).astype(o_ref.dtype)
        lse_ref[0, h] = jnp.broadcast_to(jnp.where(seen, m + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf),
                                         lse_ref.shape[2:])


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def paged_prefix_attention(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array, layer: jax.Array, table: jax.Array,
                           lengths: jax.Array, *, scale: float, pages_per_block: int = 8, query_rows: int = 256,
                           interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Attention of the queries `q` (B, C, H, D) over the first `lengths[b]` cached tokens of each sequence (no
    causal mask: all of them precede the chunk), read through its page-table row `table[b]` from layer `layer` of
    `k_pool`/`v_pool` (layers, kv_heads, num_pages, page_size, D). Returns (out (B, C, H, D) float32, lse (B, C, H));
    a sequence with nothing cached gets out 0 and lse -inf. `interpret` runs the kernel in the TPU interpreter
    (CPU tests; it rounds matmul operands to bf16, as the MXU does at default precision)."""
    b, c, h, d = q.shape
    kv = k_pool.shape[1]
    g = h // kv
    pages_per_seq = table.shape[1]
    pages_per_block = max(1, min(pages_per_block, pages_per_seq))
    rows = c * g
    tile = min(_round_up(rows, 8), query_rows)
    padded = _round_up(rows, tile)
    qg = q.reshape(b, c, kv, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kv, rows, d)
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, padded - rows), (0, 0))).astype(k_pool.dtype)
    spec = pl.BlockSpec((1, kv, tile, d), lambda i, j, *_: (i, 0, j, 0))
    buf = pltpu.VMEM((2, kv, pages_per_block, k_pool.shape[3], d), k_pool.dtype)
    out, lse = pl.pallas_call(
        functools.partial(_kernel, pages_per_block=pages_per_block, pages_per_seq=pages_per_seq, scale=scale),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(b, padded // tile),
            in_specs=[spec, pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=[spec, pl.BlockSpec((1, kv, tile, LANES), lambda i, j, *_: (i, 0, j, 0))],
            scratch_shapes=[buf, buf, pltpu.SemaphoreType.DMA((2, 2)), pltpu.VMEM((kv, tile, LANES), jnp.float32),
                            pltpu.VMEM((kv, tile, LANES), jnp.float32), pltpu.VMEM((kv, tile, d), jnp.float32)],
        ),
        out_shape=[jax.ShapeDtypeStruct((b, kv, padded, d), jnp.float32),
                   jax.ShapeDtypeStruct((b, kv, padded, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), table.reshape(-1).astype(jnp.int32), lengths.astype(jnp.int32),
      qg, k_pool, v_pool)
    out = out[:, :, :rows].reshape(b, kv, c, g, d).transpose(0, 2, 1, 3, 4).reshape(b, c, h, d)
    lse = lse[:, :, :rows, 0].reshape(b, kv, c, g).transpose(0, 2, 1, 3).reshape(b, c, h)
    return out, lse


def chunk_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, positions: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """The chunk's causal attention over its own keys (B, C, kv_heads, D), `valid` (B, C) marking real tokens at
    `positions` (B, C): (out (B, C, H, D) float32, lse (B, C, H)), query rows in chunks (`attention_lse`: an
    8K-token extend does not hold C x C scores)."""
    seg = valid.astype(jnp.int32)
    return attention_lse(q, k, v, seg, seg, positions, positions)


def merge(parts: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """Softmax attention over the union of disjoint key sets from each set's (out, lse): the log-sum-exp
    weighted mean. A query no set has keys for gets 0."""
    lses = jnp.stack([lse for _, lse in parts])
    top = jnp.max(lses, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.exp(lses - top)
    total = weights.sum(axis=0)
    out = sum(w[..., None] * o for w, (o, _) in zip(weights, parts, strict=True))
    return out / jnp.where(total > 0, total, 1.0)[..., None]
