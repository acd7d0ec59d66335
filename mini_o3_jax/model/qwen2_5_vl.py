"""Qwen2.5-VL as an NNX module: vision tower + embedding merge + M-RoPE decoder + LM head.

Use it functionally at jit boundaries: `graphdef, state = nnx.split(model)` once, then jit a pure
function of `state` (see `forward`). Inputs are fixed-shape arrays prepared on the host
(`mini_o3_jax.processing.inputs.build_inputs`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.layers import mrope
from mini_o3_jax.model.text import TextDecoder
from mini_o3_jax.model.vision import VisionInputs, VisionTower

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TextInputs(NamedTuple):
    """A padded batch of token sequences with their M-RoPE positions."""

    input_ids: jax.Array  # (B, L) int32
    positions: jax.Array  # (3, B, L) int32, from processing.positions.rope_index
    segment_ids: jax.Array  # (B, L) int32: 0 padding, >0 real (packed sequences get distinct ids)
    image_rows: jax.Array  # (B, L) int32: merged vision row replacing the token, -1 otherwise


class Qwen25VL(nnx.Module):
    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: jnp.dtype | str = jnp.float32,
        rngs: nnx.Rngs | None = None,
        remat: str = "none",
        unroll: bool = False,
    ):
        """`remat`: rematerialisation policy of the layer loops; `unroll`: run them as straight-line code
        instead of a `lax.scan` loop (faster for a few small layers on a CPU, as in the toy demo; slower to
        compile for the 28-36 layers of a real model)."""
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.visual = VisionTower(config.vision, dtype=dtype, rngs=rngs, remat=remat, unroll=unroll)
        self.text = TextDecoder(config.text, dtype=dtype, rngs=rngs, remat=remat, unroll=unroll)

    @property
    def dtype(self) -> jnp.dtype:
        return self.text.embed.dtype

    def embed(self, text: TextInputs, image_features: jax.Array | None, vision_rows: int = 1) -> jax.Array:
        """Token embeddings with image features scattered into the `<|image_pad|>` positions.

        `vision_rows` > 1: the features come in one layout row per text row (`positions.row_layouts`), and
        each text row gathers from its own (a gather batched over rows, which stays on the row's device);
        `image_rows` then count from the row's first feature."""
        x = jnp.take(self.text.embed[...], text.input_ids, axis=0)
        if image_features is not None:
            index = jnp.maximum(text.image_rows, 0)
            if vision_rows == 1:
                feats = jnp.take(image_features, index, axis=0)
            else:
                b = text.input_ids.shape[0]
                if vision_rows != b:
                    raise ValueError(f"{vision_rows} vision layout rows for {b} text rows")
                per_row = image_features.shape[0] // b
                by_row = image_features.reshape((b, per_row) + image_features.shape[1:])
                feats = jax.vmap(lambda f, i: jnp.take(f, i, axis=0))(by_row, jnp.minimum(index, per_row - 1))
            x = jnp.where((text.image_rows >= 0)[..., None], feats.astype(x.dtype), x)
        return x

    def __call__(self, text: TextInputs, vision: VisionInputs | None = None) -> jax.Array:
        """Final hidden states (B, L, D); apply `self.text.logits` for the vocabulary."""
        features = self.visual(vision) if vision is not None else None
        x = self.embed(text, features, 1 if vision is None else vision.window_first.shape[0])
        cfg = self.config.text
        cos, sin = mrope(text.positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, x.dtype)
        b, length = text.input_ids.shape
        token_pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        return self.text(x, cos, sin, text.segment_ids, token_pos)


    def cached(
        self,
        text: TextInputs,
        vision: VisionInputs | None,
        k_cache: jax.Array,
        v_cache: jax.Array,
        starts: jax.Array,
        slots: jax.Array | None = None,
        kv_len: int | None = None,
        table: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Like `__call__` for a chunk appended to a KV cache at `starts` (see `TextDecoder.cached`; with a page
        `table` the caches are page pools); `text.positions` continue each slot's M-RoPE positions,
        `text.segment_ids > 0` marks real tokens."""
        features = self.visual(vision) if vision is not None else None
        x = self.embed(text, features, 1 if vision is None else vision.window_first.shape[0])
        cfg = self.config.text
        cos, sin = mrope(text.positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, x.dtype)
        return self.text.cached(x, cos, sin, k_cache, v_cache, starts, text.segment_ids > 0, slots, kv_len, table)


@functools.partial(jax.jit, static_argnames=("graphdef", "logits_dtype"))
def _forward_logits(graphdef, state, text: TextInputs, vision: VisionInputs | None, logits_dtype=jnp.float32):
    model = nnx.merge(graphdef, state)
    return model.text.logits(model(text, vision), logits_dtype)


def forward_logits(
    model: Qwen25VL, text: TextInputs, vision: VisionInputs | None = None, logits_dtype=jnp.float32
) -> jax.Array:
    """Jitted full forward to logits (B, L, V). Compiles once per (bucketed) input shape."""
    graphdef, state = nnx.split(model)
    return _forward_logits(graphdef, state, text, vision, logits_dtype=logits_dtype)
