"""The paged KV cache's allocator and its XLA reference path: a group's samples share the prompt's pages by
reference (page counts asserted), releasing one sample leaves the others intact, and what is written through
the page table reads back exactly as from a dense cache."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_o3_jax.rollout.pages import (
    NULL_PAGE,
    PagePool,
    PoolExhausted,
    copy_pages,
    gather_pages,
    write_pages,
)


def check_invariants(pool: PagePool) -> None:
    """Every page's count equals the table entries naming it; free pages are named by none; nothing is lost."""
    named = np.zeros((pool.partitions, pool.local_pages), np.int32)
    for slot in range(pool.slots):
        held = pool.table[slot, : pool.held[slot]]
        assert NULL_PAGE not in held
        np.add.at(named[pool.part(slot)], held, 1)
        assert (pool.table[slot, pool.held[slot]:] == NULL_PAGE).all()
    assert (named[:, 1:] == pool.refs[:, 1:]).all()
    for part, free_list in enumerate(pool._free):
        free = set(free_list)
        assert len(free) == len(free_list) and NULL_PAGE not in free
        assert all(pool.refs[part, p] == 0 for p in free)
    assert pool.used_pages == int((pool.refs[:, 1:] > 0).sum())


def test_a_group_shares_its_prompt_pages_and_one_release_leaves_the_others_intact():
    pool = PagePool(num_pages=200, page_size=16, slots=16, pages_per_slot=16)
    pool.reserve(0, 100)  # the prompt: 6 whole pages and 4 tokens on a 7th
    copies = [pool.fork(0, s, 100) for s in range(1, 16)]
    assert pool.used_pages == 7 + 15  # 6 shared pages once, plus one tail page per sample (112 unshared)
    assert all(len(c) == 1 and c[0][0] == pool.table[0, 6] for c in copies)
    assert (pool.refs[0, pool.table[0, :6]] == 16).all()
    for s in range(16):
        pool.reserve(s, 150)  # each sample's turns: 3 more pages of its own
    assert pool.used_pages == 22 + 16 * 3
    before = pool.table.copy()
    pool.release(5)
    assert (pool.refs[0, pool.table[0, :6]] == 15).all() and pool.used_pages == 22 + 16 * 3 - 4
    assert (pool.table[np.arange(16) != 5] == before[np.arange(16) != 5]).all()
    check_invariants(pool)
    for s in range(16):
        pool.release(s)
    assert pool.used_pages == 0 and pool.free_pages == 199
    check_invariants(pool)


def test_an_aligned_prompt_is_shared_whole_and_errors_name_the_limit():
    pool = PagePool(num_pages=9, page_size=8, slots=3, pages_per_slot=4)
    pool.reserve(0, 16)
    assert pool.fork(0, 1, 16) == [] and pool.used_pages == 2  # nothing to copy
    with pytest.raises(ValueError, match="40 tokens exceed its 32-token page table"):
        pool.reserve(0, 40)
    with pytest.raises(ValueError, match="still holds pages"):
        pool.fork(0, 1, 8)
    pool.reserve(2, 32)
    pool.reserve(1, 32)  # its 2 shared pages and 2 of its own: the last 2 free pages
    assert pool.free_pages == 0
    with pytest.raises(PoolExhausted, match="slot 0 needs 2 more pages, 0 free"):
        pool.reserve(0, 32)
    check_invariants(pool)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reserve", "fork", "release"]), st.integers(0, 3), st.integers(0, 3),
                          st.integers(1, 40)), max_size=40))
@pytest.mark.parametrize("partitions", [1, 2])
def test_random_reserve_fork_release_keep_the_counts_exact(partitions, ops):
    """One pool, or two partitions (one per device: slots 0-1 take pages of the first, 2-3 of the second)."""
    pool = PagePool(num_pages=24, page_size=4, slots=4, pages_per_slot=10, partitions=partitions)
    length = np.zeros(4, int)
    for op, a, b, n in ops:
        try:
            if op == "reserve":
                pool.reserve(a, max(n, length[a]))
                length[a] = max(n, length[a])
            elif op == "fork" and a != b and not pool.held[b] and length[a] and pool.part(a) != pool.part(b):
                with pytest.raises(ValueError, match="different partitions"):
                    pool.fork(a, b, min(n, length[a]))
            elif op == "fork" and a != b and not pool.held[b] and length[a]:
                pool.fork(a, b, min(n, length[a]))
                length[b] = min(n, length[a])
            elif op == "release":
                pool.release(a)
                length[a] = 0
        except PoolExhausted:
            pass
        check_invariants(pool)


