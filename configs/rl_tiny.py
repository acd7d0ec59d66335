"""GRPO at toy scale: `configs/rl_grpo.py:tiny` (that file's docstring says what it runs).

    mini-o3 rl --config configs/rl_tiny.py        # 3 GRPO steps on fresh hard toy puzzles -> runs/rl_tiny/final
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config


def get_config() -> ml_collections.ConfigDict:
    return load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rl_grpo.py:tiny"))
