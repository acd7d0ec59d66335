"""Fused attention kernels behind `attention.attention`: Pallas splash attention on TPU, cuDNN on GPU.

The XLA path in `attention.py` is the reference and the CPU implementation; a backend takes over only
the calls it computes exactly the same (train/prefill causal attention over whole rows, segment-masked
full attention), and the rest (a chunk extending a KV cache: per-row causal offsets) stays on XLA.

* `splash` (TPU): `jax.experimental.pallas.ops.tpu.splash_attention`, the MQA kernel run per kv head
  (its G query heads share one K/V read: GQA), `SegmentIds` for packed rows and padding, `CausalMask`
  for the decoder. Mosaic kernels are not partitioned by XLA, so under a mesh the call runs inside
  `shard_map`: rows over the data-parallel axes, kv heads over `tensor`. A head_dim that is not a
  multiple of 128 (the ViT's 80) is zero-padded to it: scores and outputs are unchanged.
  `interpret=True` runs the same kernel on the CPU (tests).
* `cudnn` (GPU): `jax.nn.dot_product_attention(implementation="cudnn")` with causal masking and
  per-row key lengths. cuDNN takes no segment ids, so it serves the layouts where segments are "one
  sequence, then padding" (every training row); anything else falls back to XLA.
* paged decode (GPU; `pallas_gpu` selects it alone, so the CPU can interpret it): one query token per
  sequence against a page pool, `jax.experimental.pallas.ops.gpu.paged_attention`, reading only the pages
  each sequence fills. Other paged calls (extend chunks) gather the pages and take the XLA path.
* paged prefix (TPU, with `splash`): decode steps and extend chunks against a page pool, `paged_kernel.py`: a
  Pallas TPU kernel reads the pages each sequence fills from the layer-stacked pool, the chunk's own causal
  attention is merged in by log-sum-exp (the pool is written after the layer loop, in place).

Memory of every backend is O(L) per row in forward and backward (flash-style online softmax).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp

BACKENDS = ("auto", "xla", "splash", "cudnn", "pallas_gpu")

_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("attention_backend", default="auto")
_INTERPRET: contextvars.ContextVar[bool] = contextvars.ContextVar("attention_interpret", default=False)


@contextlib.contextmanager
def attention_backend(name: str, *, interpret: bool = False) -> Iterator[None]:
    """Trace attention with backend `name` ("auto": by platform). `interpret` runs Pallas kernels in the
    interpreter (CPU tests)."""
    if name not in BACKENDS:
        from mini_o3_jax.errors import ConfigError

        raise ConfigError(f"attention backend {name!r}; expected one of {BACKENDS}")
    tokens = _BACKEND.set(name), _INTERPRET.set(interpret)
    try:
        yield
    finally:
        _BACKEND.reset(tokens[0])
        _INTERPRET.reset(tokens[1])


def resolve(platform: str | None = None) -> str:
    """The backend in effect: the context's, or for "auto" the one for the default device's platform."""
    name = _BACKEND.get()
    if name != "auto":
        return name
    platform = platform or jax.devices()[0].platform
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")


# ------------------------------------------------------------------------------------------------ splash
def _block(n: int, most: int = 512) -> int:
    """The largest block size <= `most` dividing `n` (Mosaic wants multiples of 128 on TPU; the
    interpreter accepts any)."""
    for b in (most, 256, 128, 64, 32, 16, 8):
        if b <= n and n % b == 0:
            return b
    return n


@functools.lru_cache(maxsize=64)
def _splash_kernel(lq: int, lk: int, groups: int, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    one = sm.CausalMask((lq, lk)) if causal else sm.FullMask((lq, lk))
    bq, bk = _block(lq), _block(lk)
    sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                          block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    # built as constants, not as values of whatever trace first asks (the kernel is cached across traces)
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa_single_device(sm.MultiHeadMask([one] * groups), block_sizes=sizes,
                                                interpret=interpret)


def splash_attention(q, k, v, q_seg, kv_seg, *, causal: bool, scale: float, interpret: bool = False):
    """(B, Lq, H, D) x (B, Lk, KV, D) -> (B, Lq, H, D): splash MQA per kv head, segments from q_seg/kv_seg."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, lq, h, d = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    pad = (-d) % 128
    if pad:  # zero columns add nothing to q.k and give zero output columns, dropped below
        q, k, v = (jnp.pad(x, [(0, 0)] * 3 + [(0, pad)]) for x in (q, k, v))
    kernel = _splash_kernel(lq, lk, g, causal, interpret)
    qh = (q * jnp.asarray(scale, q.dtype)).reshape(b, lq, kvh, g, d + pad).transpose(0, 2, 3, 1, 4)  # B,KV,G,L,D
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, KV, Lk, D)
    seg = sk.SegmentIds(q=q_seg.astype(jnp.int32), kv=kv_seg.astype(jnp.int32))
    per_head = jax.vmap(lambda qq, kk, vv, s: kernel(qq, kk, vv, segment_ids=s), in_axes=(0, 0, 0, None))
    # the scope tells `train.flops` which kernels skip the blocks above the diagonal
    with jax.named_scope("splash_causal" if causal else "splash_full"):
        out = jax.vmap(per_head)(qh, kh, vh, seg)  # (B, KV, G, Lq, D)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d + pad)
    return out[..., :d].astype(q.dtype)