def test_pages_read_back_as_a_dense_cache_including_a_forked_tail():
    rng = np.random.default_rng(0)
    page, kv, d, rows = 4, 2, 3, 3
    pool = PagePool(num_pages=32, page_size=page, slots=rows, pages_per_slot=6)
    pages = jnp.zeros((1, kv, pool.num_pages, page, d), jnp.float32)  # one layer
    dense = np.zeros((rows, pool.max_len, kv, d), np.float32)
    lengths = np.zeros(rows, int)
    for chunk in (5, 3, 7):  # ragged chunks: rows add 1..chunk tokens each, padding beyond
        adds = rng.integers(1, chunk + 1, rows)
        for r in range(rows):
            pool.reserve(r, lengths[r] + adds[r])
        pos = lengths[:, None] + np.arange(chunk)[None]
        real = np.arange(chunk)[None] < adds[:, None]
        vals = rng.standard_normal((rows, chunk, kv, d)).astype(np.float32)
        # padding goes past each row's pages: the null page, as the dense cache writes past the row's end
        padded = np.where(real, pos, pool.max_len + 1)
        pages = pages.at[0].set(write_pages(pages[0], jnp.asarray(pool.table), jnp.asarray(padded), jnp.asarray(vals)))
        for r in range(rows):
            dense[r, pos[r, real[r]]] = vals[r, real[r]]
        lengths += adds
    got = np.asarray(gather_pages(pages[0], jnp.asarray(pool.table), pool.max_len))
    for r in range(rows):
        assert np.array_equal(got[r, : lengths[r]], dense[r, : lengths[r]])
    # a fork shares row 0's whole pages and copies its partly filled last page
    pool.release(2)
    copies = pool.fork(0, 2, int(lengths[0]))
    if copies:
        src, dst = map(jnp.asarray, zip(*copies))
        pages = copy_pages(pages, src, dst)
    got = np.asarray(gather_pages(pages[0], jnp.asarray(pool.table), pool.max_len))
    assert np.array_equal(got[2, : lengths[0]], dense[0, : lengths[0]])
    with pytest.raises(ValueError, match="not a multiple of page size 4"):
        gather_pages(pages[0], jnp.asarray(pool.table), 6)


