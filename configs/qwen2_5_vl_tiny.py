"""A tiny Qwen2.5-VL (2 text layers, 3 vision blocks, width 64) for tests, demos and notebooks."""

import ml_collections

from mini_o3_jax.model.presets import preset


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = preset("tiny")
    c.dtype = "float32"
    c.remat = "none"
    return c
