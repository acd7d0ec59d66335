"""`train.flops` counts the FLOPs a program executes: scanned layers times their count, the forward a
rematerialised backward recomputes, cond branches at their weights, splash kernels over the blocks their mask
leaves (checked against the dense XLA attention path, counted independently as its own matmuls)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mini_o3_jax.model import attention_backends as backends
from mini_o3_jax.model.attention import attention
from mini_o3_jax.train.flops import executed_flops

X = jax.ShapeDtypeStruct((64, 32), jnp.float32)
W = jax.ShapeDtypeStruct((5, 32, 32), jnp.float32)  # 5 scanned layers
ONE = 2 * 64 * 32 * 32  # one layer's matmul


def stack(x, w, remat=False):
    def body(h, wi):
        return jnp.tanh(h @ wi), None
    return jax.lax.scan(jax.checkpoint(body) if remat else body, x, w)[0].sum()


def test_a_scanned_stack_counts_every_layer_and_the_recomputed_forward():
    assert executed_flops(stack, X, W).total == 5 * ONE
    # backward: the gradient of the input and of the weight of every layer (2 matmuls each)
    grads = jax.grad(stack, argnums=(0, 1))
    assert executed_flops(grads, X, W).total == 15 * ONE
    # remat: the backward recomputes each layer's forward
    remat = jax.grad(lambda x, w: stack(x, w, remat=True), argnums=(0, 1))
    assert executed_flops(remat, X, W).total == 20 * ONE


def test_cond_branches_count_at_their_weights_else_the_dearer_one():
    def f(x, w, flags):
        def body(h, layer):
            wi, flag = layer
            with jax.named_scope("kind"):
                h = jax.lax.cond(flag, lambda h: jnp.tanh(h @ wi @ wi), lambda h: h * 2.0, h)
            return h, None
        return jax.lax.scan(body, x, (w, flags))[0]

    flags = jax.ShapeDtypeStruct((5,), jnp.bool_)
    assert executed_flops(f, X, W, flags).total == 5 * 2 * ONE  # unweighted: the matmul branch every layer
    weighted = executed_flops(f, X, W, flags, branch_weights=lambda stack: (0.8, 0.2) if "kind" in stack else None)
    assert weighted.total == pytest.approx(5 * 0.2 * 2 * ONE)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_splash_kernels_count_the_blocks_their_mask_computes(causal, dtype):
    """Head dim 128 (no padding), 1024 tokens in two 512-query blocks: a full mask computes what the dense XLA
    path computes; a causal one 3 of the 4 blocks. Its gradient under remat: forward twice, dq (3 matmuls) and
    dkv (4): 11 / 2 of the forward."""
    b, length, heads, kv, d = 2, 1024, 4, 2, 128
    q = jax.ShapeDtypeStruct((b, length, heads, d), dtype)
    k = jax.ShapeDtypeStruct((b, length, kv, d), dtype)
    seg = jnp.ones((b, length), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), seg.shape)

    def f(q, k, v):
        return attention(q, k, v, seg, seg, pos if causal else None, pos if causal else None, causal=causal)

    dense = executed_flops(f, q, k, k)  # the XLA path (CPU default): its q.k and p.v matmuls over every pair
    assert dense.kernels == 0 and dense.matmul == 2 * (2 * b * heads * length * length * d)
    with backends.attention_backend("splash", interpret=True):  # a new function: make_jaxpr caches traces of f
        fwd = executed_flops(lambda q, k, v: f(q, k, v), q, k, k)
        grad = executed_flops(jax.grad(lambda q, k, v: jax.checkpoint(f)(q, k, v).sum(), argnums=(0, 1, 2)), q, k, k)
    assert fwd.matmul == 0 and fwd.unknown_kernels == []
    assert fwd.kernels == dense.matmul * (0.75 if causal else 1.0)
    assert grad.kernels == pytest.approx(fwd.kernels * 11 / 2)
