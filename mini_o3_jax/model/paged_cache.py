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


def write_pages(pages: jax.Array, table: jax.Array, positions: jax.Array, values: jax.Array,
                layer: jax.Array | int | None = None) -> jax.Array:
    """Scatter `values` (B, C, kv_heads, head_dim) at token `positions` (B, C) of the sequences whose page-table
    rows are `table` (B, n) into `pages` (kv_heads, num_pages, page_size, head_dim), or into `pages[layer]` of a
    per-layer pool. Positions past a row's table write to the null page."""
    lead = 0 if layer is None else 1
    page, offset = page_index(table, positions, pages.shape[lead + 2])
    values = values.astype(pages.dtype)
    if layer is None:  # pages[:, page, offset] puts the (B, C) index dims after the head axis
        return pages.at[:, page, offset].set(jnp.moveaxis(values, 2, 0))
    layer = jnp.broadcast_to(jnp.asarray(layer, jnp.int32), page.shape)
    return pages.at[layer, :, page, offset].set(values)  # index dims first: (B, C, kv_heads, head_dim)


def gather_pages(pages: jax.Array, table: jax.Array, kv_len: int) -> jax.Array:
    """The first `kv_len` token positions (a multiple of the page size) of each row of `table` (B, n), from
    `pages` (kv_heads, num_pages, page_size, head_dim): (B, kv_len, kv_heads, head_dim), the dense layout
    `attention` reads."""
    heads, _, page_size, head_dim = pages.shape
    if kv_len % page_size or kv_len // page_size > table.shape[1]:
        raise ValueError(f"kv_len {kv_len}: not a multiple of page size {page_size} within {table.shape[1]} pages")
    picked = pages[:, table[:, : kv_len // page_size]]  # (kv_heads, B, n, page_size, head_dim)
    return jnp.moveaxis(picked.reshape(heads, table.shape[0], kv_len, head_dim), 0, 2)
