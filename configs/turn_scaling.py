"""Over-turn masking and test-time turn scaling on the toy (`mini-o3 demo --turn-scaling`, docs/demo.md).

The demo's model and stages (configs/demo.py) on longer searches: hard puzzles with 4-7 look-alikes, so the
expert needs 2-8 turns, and GRPO trains at a 4-turn limit where ~45 % of expert-like searches run out of turns.
From one cold-start SFT model, each RL seed trains GRPO with and without over-turn masking; every model is
evaluated up to 16 turns (4x the training limit).

    mini-o3 demo --turn-scaling                           # runs/turn_scaling/turn_scaling.md
    mini-o3 demo --turn-scaling --seeds 0,1,2

Status (docs/demo.md, "Turn scaling"): the effect is not shown yet. The SFT model's per-zoom border check is at
chance, so it stops early at a random look-alike and masking has little to act on; the values below are a first
guess, measured once (seed 0, ~24 min on a 2-core CPU), not a tuned result.
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(HERE, "demo.py"))
    c.out_dir = "runs/turn_scaling"
    # hard puzzles with 4-7 look-alikes on the 4x4 grid (the demo's: 2-3), checked in reading order
    c.scene_overrides = {"hard_candidates": (4, 7)}
    c.data.eval_levels = ("hard",)
    c.data.eval_per_level = 64
    c.data.rl_levels = ("hard",)

    # cold-start SFT on the long searches only (the packaged base already reads the easy level)
    c.sft.levels = ["hard"]
    c.sft.train.steps = 60  # ~4.3 s a step on 2 CPU cores (long sequences, up to 9 images)
    c.sft.train.max_length = 1536

    # GRPO at a 4-turn training limit; lr and KL as the demo's
    c.rl.env.max_turns = 4
    c.rl.train.steps = 8

    # every model once at 16 turns (4x the training limit); smaller limits read from the same episodes
    c.eval.k = 4
    c.eval.turn_limits = [1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16]
    c.eval.env.max_turns = 16
    c.eval.env.max_context = 4096
    c.eval.save_crops = 0

    c.turn_scaling = ml_collections.ConfigDict(dict(seeds=[0]))
    return c
