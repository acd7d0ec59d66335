"""Qwen2.5-VL-7B-Instruct architecture (the released checkpoint's config.json values).

Usage: `mini-o3 init --config configs/qwen2_5_vl_7b.py --out DIR` or load in Python with
`mini_o3_jax.config_files.load_config("configs/qwen2_5_vl_7b.py")`.
"""

import ml_collections

from mini_o3_jax.model.presets import preset


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = preset("qwen2_5_vl_7b")
    c.dtype = "bfloat16"
    c.remat = "none"
    return c