def test_the_xla_path_equals_jaxs_ragged_paged_attention_reference():
    """Mixed prefill and decode (queries are each sequence's last q_len tokens): our gather + `attention` equals
    the reference that JAX ships with its TPU ragged paged attention kernel, reading the same pages (its pool
    interleaves K and V heads: K at even, V at odd)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import ref_ragged_paged_attention

    from mini_o3_jax.model.attention import attention

    rng = np.random.default_rng(1)
    page, kv_heads, q_heads, d = 16, 2, 4, 128
    pool = PagePool(num_pages=16, page_size=page, slots=3, pages_per_slot=4)
    kv_lens, q_lens = np.array([37, 9, 64]), np.array([5, 1, 16])  # a prefill chunk, a decode step, a long chunk
    for s, n in enumerate(kv_lens):
        pool.reserve(s, int(n))
    k = jnp.asarray(rng.standard_normal((kv_heads, pool.num_pages, page, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((kv_heads, pool.num_pages, page, d)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((int(q_lens.sum()), q_heads, d)), jnp.float32)
    combined = jnp.stack([k, v], axis=-2).transpose(1, 2, 0, 3, 4).reshape(pool.num_pages, page, 2 * kv_heads, d)
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    want = ref_ragged_paged_attention(q, combined, jnp.asarray(kv_lens, jnp.int32), jnp.asarray(pool.table),
                                      jnp.asarray(cu), jnp.array([3], jnp.int32), sm_scale=d ** -0.5)
    table = jnp.asarray(pool.table)
    keys, values = gather_pages(k, table, pool.max_len), gather_pages(v, table, pool.max_len)
    kv_pos = np.broadcast_to(np.arange(pool.max_len), (3, pool.max_len))
    for s in range(3):
        q_pos = kv_lens[s] - q_lens[s] + np.arange(q_lens[s])
        got = attention(q[None, cu[s]:cu[s + 1]], keys[s:s + 1], values[s:s + 1],
                        jnp.ones((1, q_lens[s]), jnp.int32), jnp.asarray(kv_pos[s:s + 1] < kv_lens[s], jnp.int32),
                        jnp.asarray(q_pos[None], jnp.int32), jnp.asarray(kv_pos[s:s + 1], jnp.int32))
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[cu[s]:cu[s + 1]]), atol=2e-5, rtol=1e-5)


def test_the_pallas_gpu_decode_kernel_equals_the_xla_path():
    """One query token per sequence at the 7B's head layout (28 query heads on 4 kv heads, head_dim 128): the
    Pallas GPU paged attention kernel, interpreted on the CPU, reads the pages the table names and equals our
    gather + `attention` (ragged lengths, a sequence ending mid-page, one sharing another's first page)."""
    from mini_o3_jax.model.attention import attention
    from mini_o3_jax.model.attention_backends import paged_decode_attention

    rng = np.random.default_rng(2)
    page, kv_heads, q_heads, d = 16, 4, 28, 128
    pool = PagePool(num_pages=16, page_size=page, slots=3, pages_per_slot=4)
    lengths = np.array([37, 9, 64])
    pool.reserve(0, 37)
    pool.fork(0, 1, 9)  # slot 1 is slot 0's first 9 tokens: a copied partial page
    pool.reserve(2, 64)
    k = jnp.asarray(rng.standard_normal((kv_heads, pool.num_pages, page, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((kv_heads, pool.num_pages, page, d)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((3, 1, q_heads, d)), jnp.float32)
    table = jnp.asarray(pool.table)
    got = paged_decode_attention(q, k, v, table, jnp.asarray(lengths, jnp.int32), scale=d ** -0.5, interpret=True)
    kv_pos = np.broadcast_to(np.arange(pool.max_len), (3, pool.max_len))
    want = attention(q, gather_pages(k, table, pool.max_len), gather_pages(v, table, pool.max_len),
                     jnp.ones((3, 1), jnp.int32), jnp.asarray(kv_pos < lengths[:, None], jnp.int32),
                     jnp.asarray(lengths[:, None] - 1, jnp.int32), jnp.asarray(kv_pos, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_the_pallas_tpu_prefix_kernel_merged_with_the_chunk_equals_the_xla_path():
    """A decode step (one token per sequence) at the 7B's head layout (28 query heads on 4 kv heads, head_dim 128) against
    layer 1 of a stacked pool: the Pallas TPU kernel over the cached pages (interpreted), merged by log-sum-exp
    with the chunk's own causal attention, equals `attention` over the gathered pages and the chunk (ragged
    lengths: nothing cached, a page boundary, mid-page, several DMA blocks; a shared page; a padding row). The
    model's extend through the kernel: tests/test_paged_model.py."""
    from mini_o3_jax.model.attention import attention
    from mini_o3_jax.model.paged_kernel import chunk_attention, merge, paged_prefix_attention

    rng = np.random.default_rng(3)
    page, kv_heads, q_heads, d, c = 16, 4, 28, 128, 1
    pool = PagePool(num_pages=24, page_size=page, slots=4, pages_per_slot=6)
    lengths = np.array([37, 16, 0, 90])
    pool.reserve(0, 37 + c)
    pool.fork(0, 1, 16)
    pool.reserve(1, 16 + c)
    pool.reserve(2, c)
    pool.reserve(3, 90 + c)
    k = jnp.asarray(rng.standard_normal((2, kv_heads, pool.num_pages, page, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, kv_heads, pool.num_pages, page, d)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((4, c, q_heads, d)), jnp.float32)
    kc = jnp.asarray(rng.standard_normal((4, c, kv_heads, d)), jnp.float32)
    vc = jnp.asarray(rng.standard_normal((4, c, kv_heads, d)), jnp.float32)
    valid = np.ones((4, c), bool)
    valid[2, 0] = False
    table, starts = jnp.asarray(pool.table), jnp.asarray(lengths, jnp.int32)
    old = paged_prefix_attention(q, k, v, jnp.int32(1), table, starts, scale=d ** -0.5, pages_per_block=2,
                                 interpret=True)
    q_pos = lengths[:, None] + np.arange(c)[None]
    got = merge([old, chunk_attention(q, kc, vc, jnp.asarray(valid), jnp.asarray(q_pos, jnp.int32))])
    assert float(jnp.abs(old[0][2]).max()) == 0 and bool(jnp.isneginf(old[1][2]).all())
    n = pool.max_len
    kv_pos = np.broadcast_to(np.arange(n), (4, n))
    want = attention(q, jnp.concatenate([gather_pages(k[1], table, n), kc], 1),
                     jnp.concatenate([gather_pages(v[1], table, n), vc], 1), jnp.asarray(valid, jnp.int32),
                     jnp.asarray(np.concatenate([kv_pos < lengths[:, None], valid], 1), jnp.int32),
                     jnp.asarray(q_pos, jnp.int32), jnp.asarray(np.concatenate([kv_pos, q_pos], 1), jnp.int32))
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 19])
def test_write_chunk_puts_every_layers_tokens_where_the_table_says(chunk):
    """The model's write after the layer loop (dynamic-update-slices: a decode step's one token per row, or a chunk
    page by page over a page boundary) equals writing each layer token by token; other pages are untouched."""
    from mini_o3_jax.model.paged_cache import write_chunk

    rng = np.random.default_rng(chunk)
    layers, page, kv, d, rows = 2, 4, 2, 3, 3
    pool = PagePool(num_pages=40, page_size=page, slots=rows, pages_per_slot=10)
    starts = np.array([0, 5, 14])
    for r in range(rows):
        pool.reserve(r, int(starts[r]) + chunk)
    before = rng.standard_normal((layers, kv, pool.num_pages, page, d)).astype(np.float32)
    values = rng.standard_normal((layers, rows, chunk, kv, d)).astype(np.float32)
    positions = starts[:, None] + np.arange(chunk)[None]
    got = np.asarray(write_chunk(jnp.asarray(before), jnp.asarray(pool.table), jnp.asarray(positions, jnp.int32),
                                 jnp.asarray(values)))
    want = before.copy()
    for r in range(rows):
        for c, t in enumerate(positions[r]):
            want[:, :, pool.table[r, t // page], t % page] = values[:, r, c]
    np.testing.assert_array_equal(got, want)
