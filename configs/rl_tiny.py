"""GRPO at toy scale: `rl_grpo.py` from the packaged toy demo model, runnable as is (CPU, about a minute).

    mini-o3 rl --config configs/rl_tiny.py        # 3 GRPO steps on fresh hard toy puzzles -> runs/rl_tiny/final

Nothing to download: the packaged demo model (`mini-o3 infer`'s default, trained by `mini-o3 demo` without a
system prompt, at the toy scene's pixel budget) answers fresh `toy` puzzles of the hard level, generated as
they are read (`data.synthetic`), about a third of them right within 3 turns, so a group of 4 samples
usually scores unevenly and GRPO has something to learn from; the reward is exact match with the one-word
answer. Like the full config it reads prompts from `data.path` (the released JSON, e.g. `mini-o3 data
synthetic --preset toy` writes `data/synthetic/synthetic_train/train.json`) or prepared `data.sets` when
set, and starts from another checkpoint with `--config.model_path=DIR` (e.g. runs/sft_tiny/final).
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config
from mini_o3_jax.infer import DEMO_MODEL
from mini_o3_jax.model.presets import preset


def get_config() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rl_grpo.py"))
    c.model_path = DEMO_MODEL  # the packaged toy demo model (its tokenizer and preprocessor come with it)
    c.model = preset("tiny")  # used when model_path is empty
    c.dtype = "float32"
    c.remat = "none"
    c.out_dir = "runs/rl_tiny"
    # generated prompts when data.path and data.sets are empty: a `synthetic.PRESETS` scene ("" = read data.path)
    c.data.synthetic = "toy"
    c.data.synthetic_levels = ["hard"]  # the levels in turn (empty: all): where the model is right a third of the time
    c.env.system_prompt = ""  # as the packaged model was trained (agent.json: "system_prompt": null)
    c.env.max_turns = 3  # the demo's training limit, below its test limit of 6 (over-turn masking)
    c.env.max_context = 6000
    c.env.context_guard = 500
    c.env.min_pixels = 3136  # the toy scene's view budget (56x56 .. 112x112 pixels), as the model was trained
    c.env.max_pixels = 12_544
    c.rollout.samples = 4
    c.rollout.slots = 8
    c.rollout.max_len = 6144
    c.rollout.decode_chunk = 16
    c.rollout.max_turn_tokens = 128
    c.rollout.workers = 2
    c.reward.kind = "exact"
    c.train.steps = 3
    c.train.prompts_per_step = 2
    c.train.mini_batch_prompts = 1
    c.train.max_gen_batches = 4
    # one micro-batch of one length and image-window bucket per group: the update compiles once, not per shape
    c.train.micro_batch = 4
    c.train.max_length = 8192
    c.train.min_length = 512
    c.train.min_windows = 16
    c.train.logits_chunk = 256
    c.optim.lr = 1e-4
    c.checkpoint.every = 1
    c.checkpoint.async_save = False
    return c
