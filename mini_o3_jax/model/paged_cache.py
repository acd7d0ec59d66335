"""Reading and writing a paged KV cache through a page table (the XLA path; `rollout/pages.py` allocates).

A pool holds fixed-size pages (num_pages, page_size, ...); a sequence's page-table row names the pages that
hold its tokens in order, token t at page `row[t // page_size]`, offset `t % page_size`. Page 0 is the null
page: table entries past a sequence's pages name it, and positions past the table write there. It is never
read unmasked.
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


def write_pages(pages: jax.Array, table: jax.Array, positions: jax.Array, values: jax.Array,
                layer: jax.Array | int | None = None) -> jax.Array:
    """Scatter `values` (B, C, ...) at token `positions` (B, C) of the sequences whose page-table rows are
    `table` (B, n) into `pages` (num_pages, page_size, ...), or into `pages[layer]` of a per-layer pool. Positions
    past a row's table write to the null page."""
    lead = () if layer is None else (layer,)
    page, offset = page_index(table, positions, pages.shape[len(lead) + 1])
    return pages.at[(*lead, page, offset)].set(values.astype(pages.dtype))


def gather_pages(pages: jax.Array, table: jax.Array, kv_len: int) -> jax.Array:
    """The first `kv_len` token positions (a multiple of the page size) of each row of `table` (B, n), from
    `pages` (num_pages, page_size, ...): (B, kv_len, ...), the dense layout `attention` reads."""
    page_size = pages.shape[1]
    if kv_len % page_size or kv_len // page_size > table.shape[1]:
        raise ValueError(f"kv_len {kv_len}: not a multiple of page size {page_size} within {table.shape[1]} pages")
    picked = pages[table[:, : kv_len // page_size]]  # (B, n, page_size, ...)
    return picked.reshape(table.shape[0], kv_len, *pages.shape[2:])
