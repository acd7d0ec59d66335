"""Over-turn masking and test-time turn scaling on the toy (`mini-o3 demo --turn-scaling`, docs/demo.md).

The demo's model and stages (configs/demo.py) on longer searches: hard puzzles with 4-7 look-alikes, so the
expert needs 2-8 turns, and GRPO trains at a 4-turn limit where ~45 % of expert-like searches run out of turns.
The cold-start SFT model gives up 40 % of its searches after a random number of misses and guesses
(`toy.expert.GIVE_UP`): the early answers GRPO without masking prefers to running out of turns. It is shipped
(`turn_scaling.sft = "packaged"`); from it each RL seed trains GRPO with and without over-turn masking, and every
model is evaluated up to 16 turns (4x the training limit).

    mini-o3 demo --turn-scaling                           # runs/turn_scaling/turn_scaling.md, ~11-13 min on 2 cores
    mini-o3 demo --turn-scaling --seeds 0,1,2             # ~29 min
    mini-o3 demo --turn-scaling --config.turn_scaling.sft=   # retrain the SFT model too (+18 min)

Status (docs/demo.md, "Turn scaling"), seeds 0-2 pooled: with masking accuracy gains +4.7 +- 1.0 points from 4 to
16 turns, +2.1 +- 0.6 more than without (paired by puzzle), and the give-up guesses fall to 13.4 % (18.4 % without,
25.4 % after SFT); the accuracy gap at 16 turns, +2.0 +- 1.3, is not 3 standard errors. Earlier designs without
give-ups (8 or 16 RL steps, with or without KL, lr 1e-4 or 2e-4, a 3- or 4-turn limit) showed no effect.
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
    # 300: the in-context border check clicks after ~150-250 steps (at 60 it was at chance: docs/demo.md);
    # ~3.5 s a step on 2 CPU cores (long sequences, up to 9 images), so ~18 min (shipped: turn_scaling.sft)
    c.sft.train.steps = 300
    c.sft.train.max_length = 1536
    # 40 % of the searches give up after a random number of misses and guess (toy.expert.GIVE_UP): the early
    # answers GRPO without over-turn masking prefers to running out of turns
    c.sft.patterns = {"direct": 0.6, "give_up": 0.4}

    # GRPO at a 4-turn training limit: lr 1e-4 as the demo's, no KL term (the demo's 0.1 kept both arms at SFT)
    c.rl.env.max_turns = 4
    c.rl.train.steps = 16
    c.rl.ppo.kl_coef = 0.0
    c.rl.rollout.slots = 64  # a step's 8 x 8 episodes at once

    # every model once at 16 turns (4x the training limit); smaller limits read from the same episodes
    c.eval.k = 4
    c.eval.turn_limits = [1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16]
    c.eval.env.max_turns = 16
    c.eval.env.max_context = 4096
    c.eval.save_crops = 0
    c.eval.rollout.slots = 64

    # "packaged": both arms start from this config's SFT stage as shipped (mini_o3_jax/assets/turn_scaling_sft);
    # "" trains it (~18 min); a path: any such checkpoint
    c.turn_scaling = ml_collections.ConfigDict(dict(seeds=[0], sft="packaged"))
    return c
