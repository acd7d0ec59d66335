"""Reading and writing a paged KV cache through a page table (the XLA path; `rollout/pages.py` allocates).

A layer's pool holds fixed-size pages heads-major, (kv_heads, num_pages, page_size, head_dim): the layout the
Pallas GPU paged attention kernel reads, and one whose kv-head axis shards over the tensor mesh axis like the
attention weights. A sequence's page-table row names the pages that hold its tokens in order, token t at page
`row[t // page_size]`, offset `t % page_size`. Page 0 is the null page: table entries past a sequence's pages
name it, and positions past the table write there. It is never read unmasked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NULL_PAGE = 0


def page_index(table: jax.Array, positions: jax.Array, page_size: int) -> tuple[jax.Array, jax.Array]:
    """(page, offset) of token `positions` (B, C) of the sequences whose rows are `table` (B, n)."""
    index = positions // page_size
    page = jnp.take_along_axis(table, jnp.clip(index, 0, table.shape[1] - 1), axis=1)
    return jnp.where((index >= 0) & (index < table.shape[1]), page, NULL_PAGE), positions % page_size


def table_rows(table: jax.Array, rows: jax.Array) -> jax.Array:
    """`table[rows]`, with rows past the table (a batch's padding rows) reading as all null pages."""
    return jnp.take(table, rows, axis=0, mode="fill", fill_value=NULL_PAGE)


def write_pages(pages: jax.Array, table: jax.Array, positions: jax.Array, values: jax.Array) -> jax.Array:
    """Scatter `values` (B, C, kv_heads, head_dim) at token `positions` (B, C) of the sequences whose page-table
    rows are `table` (B, n) into one layer's `pages` (kv_heads, num_pages, page_size, head_dim). Positions past a
    row's table write to the null page."""
    page, offset = page_index(table, positions, pages.shape[2])
    return pages.at[:, page, offset].set(jnp.moveaxis(values, 2, 0).astype(pages.dtype))


def write_layer(pool: jax.Array, layer: jax.Array | int, table: jax.Array, positions: jax.Array,
                values: jax.Array) -> jax.Array:
    """`write_pages` into layer `layer` of a stacked `pool` (layers, kv_heads, num_pages, page_size, head_dim), in
    place (slicing the layer out and back would copy it)."""
    page, offset = page_index(table, positions, pool.shape[3])
    return pool.at[layer, :, page, offset].set(values.astype(pool.dtype))


def write_chunk(pool: jax.Array, table: jax.Array, positions: jax.Array, values: jax.Array) -> jax.Array:
    """`values` (layers, B, C, kv_heads, head_dim) of every layer at `positions` (B, C; each row's consecutive, from
    positions[:, 0]) into a stacked `pool` (layers, kv_heads, num_pages, page_size, head_dim), after the layer loop,
    with dynamic-update-slices only: one per row for a decode step (C == 1), one per page a chunk touches otherwise.
    Scatters made the TPU compiler keep a second copy of the whole pool (inside the decode loop; at the top level
    from ~1K updates on; and writes inside the layer loop did too): `mini-o3 plan --rollout` measures it."""
    values = values.astype(pool.dtype)
    if positions.shape[1] > 1:
        return _write_blocks(pool, table, positions[:, 0], values)
    page, offset = page_index(table, positions, pool.shape[3])
    for b in range(values.shape[1]):
        pool = jax.lax.dynamic_update_slice(pool, values[:, b, 0][:, :, None, None, :],
                                            (0, 0, page[b, 0], offset[b, 0], 0))
    return pool


def _write_blocks(pool: jax.Array, table: jax.Array, starts: jax.Array, values: jax.Array) -> jax.Array:
    """Row b's chunk values[:, b] (C tokens from position starts[b]) page by page: read the page, put the chunk's
    tokens over their offsets, write it back (a fori_loop of in-place updates over rows x pages touched)."""
    layers, heads, _, page_size, dim = pool.shape
    b, c = values.shape[1], values.shape[2]
    blocks = (c + page_size - 2) // page_size + 1  # the most pages a C-token run can touch
    offsets = jnp.arange(page_size)

    def one(k, pool):
        row, j = k // blocks, k % blocks
        index = starts[row] // page_size + j
        page = jnp.where(index < table.shape[1], table[row, jnp.minimum(index, table.shape[1] - 1)], NULL_PAGE)
        t = index * page_size + offsets - starts[row]  # the chunk token at each offset of this page
        keep = (t < 0) | (t >= c)
        new = jnp.moveaxis(jnp.take(values[:, row], jnp.clip(t, 0, c - 1), axis=1), 2, 1)  # (layers, heads, page, d)
        old = jax.lax.dynamic_slice(pool, (0, 0, page, 0, 0), (layers, heads, 1, page_size, dim))[:, :, 0]
        block = jnp.where(keep[None, None, :, None], old, new)
        return jax.lax.dynamic_update_slice(pool, block[:, :, None], (0, 0, page, 0, 0))

    return jax.lax.fori_loop(0, b * blocks, one, pool)


def gather_pages(pages: jax.Array, table: jax.Array, kv_len: int, layer: jax.Array | int | None = None) -> jax.Array:
    """The first `kv_len` token positions (a multiple of the page size) of each row of `table` (B, n), from one
    layer's `pages` (kv_heads, num_pages, page_size, head_dim), or from layer `layer` of a stacked pool (one gather
    from the whole pool: slicing the layer out first would copy it): (B, kv_len, kv_heads, head_dim), the dense
    layout `attention` reads."""
    page_size = pages.shape[-2]
    if kv_len % page_size or kv_len // page_size > table.shape[1]:
        raise ValueError(f"kv_len {kv_len}: not a multiple of page size {page_size} within {table.shape[1]} pages")
    rows = table[:, : kv_len // page_size]
    if layer is None:
        picked = jnp.moveaxis(pages[:, rows], 0, 3)  # (kv_heads, B, n, page, d) -> (B, n, page, kv_heads, d)
    else:
        picked = jnp.moveaxis(pages[layer, :, rows], 2, 3)  # (B, n, kv_heads, page, d) -> (B, n, page, kv_heads, d)
    return picked.reshape(table.shape[0], kv_len, *picked.shape[3:])
