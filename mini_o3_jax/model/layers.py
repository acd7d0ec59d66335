"""Small numeric building blocks written in Hugging Face's cast order (spec qwen2_5_vl.md §7).

bf16 parity depends on *where* casts happen, so these are written by hand instead of using
flax's RMSNorm/Linear: RMSNorm normalises in fp32, casts back, then multiplies by the weight;
matmuls accumulate in fp32 and round once to the activation dtype, as torch's CPU/GPU GEMMs do.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def param(
    rngs: nnx.Rngs | None,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype: jnp.dtype,
    init: str = "normal",
    scale: float = 0.02,
) -> nnx.Param:
    """A parameter tagged with logical axis names (mapped to mesh axes by parallel/rules.py)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "normal":
        if rngs is None:
            raise ValueError("normal init needs rngs")
        value = (scale * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, axes=tuple(axes))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF RMSNorm: fp32 statistics, cast back to the input dtype, then multiply by the weight."""
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(dtype)


def matmul_fp32(spec: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`einsum(spec, x, kernel)` accumulated in fp32; x's first axis must lead the output.

    XLA:CPU lowers a single-row bf16 product (a GEMV: last-position logits, batch-1 decoding) by
    converting the whole weight to fp32 on every call, ~8x slower than its two-row kernel; so on
    CPU one row is padded to two. Other backends see the plain einsum.
    """
    lhs, out = spec.split(",")[0], spec.split("->")[1]
    rows = math.prod(n for c, n in zip(lhs, x.shape) if c in out)
    kernel = kernel.astype(x.dtype)
    if rows == 1 and x.dtype != jnp.float32 and lhs[0] == out[0] and jax.default_backend() == "cpu":
        x2 = jnp.concatenate([x, jnp.zeros_like(x)], axis=0)
        return jnp.einsum(spec, x2, kernel, preferred_element_type=jnp.float32)[:1]
    return jnp.einsum(spec, x, kernel, preferred_element_type=jnp.float32)


def dense(x: jax.Array, kernel: jax.Array, spec: str, bias: jax.Array | None = None) -> jax.Array:
    """einsum with fp32 accumulation, bias added before the single rounding to x.dtype."""
    y = matmul_fp32(spec, x, kernel)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin, in the dtype of cos/sin (bf16 for the LLM, fp32 for ViT)."""
    dtype = x.dtype
    xc = x.astype(cos.dtype)
    return (xc * cos + rotate_half(xc) * sin).astype(dtype)


def inv_freq(dim: int, theta: float) -> jax.Array:
    """1 / theta^(2i/dim) in fp32, as HF builds it."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def vision_rotary(pos_hw: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """2-D rotary for the ViT: (N, 2) patch rows/cols -> fp32 cos/sin of shape (N, head_dim).

    Angles stay fp32 end to end (other JAX ports cast them to bf16: ~0.4 rad error at h=100).
    """
    freq = inv_freq(head_dim // 2, theta)  # head_dim/4 frequencies shared by h and w
    ang = pos_hw.astype(jnp.float32)[..., None] * freq  # (N, 2, head_dim/4)
    ang = jnp.concatenate([ang[..., 0, :], ang[..., 1, :]], axis=-1)
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def mrope(
    positions: jax.Array, head_dim: int, theta: float, sections: tuple[int, ...], dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """M-RoPE cos/sin (B, L, head_dim) from positions (3, B, L).

    The head_dim/2 frequency slots come from the t/h/w rows in *contiguous* chunks `sections`
    (Qwen2.5-VL layout, not Qwen3's interleaved one); angles in fp32, result cast to `dtype`.
    """
    freq = inv_freq(head_dim, theta)
    ang = positions.astype(jnp.float32)[..., None] * freq  # (3, B, L, head_dim/2)
    row = jnp.asarray(sum(([i] * n for i, n in enumerate(sections)), []))  # static (head_dim/2,)
    ang = jnp.where(row == 0, ang[0], jnp.where(row == 1, ang[1], ang[2]))
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang).astype(dtype), jnp.sin(ang).astype(dtype)