def sharded(fn, mesh, rules):
    """`fn(q, k, v, q_seg, kv_seg)` inside `shard_map` on `mesh`: rows over the axes of `act_batch`, heads
    over those of `heads` (a Mosaic kernel sees only its shard; XLA does not partition it)."""
    from jax.sharding import PartitionSpec as P

    from mini_o3_jax.parallel.rules import logical_to_spec

    def run(q, k, v, q_seg, kv_seg):
        rows = logical_to_spec(("act_batch",), (q.shape[0],), mesh, rules)[0]
        heads = logical_to_spec(("kv_heads",), (k.shape[2],), mesh, rules)[0]
        qkv = P(rows, None, heads, None)
        seg = P(rows, None)
        return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv,
                             check_vma=False)(q, k, v, q_seg, kv_seg)

    return run


# ------------------------------------------------------------------------------------------------ cudnn
def cudnn_attention(q, k, v, kv_seg, *, scale: float, implementation: str | None = "cudnn"):
    """Causal attention of rows laid out as one sequence then padding (`kv_seg` 1 then 0): cuDNN's fused
    kernel with per-row key lengths. `implementation="xla"` runs the same call on any platform (tests)."""
    lengths = jnp.maximum(jnp.sum(kv_seg > 0, axis=-1).astype(jnp.int32), 1)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, key_value_seq_lengths=lengths,
                                        query_seq_lengths=lengths, implementation=implementation)



# ------------------------------------------------------------------------------------------------ paged decode
def paged_decode_enabled() -> bool:
    """Whether a decode step over a page pool runs the Pallas GPU kernel: on GPU by default, or where the
    `pallas_gpu` backend is chosen (in the interpreter: CPU tests). Not under a mesh: the kernel would need
    `shard_map` over the pool's sharding, and that path is not built yet."""
    from mini_o3_jax.parallel.rules import active_sharding

    return resolve() in ("cudnn", "pallas_gpu") and active_sharding() is None


def paged_prefix_enabled() -> bool:
    """Whether cached chunks over a page pool run the Pallas TPU kernel (`paged_kernel.py`): with the `splash`
    backend (TPU, or the interpreter on CPU), outside the trainer's activation sharding, and, inside `shard_map`,
    only where every mesh axis is manual (Mosaic kernels are not partitioned by XLA)."""
    from mini_o3_jax.parallel.rules import active_sharding

    if resolve() != "splash" or active_sharding() is not None:
        return False
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or set(mesh.manual_axes) == set(mesh.axis_names)


def _largest_divisor(n: int, most: int) -> int:
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def paged_decode_attention(q, k_pages, v_pages, table, lengths, *, scale: float, interpret: bool = False):
    """Attention of one query token per sequence, (B, 1, H, D), over the first `lengths` (B,) tokens of the pages
    `table` (B, n) names in `k_pages`/`v_pages` (kv_heads, num_pages, page_size, D): the Pallas GPU paged
    attention kernel (GQA: each kv head is read once for its query heads). Returns (B, 1, H, D)."""
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention

    n = table.shape[1]
    splits = _largest_divisor(n, 16)
    block = _largest_divisor(n // splits, 8)
    # a sequence with no key (a padding row) would divide by zero; its output is never used
    out = paged_attention((q[:, 0] * jnp.asarray(scale, q.dtype)), k_pages, v_pages, table,
                          jnp.maximum(lengths, 1).astype(jnp.int32), k_splits=splits,
                          pages_per_compute_block=block, interpret=interpret)
    return out[:, None].astype(q.dtype)
