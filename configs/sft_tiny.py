"""Cold-start SFT at toy scale: `sft_coldstart.py` on a random tiny Qwen2.5-VL (tests, CPU smoke runs)."""

import os

import ml_collections

from mini_o3_jax.config_files import load_config
from mini_o3_jax.model.presets import preset


def get_config() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(os.path.dirname(__file__), "sft_coldstart.py"))
    c.model = preset("tiny")  # used when model_path is empty
    c.dtype = "float32"
    c.remat = "none"
    c.out_dir = "runs/sft_tiny"
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.data.min_pixels = 3136
    c.data.max_pixels = 60_000
    c.train.steps = 6
    c.train.batch_size = 2
    c.train.micro_batch = 1
    c.train.min_length = 64
    c.train.max_length = 4096
    c.train.logits_chunk = 256
    c.optim.lr = 1e-3
    c.checkpoint.every = 3
    c.checkpoint.async_save = False
    return c
