"""Cold-start SFT at toy scale: `configs/sft_coldstart.py:tiny` (that file's docstring says what it runs).

    mini-o3 sft --config configs/sft_tiny.py       # -> runs/sft_tiny/final
    mini-o3 rl --config configs/rl_tiny.py --config.model_path=runs/sft_tiny/final
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config


def get_config() -> ml_collections.ConfigDict:
    return load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_coldstart.py:tiny"))
