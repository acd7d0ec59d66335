"""The model's cached forward through a page table equals it over the dense cache: a ragged prefill of three
slots, a fork of one slot's prefix (whole pages shared, the partly filled last page copied), then decode
steps of every slot, compared hidden state for hidden state and key for key; then a decode step through the
Pallas GPU paged attention kernel, and an extend through the Pallas TPU prefix kernel (both interpreted)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mini_o3_jax.model.presets import model_config
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.rollout.cache import copy_slots, init_cache
from mini_o3_jax.rollout.pages import PagePool, copy_pages, gather_pages


def text_inputs(ids: np.ndarray, starts: np.ndarray, valid: np.ndarray) -> TextInputs:
    """A text-only chunk continuing each row at `starts` (rope delta 0)."""
    pos = starts[:, None] + np.arange(ids.shape[1])[None]
    return TextInputs(input_ids=jnp.asarray(ids), positions=jnp.asarray(np.broadcast_to(pos, (3, *pos.shape))),
                      segment_ids=jnp.asarray(valid.astype(np.int32)),
                      image_rows=jnp.full(ids.shape, -1, jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef", "kv_len"))
def cached(graphdef, state, chunk, k, v, starts, rows=None, kv_len=None, table=None):
    return nnx.merge(graphdef, state).cached(chunk, None, k, v, starts, rows, kv_len, table)


def through_kernel(backend, graphdef, state, step, pk, pv, starts, table, kv_len):
    """`cached` over the page pools with `backend`'s Pallas kernel (interpreted), asserted to be in the program."""
    from mini_o3_jax.model.attention_backends import attention_backend

    with attention_backend(backend, interpret=True):
        run = functools.partial(cached.__wrapped__, graphdef, kv_len=kv_len)
        assert "pallas_call" in str(jax.make_jaxpr(run)(state, step, pk, pv, starts, table=table))
        return run(state, step, pk, pv, starts, table=table)


def test_paged_prefill_fork_and_decode_equal_the_dense_cache():
    cfg = model_config("tiny")
    graphdef, state = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32))
    text = cfg.text
    rng = np.random.default_rng(0)
    slots, max_len, page = 4, 64, 8
    dense = init_cache(text, slots=slots, max_len=max_len, dtype=jnp.float32)
    dk, dv = dense.k, dense.v
    pool = PagePool(num_pages=40, page_size=page, slots=slots, pages_per_slot=max_len // page)
    shape = (text.num_hidden_layers, text.num_key_value_heads, pool.num_pages, page, text.head_dim)
    pk, pv = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)

    # prefill slots 0..2 with ragged prompts (13, 8, 21 tokens) in one padded chunk
    lengths = np.array([13, 8, 21, 0])
    rows = np.array([0, 1, 2])
    ids = rng.integers(0, text.vocab_size, (3, 21))
    valid = np.arange(21)[None] < lengths[rows, None]
    for r in rows:
        pool.reserve(int(r), int(lengths[r]))
    chunk = text_inputs(ids, np.zeros(3, int), valid)
    hd, dk, dv = cached(graphdef, state, chunk, dk, dv, jnp.zeros(3, jnp.int32), jnp.asarray(rows))
    hp, pk, pv = cached(graphdef, state, chunk, pk, pv, jnp.zeros(3, jnp.int32), jnp.asarray(rows),
                        table=jnp.asarray(pool.table))
    np.testing.assert_allclose(np.asarray(hp)[valid], np.asarray(hd)[valid], atol=1e-6)

    # slot 3 continues slot 2's prompt: dense copies the row, paged shares 2 pages and copies the third
    dense = copy_slots(dense._replace(k=dk, v=dv, length=jnp.asarray(lengths, jnp.int32)), jnp.array([2]),
                       jnp.array([3]))
    dk, dv = dense.k, dense.v
    copies = pool.fork(2, 3, 21)
    assert pool.used_pages == 2 + 1 + 3 + 1 and len(copies) == 1
    src, dst = (jnp.asarray(x) for x in zip(*copies))
    pk, pv = copy_pages(pk, src, dst), copy_pages(pv, src, dst)
    lengths[3] = 21

    # decode 6 tokens for every slot, reading a kv window of 40 positions (slot 3's tail page fills up)
    for _ in range(6):
        for s in range(slots):
            pool.reserve(s, int(lengths[s]) + 1)
        tok = rng.integers(0, text.vocab_size, (slots, 1))
        step = text_inputs(tok, lengths, np.ones((slots, 1), bool))
        starts = jnp.asarray(lengths, jnp.int32)
        hd, dk, dv = cached(graphdef, state, step, dk, dv, starts, kv_len=40)
        hp, pk, pv = cached(graphdef, state, step, pk, pv, starts, kv_len=40, table=jnp.asarray(pool.table))
        np.testing.assert_allclose(np.asarray(hp), np.asarray(hd), atol=1e-6)
        lengths += 1
    # the caches hold the same keys and values, layer by layer, up to each slot's length
    table = jnp.asarray(pool.table)
    for layer in range(text.num_hidden_layers):
        for paged, rows_ in ((pk, dk), (pv, dv)):
            got = np.asarray(gather_pages(paged[layer], table, max_len))
            for s in range(slots):
                np.testing.assert_allclose(got[s, : lengths[s]], np.asarray(rows_[layer, s, : lengths[s]]), atol=1e-5)
    # the same step with the Pallas GPU paged decode kernel (interpreted) reading the pages in every layer
    tok = rng.integers(0, text.vocab_size, (slots, 1))
    step = text_inputs(tok, lengths, np.ones((slots, 1), bool))
    starts = jnp.asarray(lengths, jnp.int32)
    hd, dk, dv = cached(graphdef, state, step, dk, dv, starts, kv_len=40)
    hp, pk, pv = through_kernel("pallas_gpu", graphdef, state, step, pk, pv, starts, jnp.asarray(pool.table), 40)
    np.testing.assert_allclose(np.asarray(hp), np.asarray(hd), atol=1e-5)
    lengths += 1
    # a ragged extend (5, 2, 5 and no tokens) with the Pallas TPU prefix kernel (interpreted) reading each layer's
    # filled pages from the stacked pool, the chunk's own causal attention merged in (decode: tests/test_pages.py)
    n_new = np.array([5, 2, 5, 0])
    for s in range(slots):
        pool.reserve(s, int(lengths[s] + n_new[s]))
    valid = np.arange(n_new.max())[None] < n_new[:, None]
    step = text_inputs(rng.integers(0, text.vocab_size, valid.shape), lengths, valid)
    starts = jnp.asarray(lengths, jnp.int32)
    hd, dk, dv = cached(graphdef, state, step, dk, dv, starts, kv_len=48)
    hp, pk, pv = through_kernel("splash", graphdef, state, step, pk, pv, starts, jnp.asarray(pool.table), 48)
    np.testing.assert_allclose(np.asarray(hp)[valid], np.asarray(hd)[valid], atol=1e-5)
    lengths += n_new
    table = jnp.asarray(pool.table)
    for s in range(slots):
        got = np.asarray(gather_pages(pk[1], table, max_len))[s, : lengths[s]]
        np.testing.assert_allclose(got, np.asarray(dk[1, s, : lengths[s]]), atol=1e-5)
    # slots 2 and 3 share their prompt's first two pages; their continuations differ
    assert (pool.table[2, :2] == pool.table[3, :2]).all() and pool.table[2, 2] != pool.table[3, 2]


