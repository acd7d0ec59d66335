"""Numeric building blocks: the single-row matmul path and the attention layout against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mini_o3_jax.model.attention import attention
from mini_o3_jax.model.layers import matmul_fp32


@pytest.mark.parametrize(
    "spec, xshape, wshape",
    [
        ("ad,dv->av", (1, 64), (64, 1000)),  # last-position logits, batch 1
        ("bld,dhk->blhk", (1, 1, 64), (64, 4, 16)),  # one decode step's q projection
        ("nhk,hkd->nd", (1, 4, 16), (4, 16, 64)),  # attention output projection, one row
        ("ad,dv->av", (3, 64), (64, 1000)),  # several rows: the plain path
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_fp32_matches_float64(spec, xshape, wshape, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(xshape), dtype)
    w = jnp.asarray(rng.standard_normal(wshape), dtype)
    y = jax.jit(matmul_fp32, static_argnums=0)(spec, x, w)
    ref = np.einsum(spec, np.asarray(x, np.float64), np.asarray(w, np.float64))
    assert y.shape == ref.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-4)


def _numpy_attention(q, k, v, seg, pos):
    b, lq, h, d = q.shape
    g = h // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    mask = seg[:, :, None] == seg[:, None, :]
    if pos is not None:
        mask &= pos[:, None, :] <= pos[:, :, None]
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads, kv_heads, chunk", [(4, 4, 1024), (8, 2, 1024), (6, 3, 7)])
def test_attention_matches_numpy(causal, heads, kv_heads, chunk):
    """GQA grouping (query head j -> kv head j // g), segment masks, causal masks, query chunking."""
    rng = np.random.default_rng(1)
    b, length, d = 2, 19, 8
    q = rng.standard_normal((b, length, heads, d))
    k = rng.standard_normal((b, length, kv_heads, d))
    v = rng.standard_normal((b, length, kv_heads, d))
    seg = np.array([[1] * 7 + [2] * 12, [1] * 19])
    pos = np.broadcast_to(np.arange(length), (b, length)).copy() if causal else None
    out = attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(seg), jnp.asarray(seg),
                    None if pos is None else jnp.asarray(pos), None if pos is None else jnp.asarray(pos), chunk=chunk)
    np.testing.assert_allclose(np.asarray(out, np.float64), _numpy_attention(q, k, v, seg, pos), atol=2e-6)
