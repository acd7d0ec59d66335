"""GRPO at toy scale: `rl_grpo.py` on a random tiny Qwen2.5-VL with a rule-based reward (tests, CPU)."""

import os

import ml_collections

from mini_o3_jax.config_files import load_config
from mini_o3_jax.model.presets import preset


def get_config() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(os.path.dirname(__file__), "rl_grpo.py"))
    c.model = preset("tiny")
    c.dtype = "float32"
    c.remat = "none"
    c.out_dir = "runs/rl_tiny"
    c.env.max_turns = 3
    c.env.max_context = 6000
    c.env.context_guard = 500
    c.env.min_pixels = 3136
    c.env.max_pixels = 60_000
    c.rollout.samples = 4
    c.rollout.slots = 8
    c.rollout.max_len = 6144
    c.rollout.decode_chunk = 16
    c.rollout.max_turn_tokens = 24
    c.rollout.workers = 2
    c.reward.kind = "choice"
    c.train.steps = 3
    c.train.prompts_per_step = 2
    c.train.mini_batch_prompts = 1
    c.train.max_gen_batches = 4
    c.train.max_length = 8192
    c.train.min_length = 64
    c.train.logits_chunk = 256
    c.optim.lr = 1e-4
    c.checkpoint.every = 1
    c.checkpoint.async_save = False
    return c
