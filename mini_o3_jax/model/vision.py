"""The Qwen2.5-VL vision tower: patch embed, 2-D rotary, window/full attention blocks, merger.

Input rows arrive in the padded-window layout built on the host (processing/positions.py), so the
tower is a pure function of fixed-shape arrays. Window blocks attend inside each 64-row window;
the `fullatt_block_indexes` blocks attend within each image (segment ids), reading only the windows
an image can span (`VisionInputs.band`): a batch of many small images costs O(P * band), not O(P^2).
Blocks are stacked and scanned; which kind a block is comes in as scanned data, so both share one
compiled body.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mini_o3_jax.model.attention import attention
from mini_o3_jax.model.config import VisionConfig
from mini_o3_jax.model.layers import apply_rotary, dense, param, rms_norm, vision_rotary
from mini_o3_jax.parallel.rules import constrain

PATCHES = ("act_patches", "act_embed")  # logical axes of the (P, D) ViT residual stream


class VisionInputs(NamedTuple):
    """Padded-window layout of all images of a batch (see processing/positions.VisionLayout)."""

    pixels: jax.Array  # (P, patch_dim) float
    pos_hw: jax.Array  # (P, 2) int32
    window_seg: jax.Array  # (P,) int32, 1 real / 0 pad
    image_seg: jax.Array  # (P,) int32, 1 + image index / 0 pad
    # (2R-1,) int32 window offsets -(R-1)..R-1 with R >= the most windows one image spans (an image's
    # windows are consecutive): full attention of window w reads windows w + band only
    band: jax.Array


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
        n_win, n_band = p // win, inputs.band.shape[0]
        wseg = jnp.asarray(inputs.window_seg).reshape(n_win, win)
        iseg = jnp.asarray(inputs.image_seg).reshape(n_win, win)
        # full attention reads, for each window, the windows at its band offsets (one big image: all of them)
        banded = n_band < n_win
        if banded:
            idx = jnp.arange(n_win)[:, None] + jnp.asarray(inputs.band)[None, :]  # (W, band)
            inside = (idx >= 0) & (idx < n_win)
            idx = jnp.clip(idx, 0, n_win - 1)
            # clipped duplicates get segment -1, which no query has: every key is counted once
            band_seg = jnp.where(inside[:, :, None], iseg[idx], -1).reshape(n_win, n_band * win)
        is_full = jnp.zeros((cfg.depth,), bool).at[jnp.asarray(cfg.fullatt_block_indexes, jnp.int32)].set(True)
        eps = cfg.rms_norm_eps

        def window_attn(q, k, v):
            shape = (n_win, win) + q.shape[1:]
            o = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), wseg, wseg)
            return o.reshape(q.shape)

        def full_attn(q, k, v):
            if not banded:
                flat = iseg.reshape(1, p)
                return attention(q[None], k[None], v[None], flat, flat)[0]

            def gather(x):
                return x.reshape((n_win, win) + x.shape[1:])[idx].reshape((n_win, n_band * win) + x.shape[1:])

            shape = (n_win, win) + q.shape[1:]
            return attention(q.reshape(shape), gather(k), gather(v), iseg, band_seg).reshape(q.shape)

        def block(x, layer):
            w, full = layer
            x = constrain(x, PATCHES)
            h = rms_norm(x, w["norm1"], eps)
            qkv = dense(h, w["qkv"], "nd,dthk->nthk", w["qkv_bias"])
            q = apply_rotary(qkv[:, 0], cos, sin)
            k = apply_rotary(qkv[:, 1], cos, sin)
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
        x, _ = jax.lax.scan(block, x, (weights, is_full), unroll=bool(self.unroll))
        return self.merger(x, eps, cfg.merge_unit)


def _remat_policy(name: str):
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "dots_saveable": jax.checkpoint_policies.dots_saveable,
    }
    if name not in policies:
        raise ValueError(f"remat {name!r}: expected one of {['none', *policies]}")
    return policies[name]
