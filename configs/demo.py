"""The whole Mini-o3 recipe at toy scale (`mini-o3 demo`): synthetic puzzles, a small Qwen-style BPE, a
tiny Qwen2.5-VL that can see (the packaged base, the toy's stand-in for a pretrained Qwen2.5-VL, or the
perception stages from random init), a direct-answer baseline, cold-start SFT on scripted-expert
trajectories, GRPO with over-turn masking (training turn limit below the test limit, as in the paper),
evaluation and a report, sized for a 2-core CPU. Why each value: docs/demo.md (its "History" section
holds the measurements behind them).

    mini-o3 demo                                   # runs/demo/report.md
    mini-o3 demo --ablation                        # + RL without over-turn masking, from the same SFT
    mini-o3 demo --seeds 0,1,2 --out runs/seeds    # mean +- standard error over training seeds
    mini-o3 demo --config.base=                    # train the perception stages from scratch too
    mini-o3 demo --config.sft.train.steps=400      # any field can be overridden
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config, to_block
from mini_o3_jax.model.presets import preset
from mini_o3_jax.toy.recipe import ToyData
from mini_o3_jax.train.settings import TOY_SHAPES

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out_dir = "runs/demo"
    c.seed = 0
    c.ablation = False  # also train RL without over-turn masking and compare turn curves
    # The model baseline and SFT start from, as Mini-o3 starts from a pretrained Qwen2.5-VL: "packaged" is the
    # perception stages below, run from scratch at seed 0 with this file's settings, and shipped
    # (mini_o3_jax/assets/demo_base, 4 MB); a path is any such checkpoint; "" runs the perception stages
    c.base = "packaged"
    # the layer loops as straight-line code rather than a scan (faster for a few small layers on a CPU)
    c.unroll_layers = True

    # mini_o3_jax.toy.scene preset (SceneConfig.<scene>()): texture labels read from a cell zoom, red
    # square targets
    c.scene = "toy"
    c.system_prompt = False  # a model trained from scratch needs no instruction; saves 226 tokens a sequence
    # toy.recipe.ToyData: 32 held-out puzzles a level, a 700-token BPE trained on 60 puzzles' texts, RL prompts
    # of the hard level
    c.data = to_block(ToyData())

    m = preset("tiny")
    m["text"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, mrope_section=[4, 6, 6])
    m["vision"].update(hidden_size=64, intermediate_size=128, out_hidden_size=128)
    c.model = m

    def trainer(path: str, **train) -> ml_collections.ConfigDict:
        t = load_config(os.path.join(HERE, path))
        t.dtype = "float32"
        t.remat = "none"
        t.unroll_layers = True  # (the top-level unroll_layers is for evaluation)
        t.log_every = 25
        t.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
        t.checkpoint.every = 50
        t.checkpoint.keep = 1
        t.checkpoint.async_save = False
        t.train.trainable = "all"  # from scratch: the vision tower learns too
        t.train.update(TOY_SHAPES)  # bucketed sizes, not the 7B shape sets
        t.train.update(train)
        return t

    # perception (with base=""; the packaged base is these stages' result): single-skill questions (where is the
    # target, what pattern), dense supervision before search, as Qwen2.5-VL's pretraining precedes Mini-o3.
    # Stages run in order, each from the last; steps=0 skips one. Locating alone first, then locating and
    # reading. Answers are the expert's own turns ("expert").
    c.perception_stages = ["perception_locate", "perception", "perception_search", "perception_check",
                           "perception_hard"]
    for name, steps, skills in (("perception_locate", 300, ["locate"]),
                                ("perception", 200, ["locate", "locate", "read"])):
        c[name] = trainer("sft_coldstart.py", steps=steps, batch_size=16, micro_batch=16, min_length=64,
                          max_length=256, logits_chunk=256, min_windows=16)
        c[name].skills = skills
        c[name].style = "expert"  # toy.perception.perception_question: "short" answers or the expert's own turns
        c[name].optim.update(lr=1e-3, b2=0.95, warmup_ratio=0.05, weight_decay=0.0)
        c[name].checkpoint.every = 100
    # then the easy level's whole direct trajectories ("search", expert turns only): locating and reading
    # chained in context. min_windows 16: the 16 images of a batch fill it.
    # Last, optionally, `perception_hard`: the hard level's whole direct trajectories (checking the look-alikes
    # for the white border, reading the one that has it), up to 4 images each; off,
    # --config.perception_hard.train.steps=150 runs it.
    for name, steps, skill, windows in (("perception_search", 900, "search", 16),
                                        ("perception_hard", 0, "search_hard", 32)):
        c[name] = trainer("sft_coldstart.py", steps=steps, batch_size=8, micro_batch=8, min_length=128,
                          max_length=1024, logits_chunk=512, min_windows=windows)
        c[name].skills = [skill]
        c[name].style = "expert"
        c[name].optim.update(lr=1e-3, b2=0.95, warmup_ratio=0.1, weight_decay=0.0)
        c[name].checkpoint.every = 200

    # then the hard level's first check ("check"): the first look-alike's box, and on its zoom either the border
    # and the answer or "no border" and the next look-alike's box; the first look-alike is the target half the
    # time, so the border decision is balanced.
    c.perception_check = trainer("sft_coldstart.py", steps=200, batch_size=16, micro_batch=16, min_length=128,
                                 max_length=512, logits_chunk=512, min_windows=32)
    c.perception_check.skills = ["check"]
    c.perception_check.style = "expert"
    c.perception_check.optim.update(lr=1e-3, b2=0.95, warmup_ratio=0.1, weight_decay=0.0)
    c.perception_check.checkpoint.every = 100

    # direct-answer baseline: the same model trained to answer from the full view, no zooming
    c.baseline = trainer("sft_coldstart.py", steps=100, batch_size=16, micro_batch=16, min_length=64,
                         max_length=256, logits_chunk=256, min_windows=16)
    # lr 5e-3: a perception model re-learns a new answer format slowly at 2e-3
    c.baseline.optim.update(lr=5e-3, b2=0.95, warmup_ratio=0.05, weight_decay=0.0)

    # cold-start SFT on scripted-expert trajectories, every level
    c.sft = trainer("sft_coldstart.py", steps=100, batch_size=8, micro_batch=8, min_length=128,
                    max_length=1024, logits_chunk=512, min_windows=32)
    c.sft.optim.update(lr=2e-3, b2=0.95, warmup_ratio=0.1, weight_decay=0.0)
    # how often the expert uses each reasoning pattern (toy.expert.PATTERNS): the direct one only here
    c.sft.patterns = {"direct": 1.0}

    # GRPO with over-turn masking; training allows fewer turns than the test does
    c.rl = trainer("rl_grpo.py", steps=8, prompts_per_step=8, mini_batch_prompts=8, micro_batch=8,
                   max_gen_batches=2, min_length=448, max_length=2048, logits_chunk=512, min_windows=32)
    c.rl.reward.kind = "exact"
    # Keep steps whose groups all score alike (zero advantage: no update) instead of resampling and then
    # stopping; a toy model that never answers right must still finish the demo and show it.
    c.rl.train.dynamic_sampling = False
    # lr 1e-4 and a KL term to the SFT model, hard prompts only (data.rl_levels)
    c.rl.optim.update(lr=1e-4)
    c.rl.ppo.kl_coef = 0.1
    c.rl.env.update(max_turns=3, max_images=12, max_context=4096, context_guard=256)
    c.rl.rollout.update(samples=8, slots=32, max_len=4096, decode_chunk=16, max_turn_tokens=128, workers=2)

    # evaluation: Avg@K at T=1.0 with a test turn limit above the training one
    # K=8: each puzzle's accuracy in steps of 1/8, not 1/2
    # scorer "auto": exact match on the puzzles' one-word answers, offline (not the paper's LLM judge)
    # (eval.run.EvalConfig, key for field; pixels and system prompt are the scene's and `system_prompt`'s)
    c.eval = ml_collections.ConfigDict(dict(k=8, turn_limits=[1, 2, 3, 4, 5, 6], save_crops=2, scorer="auto",
                                            env=dict(max_turns=6, max_context=4096, context_guard=256),
                                            rollout=dict(max_turn_tokens=128, slots=32, decode_chunk=16, workers=2)))
    return c
