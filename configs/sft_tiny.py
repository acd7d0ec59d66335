"""Cold-start SFT at toy scale: `sft_coldstart.py` on a tiny Qwen2.5-VL, runnable as is (CPU, about a minute).

    mini-o3 sft --config configs/sft_tiny.py       # -> runs/sft_tiny/final
    mini-o3 rl --config configs/rl_tiny.py --config.model_path=runs/sft_tiny/final

Nothing to download: it fine-tunes the packaged toy demo model (`mini-o3 infer`'s default, 4 MB) on the
scripted expert's multi-turn trajectories over fresh `toy` puzzles, generated as they are read
(`data.synthetic`). Like the full config it reads a file instead when `data.path` is set (e.g.
`data/synthetic/coldstart/Mini-o3-Coldstart.json` from `mini-o3 data synthetic --preset toy`), and starts
from another checkpoint with `--config.model_path=DIR`; `--config.model_path=` (empty) trains a random
`tiny` model of the `model` block instead, which needs `--config.tokenizer_path` (a Qwen tokenizer directory).
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config
from mini_o3_jax.infer import DEMO_MODEL
from mini_o3_jax.model.presets import preset


def get_config() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_coldstart.py"))
    c.model_path = DEMO_MODEL  # the packaged toy demo model (its tokenizer and preprocessor come with it)
    c.model = preset("tiny")  # used when model_path is empty
    c.dtype = "float32"
    c.remat = "none"
    c.out_dir = "runs/sft_tiny"
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    # generated training data when data.path is empty: a `synthetic.PRESETS` scene ("" = read data.path)
    c.data.synthetic = "toy"
    c.data.synthetic_levels = []  # the levels in turn; empty: all of the scene's
    # the expert's reasoning patterns and their weights (synthetic.PATTERNS; empty: its default mix); the
    # packaged model was trained on the direct one only
    c.data.synthetic_patterns = {"direct": 1.0}
    c.data.system_prompt = False  # keep the expert's system turn (tool_crop); the packaged model has none
    c.data.min_pixels = 3136  # the toy scene's view budget (56x56 .. 112x112 pixels), as the model was trained
    c.data.max_pixels = 12_544
    c.train.steps = 6
    c.train.batch_size = 2
    c.train.micro_batch = 1
    c.train.min_length = 64
    c.train.max_length = 4096
    c.train.logits_chunk = 256
    c.optim.lr = 1e-4
    c.checkpoint.every = 3
    c.checkpoint.async_save = False
    return c