def test_decode_and_extend_over_a_page_pool_keep_no_second_pool_on_cpu():
    """XLA:CPU (the `xla` attention backend) once copied the whole pool twice per decoded token: the layers read
    the old pool and the keys were written after the loop, so the write could not be in place (a 4-layer toy's
    rollout ran at ~90 ms a token step for 64 slots over a 512 MB pool). Each layer now writes its keys into the
    pool and reads them back, as the dense cache does: the compiled decode loop and extend hold no pool-sized
    temporary."""
    cfg = model_config("tiny")
    for unroll in (False, True):  # a scan over the layers, and straight-line layers (the toy demo's)
        graphdef, state = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32, unroll=unroll))
        _assert_no_pool_copy(cfg, graphdef, state)


def _assert_no_pool_copy(cfg, graphdef, state):
    from mini_o3_jax.rollout.cache import init_paged_cache
    from mini_o3_jax.rollout.sampler import Sampling, decode, extend

    slots, page, per_slot = 32, 64, 512  # 32K tokens a slot: a pool far larger than the step's own temporaries
    cache = jax.eval_shape(lambda: init_paged_cache(cfg.text, slots, slots * per_slot + 1, page, per_slot,
                                                    jnp.float32))  # compiled, never allocated
    pool_bytes = cache.k.size * cache.k.dtype.itemsize
    assert pool_bytes > 2**28
    keys = jax.random.split(jax.random.key(0), slots)
    n = np.full(slots, 1, np.int32)
    args = (graphdef, state, cache, jnp.zeros(slots, jnp.int32), jnp.ones(slots, bool), jnp.asarray(n * 8),
            jnp.asarray([1, 2], jnp.int32), keys, Sampling(), 8)
    temp = decode.lower(*args, kv_len=128).compile().memory_analysis().temp_size_in_bytes
    assert temp < pool_bytes / 2, (temp, pool_bytes)
    ids = np.ones((slots, 16), np.int32)
    chunk = text_inputs(ids, np.zeros(slots, np.int64), np.ones_like(ids, bool))
    temp = extend.lower(graphdef, state, cache, chunk, None, jnp.arange(slots), jnp.zeros(slots, jnp.int32), keys,
                        Sampling(), kv_len=128).compile().memory_analysis().temp_size_in_bytes
    assert temp < pool_bytes / 2, (temp, pool_bytes)
