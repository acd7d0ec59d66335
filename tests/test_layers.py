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


def _numpy_probs(q, k, v, seg, pos):
    """Attention probabilities (b, h, q, k) and the kv heads repeated to the query heads (GQA)."""
    d = q.shape[-1]
    g = q.shape[2] // k.shape[2]
    kk, vv = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(d)
    mask = seg[:, :, None] == seg[:, None, :]
    if pos is not None:
        mask &= pos[:, None, :] <= pos[:, :, None]
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True), kk, vv


def _numpy_attention(q, k, v, seg, pos):
    p, _, vv = _numpy_probs(q, k, v, seg, pos)
    return np.einsum("bhqk,bkhd->bqhd", p, vv)


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


def _numpy_attention_grads(q, k, v, seg, pos, w):
    """d/d(q, k, v) of sum(attention * w) in float64, by the textbook softmax-attention backward."""
    b, lq, h, d = q.shape
    g = h // k.shape[2]
    p, kk, vv = _numpy_probs(q, k, v, seg, pos)
    do = w.transpose(0, 2, 1, 3)  # (b, h, q, d)
    dv = np.einsum("bhqk,bhqd->bkhd", p, do)
    dp = np.einsum("bhqd,bkhd->bhqk", do, vv)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(d)
    dq = np.einsum("bhqk,bkhd->bqhd", ds, kk)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q)
    fold = lambda x: x.reshape(b, x.shape[1], -1, g, d).sum(3)  # noqa: E731 - sum the group's query heads
    return dq, fold(dk), fold(dv)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads, kv_heads, chunk", [(4, 4, 1024), (8, 2, 1024), (6, 3, 7)])
def test_attention_gradient_matches_numpy_and_autodiff(causal, heads, kv_heads, chunk):
    """The custom backward (scores recomputed from the saved log-sum-exp) gives the softmax-attention gradient:
    equal to a float64 numpy backward and to autodiff of the same forward, which it replaces."""
    from mini_o3_jax.model import attention as attention_module

    rng = np.random.default_rng(2)
    b, length, d = 2, 19, 8
    q = rng.standard_normal((b, length, heads, d))
    k = rng.standard_normal((b, length, kv_heads, d))
    v = rng.standard_normal((b, length, kv_heads, d))
    w = rng.standard_normal((b, length, heads, d))
    seg = np.array([[1] * 7 + [2] * 12, [1] * 19])
    pos = np.broadcast_to(np.arange(length), (b, length)).copy() if causal else None
    jseg, jpos = jnp.asarray(seg), None if pos is None else jnp.asarray(pos)

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, jseg, jseg, jpos, jpos, chunk=chunk) * jnp.asarray(w, jnp.float32))

    def plain(q, k, v):  # autodiff through the forward alone (what the backward used to be)
        out = attention_module._forward(q, k, v, jseg, jseg, jpos, jpos, d ** -0.5)[0]
        return jnp.sum(out * jnp.asarray(w, jnp.float32))

    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    ours = jax.grad(loss, argnums=(0, 1, 2))(*args)
    autodiff = jax.grad(plain, argnums=(0, 1, 2))(*args)
    for got, want_ad, want_np in zip(ours, autodiff, _numpy_attention_grads(q, k, v, seg, pos, w)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want_ad), atol=3e-6)
        np.testing.assert_allclose(np.asarray(got, np.float64), want_np, atol=5e-6)
    # a backward that forgot the softmax's row-sum term (delta) is far off: the check can fail
    assert float(jnp.abs(ours[0]).max()) > 1e-2


def test_attention_backward_saves_no_scores():
    """What the backward keeps is O(L) per query row, not the (Lq, Lk) scores: over 4 scanned layers at 512
    tokens, autodiff of the plain forward holds every layer's fp32 scores until the backward; ours does not."""
    from mini_o3_jax.model import attention as attention_module

    layers, b, length, h, d = 4, 1, 512, 4, 16
    shape = jax.ShapeDtypeStruct((b, length, h, d), jnp.float32)
    seg = jnp.ones((b, length), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))

    def temp_bytes(attend) -> int:
        def loss(x, w):
            def layer(x, w):
                return attend(x * w, x, x) + x, None
            return jnp.sum(jax.lax.scan(layer, x, w)[0] ** 2)

        weights = jax.ShapeDtypeStruct((layers, 1, 1, h, d), jnp.float32)
        return jax.jit(jax.grad(loss, argnums=1)).lower(shape, weights).compile().memory_analysis().temp_size_in_bytes

    ours = temp_bytes(lambda q, k, v: attention(q, k, v, seg, seg, pos, pos))
    plain = temp_bytes(lambda q, k, v: attention_module._forward(q, k, v, seg, seg, pos, pos, d ** -0.5)[0])
    scores = b * h * length * length * 4  # one layer's fp32 score matrix: 4 MiB
    assert plain > layers * scores  # autodiff kept every layer's scores
    assert ours < plain - 2 * scores, (ours, plain)
