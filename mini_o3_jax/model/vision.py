"""The Qwen2.5-VL vision tower: patch embed, 2-D rotary, window/full attention blocks, merger.

Input rows arrive in the padded-window layout built on the host (processing/positions.py), so the
tower is a pure function of fixed-shape arrays. Window blocks attend inside each 64-row window;
the `fullatt_block_indexes` blocks attend within each image (segment ids), reading only the windows
of the image (`VisionInputs.band` from `window_first`), a few windows per call: a batch of many images
costs O(P * band) time and O(band) memory per call, not O(P^2).
Blocks are stacked and scanned; which kind a block is comes in as scanned data, so both share one
compiled body. With remat "full" a deep tower is also checkpointed in groups of blocks (`_remat_groups`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mini_o3_jax.model.attention import attention
from mini_o3_jax.model.config import VisionConfig
from mini_o3_jax.model.layers import apply_rotary, dense, param, rms_norm, vision_rotary
from mini_o3_jax.parallel.rules import active_sharding, batch_ways, constrain

PATCHES = ("act_patches", "act_embed")  # logical axes of the (P, D) ViT residual stream
BLOCK_KIND_SCOPE = "vit_window_or_full"  # name scope of the per-block choice between window and full attention


class VisionInputs(NamedTuple):
    """Padded-window layout of all images of a batch (see processing/positions.VisionLayout)."""

    pixels: jax.Array  # (P, patch_dim) float
    pos_hw: jax.Array  # (P, 2) int32
    window_seg: jax.Array  # (P,) int32, 1 real / 0 pad
    image_seg: jax.Array  # (P,) int32, 1 + image index / 0 pad
    # (R,) int32 window offsets 0..R-1 with R >= the most windows one image spans (an image's windows are
    # consecutive): full attention of window w reads windows window_first[w] + band only
    band: jax.Array
    # (rows, P / window_patches / rows) int32: the first window of each window's image, counted from its row's
    # first window; rows = 1 (all images packed) or the text rows (`positions.row_layouts`)
    window_first: jax.Array


class VisionBlocks(nnx.Module):
    """All ViT blocks, parameters stacked on a leading `layers` axis."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs | None):
        n, d, f, h, hd = cfg.depth, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
        self.norm1 = param(rngs, (n, d), ("layers", "vision_embed"), dtype, "ones")
        self.qkv = param(rngs, (n, d, 3, h, hd), ("layers", "vision_embed", None, "vision_heads", "head_dim"), dtype)
        self.qkv_bias = param(rngs, (n, 3, h, hd), ("layers", None, "vision_heads", "head_dim"), dtype, "zeros")
        self.proj = param(rngs, (n, h, hd, d), ("layers", "vision_heads", "head_dim", "vision_embed"), dtype)
        self.proj_bias = param(rngs, (n, d), ("layers", "vision_embed"), dtype, "zeros")
        self.norm2 = param(rngs, (n, d), ("layers", "vision_embed"), dtype, "ones")
        self.gate = param(rngs, (n, d, f), ("layers", "vision_embed", "vision_mlp"), dtype)
        self.gate_bias = param(rngs, (n, f), ("layers", "vision_mlp"), dtype, "zeros")
        self.up = param(rngs, (n, d, f), ("layers", "vision_embed", "vision_mlp"), dtype)
        self.up_bias = param(rngs, (n, f), ("layers", "vision_mlp"), dtype, "zeros")
        self.down = param(rngs, (n, f, d), ("layers", "vision_mlp", "vision_embed"), dtype)
        self.down_bias = param(rngs, (n, d), ("layers", "vision_embed"), dtype, "zeros")


