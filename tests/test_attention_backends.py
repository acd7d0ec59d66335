"""The fused attention backends equal the XLA reference path: the TPU splash kernel run by the Pallas
interpreter on the CPU, and the GPU path's `jax.nn.dot_product_attention` call (its XLA implementation;
the cuDNN kernel itself needs a GPU: bench/gpu.py). fp32, forward <= 1e-5, gradients <= 1e-4."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model import attention_backends as backends
from mini_o3_jax.model.attention import attention
from tests.helpers import run_on_devices


def inputs(b, length, h, kvh, d, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, length, n, d)), jnp.float32) for n in (h, kvh, kvh))
    return q, k, v, jnp.asarray(rng.normal(size=(b, length, h, d)), jnp.float32)


def ragged_segments(b, length, packed: bool):
    """Row r: real tokens then padding (segment 0); `packed`: two sequences (segments 1, 2) in a row."""
    seg = np.zeros((b, length), np.int32)
    for r in range(b):
        n = length - 37 * r - 5
        seg[r, :n] = 1
        if packed:
            seg[r, n // 3:n] = 2
    return jnp.asarray(seg)


def reference(q, k, v, seg, causal):
    pos = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), seg.shape) if causal else None
    return attention(q, k, v, seg, seg, pos, pos)  # the XLA path (no backend context: CPU -> xla)


def splash(q, k, v, seg, causal):
    scale = q.shape[-1] ** -0.5
    return backends.splash_attention(q, k, v, seg, seg, causal=causal, scale=scale, interpret=True)


def grads(fn, q, k, v, seg, causal, cot):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, seg, causal) * cot), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("causal,packed,h,kvh,d", [
    (True, False, 4, 2, 64),  # decoder: GQA, padded rows
    (True, True, 4, 1, 128),  # decoder: two sequences packed per row, MQA
    (False, True, 2, 2, 80),  # ViT full attention: images as segments, head_dim 80 padded to 128
])
def test_splash_kernel_equals_the_xla_path(causal, packed, h, kvh, d):
    q, k, v, cot = inputs(2, 256, h, kvh, d)
    seg = ragged_segments(2, 256, packed)
    got, want = splash(q, k, v, seg, causal), reference(q, k, v, seg, causal)
    assert float(jnp.abs(want).max()) > 0.1
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    for g, w in zip(grads(splash, q, k, v, seg, causal, cot), grads(reference, q, k, v, seg, causal, cot)):
        assert float(jnp.abs(w).max()) > 1e-3
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=0)


def test_attention_dispatches_to_the_backend_where_it_applies():
    q, k, v, _ = inputs(2, 128, 4, 2, 64, seed=1)
    seg = ragged_segments(2, 128, packed=True)
    pos = jnp.broadcast_to(jnp.arange(128, dtype=jnp.int32), seg.shape)
    with backends.attention_backend("splash", interpret=True):
        assert backends.resolve() == "splash"
        via = attention(q, k, v, seg, seg, pos, pos, causal=True)
        cache = attention(q, k, v, seg, seg, pos, pos)  # not promised whole rows: stays on XLA
        short = attention(q[:, :100], k[:, :100], v[:, :100], seg[:, :100], seg[:, :100], pos[:, :100],
                          pos[:, :100], causal=True)  # not a multiple of 128: XLA
    np.testing.assert_array_equal(np.asarray(via), np.asarray(splash(q, k, v, seg, True)))
    xla = attention(q, k, v, seg, seg, pos, pos)
    np.testing.assert_array_equal(np.asarray(cache), np.asarray(xla))
    assert not np.array_equal(np.asarray(via), np.asarray(xla))  # the kernel really ran (other rounding)
    np.testing.assert_array_equal(np.asarray(short), np.asarray(
        attention(q[:, :100], k[:, :100], v[:, :100], seg[:, :100], seg[:, :100], pos[:, :100], pos[:, :100])))
    assert backends.resolve("tpu") == "splash" and backends.resolve("gpu") == "cudnn"
    assert backends.resolve("cpu") == "xla"
    with pytest.raises(ConfigError, match="attention backend 'flash'"), backends.attention_backend("flash"):
        pass


def test_gpu_call_equals_the_xla_path_on_one_sequence_rows():
    """The cuDNN path's call (causal, per-row key lengths) with XLA's implementation: the same attention as
    ours on every real token of rows laid out as one sequence then padding (every training row)."""
    q, k, v, cot = inputs(3, 192, 4, 2, 64, seed=2)
    seg = ragged_segments(3, 192, packed=False)
    real = np.asarray(seg) > 0

    def gpu(q, k, v, seg, causal):
        out = backends.cudnn_attention(q, k, v, seg, scale=q.shape[-1] ** -0.5, implementation="xla")
        return out * (seg > 0)[:, :, None, None]  # padding rows: not compared

    def ours(q, k, v, seg, causal):
        return reference(q, k, v, seg, True) * (seg > 0)[:, :, None, None]

    np.testing.assert_allclose(np.asarray(gpu(q, k, v, seg, True))[real], np.asarray(ours(q, k, v, seg, True))[real],
                               atol=1e-5, rtol=0)
    for g, w in zip(grads(gpu, q, k, v, seg, True, cot), grads(ours, q, k, v, seg, True, cot)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=0)


SHARDED = r'''
import json
import jax, jax.numpy as jnp
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.parallel.rules import DEFAULT_RULES, activation_sharding
from mini_o3_jax.model import attention_backends as backends
from mini_o3_jax.model.attention import attention
from tests.test_attention_backends import inputs, ragged_segments, reference
mesh = make_mesh({"fsdp": 4, "tensor": 2})
q, k, v, cot = inputs(4, 256, 4, 2, 64)
seg = ragged_segments(4, 256, True)
pos = jnp.broadcast_to(jnp.arange(256, dtype=jnp.int32), seg.shape)
f = lambda q, k, v: attention(q, k, v, seg, seg, pos, pos, causal=True)
with activation_sharding(mesh, DEFAULT_RULES), backends.attention_backend("splash", interpret=True):
    text = jax.jit(f).lower(q, k, v).as_text()
    out = jax.jit(f)(q, k, v)
    g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * cot), argnums=(0, 1, 2)))(q, k, v)
gw = jax.grad(lambda q, k, v: jnp.sum(reference(q, k, v, seg, True) * cot), argnums=(0, 1, 2))(q, k, v)
print("RESULT " + json.dumps({"manual": "shard_map" in text or "sdy.manual_computation" in text,
                              "fwd": float(jnp.abs(out - reference(q, k, v, seg, True)).max()),
                              "grad": max(float(jnp.abs(a - b).max()) for a, b in zip(g, gw))}))
'''


def test_splash_under_a_mesh_runs_per_shard_and_equals_the_xla_path():
    """Mosaic kernels are not partitioned by XLA: under a (fsdp 4, tensor 2) mesh the kernel runs in shard_map,
    rows over fsdp and kv heads over tensor, and still equals the reference (8 simulated devices)."""
    got = run_on_devices(SHARDED)
    assert got["manual"] is True
    assert got["fwd"] <= 1e-5 and got["grad"] <= 1e-4, got