class PatchMerger(nnx.Module):
    """RMSNorm per patch, then each 2x2 block (4 consecutive rows) through a GELU MLP."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs | None):
        d, u, o = cfg.hidden_size, cfg.merge_unit, cfg.out_hidden_size
        self.norm = param(rngs, (d,), ("vision_embed",), dtype, "ones")
        self.fc1 = param(rngs, (u * d, u * d), ("merger_in", "merger_hidden"), dtype)
        self.fc1_bias = param(rngs, (u * d,), ("merger_hidden",), dtype, "zeros")
        self.fc2 = param(rngs, (u * d, o), ("merger_hidden", "embed"), dtype)
        self.fc2_bias = param(rngs, (o,), ("embed",), dtype, "zeros")

    def __call__(self, x: jax.Array, eps: float, unit: int) -> jax.Array:
        x = rms_norm(x, self.norm[...], eps)
        x = x.reshape(x.shape[0] // unit, unit * x.shape[1])
        x = dense(x, self.fc1[...], "nc,ch->nh", self.fc1_bias[...])
        x = jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)  # exact erf GELU
        return dense(x, self.fc2[...], "nh,ho->no", self.fc2_bias[...])


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs | None, remat: str = "none",
                 unroll: bool = False):
        self.cfg = cfg
        self.remat = remat
        self.unroll = unroll
        self.patch_embed = param(rngs, (cfg.patch_dim, cfg.hidden_size), ("patch", "vision_embed"), dtype)
        self.blocks = VisionBlocks(cfg, dtype=dtype, rngs=rngs)
        self.merger = PatchMerger(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, inputs: VisionInputs) -> jax.Array:
        """(P, patch_dim) pixel rows -> (P / merge_unit, out_hidden_size) merged features."""
        cfg = self.cfg
        dtype = self.patch_embed.dtype
        win = cfg.window_patches
        x = dense(inputs.pixels.astype(dtype), self.patch_embed[...], "nc,cd->nd")
        cos, sin = vision_rotary(inputs.pos_hw, cfg.head_dim, cfg.rope_theta)
        cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
        p = x.shape[0]
        # rows: the layout's sequences (`positions.row_layouts`; 1 = all images packed together). Full attention
        # indexes only its own row's windows, as gathers batched over rows, so rows split over devices stay put.
        rows = inputs.window_first.shape[0]
        n_win, n_band = p // win, inputs.band.shape[0]
        n_row = n_win // rows
        wseg = jnp.asarray(inputs.window_seg).reshape(n_win, win)
        iseg = jnp.asarray(inputs.image_seg).reshape(rows, n_row, win)
        first = jnp.asarray(inputs.window_first)
        band = jnp.asarray(inputs.band)
        # full attention reads, for each window, the band of windows from its image's first (one big image:
        # all of them), `per_call` windows of every row at a time
        banded = n_band < n_row
        per_call = _windows_per_call(n_row, n_band * win * _local_rows(rows))
        is_full = jnp.zeros((cfg.depth,), bool).at[jnp.asarray(cfg.fullatt_block_indexes, jnp.int32)].set(True)
        eps = cfg.rms_norm_eps

        def window_attn(q, k, v):
            shape = (n_win, win) + q.shape[1:]
            o = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), wseg, wseg)
            return o.reshape(q.shape)

        def full_attn(q, k, v):
            if not banded:
                flat = iseg.reshape(rows, n_row * win)
                shape = (rows, n_row * win) + q.shape[1:]
                return attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), flat, flat).reshape(q.shape)
            kw, vw = (x.reshape((rows, n_row, win) + x.shape[1:]) for x in (k, v))
            take = jax.vmap(lambda x, i: x[i])  # per row: x (n_row, ...)[i (c, R)]

            # rematerialised: the backward regathers a call's keys instead of keeping every call's (W x band)
            @jax.checkpoint
            def one_call(args):
                qc, windows = args  # (rows, c, win, H, D), (c,)
                c = windows.shape[0]
                idx = first[:, windows][:, :, None] + band[None, None, :]  # (rows, c, R) windows of the row
                inside = idx < n_row
                idx = jnp.minimum(idx, n_row - 1)
                # clipped duplicates get segment -1, which no query has: every key is counted once
                seg = jnp.where(inside[..., None], take(iseg, idx), -1).reshape(rows * c, n_band * win)

                def gather(x):
                    return take(x, idx).reshape((rows * c, n_band * win) + x.shape[3:])

                o = attention(qc.reshape((rows * c, win) + qc.shape[3:]), gather(kw), gather(vw),
                              iseg[:, windows].reshape(rows * c, win), seg)
                return o.reshape(qc.shape)

            calls = n_row // per_call
            qs = jnp.moveaxis(q.reshape((rows, calls, per_call, win) + q.shape[1:]), 1, 0)
            out = jax.lax.map(one_call, (qs, jnp.arange(n_row, dtype=jnp.int32).reshape(calls, per_call)))
            return jnp.moveaxis(out, 0, 1).reshape(q.shape)

        def block(x, layer):
            w, full = layer
            x = constrain(x, PATCHES)
            h = rms_norm(x, w["norm1"], eps)
            qkv = dense(h, w["qkv"], "nd,dthk->nthk", w["qkv_bias"])
            q = apply_rotary(qkv[:, 0], cos, sin)
            k = apply_rotary(qkv[:, 1], cos, sin)
            with jax.named_scope(BLOCK_KIND_SCOPE):  # `train.flops` weighs the branches by the block counts
                o = jax.lax.cond(full, full_attn, window_attn, q, k, qkv[:, 2])
            x = x + dense(o, w["proj"], "nhk,hkd->nd", w["proj_bias"])
            h = rms_norm(x, w["norm2"], eps)
            g = dense(h, w["gate"], "nd,df->nf", w["gate_bias"])
            u = dense(h, w["up"], "nd,df->nf", w["up_bias"])
            act = jax.nn.silu(g.astype(jnp.float32)).astype(g.dtype) * u
            return constrain(x + dense(act, w["down"], "nf,fd->nd", w["down_bias"]), PATCHES), None

        if self.remat != "none":
            block = jax.checkpoint(block, policy=_remat_policy(self.remat))
        weights = {k: v[...] for k, v in vars(self.blocks).items() if isinstance(v, nnx.Param)}
        groups = _remat_groups(cfg.depth) if self.remat == "full" else 1
        if groups == 1:
            x, _ = jax.lax.scan(block, x, (weights, is_full), unroll=bool(self.unroll))
        else:
            # nested remat: the backward keeps each group's input and, while in a group, its blocks' inputs
            # (4 + 8 of the 7B tower's 32 (P, D) residuals: at 12 images per row they outweigh the decoder's),
            # for one more forward of the tower
            grouped = jax.tree.map(lambda w: w.reshape((groups, cfg.depth // groups) + w.shape[1:]),
                                   (weights, is_full))

            @jax.checkpoint
            def group(x, layers):
                return jax.lax.scan(block, x, layers, unroll=bool(self.unroll))[0], None

            x, _ = jax.lax.scan(group, x, grouped)
        return self.merger(x, eps, cfg.merge_unit)


def _local_rows(rows: int) -> int:
    """Layout rows one device holds while tracing under a mesh (`parallel.rules.activation_sharding`)."""
    active = active_sharding()
    ways = batch_ways(*active) if active is not None else 1
    return rows // ways if rows % ways == 0 else rows


def _windows_per_call(n_win: int, band_keys: int, max_keys: int = 32768) -> int:
    """Windows per full-attention call: the largest divisor of `n_win` whose keys (band_keys each, over the
    rows a device holds) stay within `max_keys`, so one call's scores and gathered keys are bounded whatever
    the image count."""
    target = max(1, min(n_win, max_keys // max(band_keys, 1)))
    return max(d for d in range(1, target + 1) if n_win % d == 0)


def _remat_groups(depth: int, min_depth: int = 16) -> int:
    """Groups of blocks for nested remat: the divisor g of `depth` with the fewest saved residuals g + depth/g
    (4 for 32 blocks); 1 (plain per-block remat) for towers shallower than `min_depth`."""
    if depth < min_depth:
        return 1
    return min((g for g in range(1, depth + 1) if depth % g == 0), key=lambda g: (g + depth // g, g))


def _remat_policy(name: str):
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "dots_saveable": jax.checkpoint_policies.dots_saveable,
    }
    if name not in policies:
        raise ValueError(f"remat {name!r}: expected one of {['none', *policies]}")
    return policies[name]
