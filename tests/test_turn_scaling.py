"""`mini-o3 demo --turn-scaling`: the long-search puzzles need more turns than RL trains with, and the report's
statistics (accuracy per test limit pooled over seeds by puzzle, standard errors, the paired masked - unmasked
difference, over-turn rates) equal a plain numpy computation on hand-made evaluation results."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from mini_o3_jax.cli import main
from mini_o3_jax.config_files import load_config
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.eval.metrics import QuestionResult, SampleResult
from mini_o3_jax.toy.expert import expert_trajectory
from mini_o3_jax.toy.puzzles import make_puzzle
from mini_o3_jax.toy.scene import SceneConfig
from mini_o3_jax.toy.turn_scaling import arm_name, turn_scaling_summary, write_turn_scaling_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_long_searches_run_past_the_training_limit():
    """4-7 look-alikes checked in reading order: 2-8 expert turns, and at the 4-turn training limit 30-60 % of
    the searches cannot finish. The default scene keeps Mini-o3's bound (every search within 6 turns)."""
    scene = SceneConfig.toy(hard_candidates=(4, 7))
    turns = []
    for i in range(120):
        p = make_puzzle(i, "hard", scene)
        assert 4 <= len(p.candidates) <= 7
        turns.append(len(expert_trajectory(p, seed=0, weights={"direct": 1.0}).gpt_turns))
    assert min(turns) == 2 and max(turns) == 8 and scene.max_expert_turns == 9
    assert 0.3 <= np.mean(np.array(turns) > 4) <= 0.6
    assert SceneConfig.toy().max_expert_turns == 6
    with pytest.raises(ConfigError, match="up to 8 on the grid layout"):
        SceneConfig.tiny(hard_candidates=(2, 5))  # free layout: at most 3
    with pytest.raises(ConfigError, match="hard_candidates"):
        SceneConfig.toy(hard_candidates=(4, 9))


def _void(score: float, turns: int, over: bool) -> bool:
    """The hand-made samples' void ones: wrong, not over-turned, an odd number of turns."""
    return not over and score == 0.0 and turns % 2 == 1


def _gave_up(score: float, turns: int, over: bool) -> bool:
    """The hand-made samples' give-up guesses: answered (not over-turned), an even number of turns, turns < 6."""
    return not over and turns % 2 == 0 and turns < 6


def _detail(score: float, turns: int, over: bool) -> list[dict]:
    if _gave_up(score, turns, over):
        return [{"text": "<think>No border here. Too many left to check. Guess bars.</think>\n<answer>bars</answer>",
                 "outcome": "final"}]
    return [{"text": "<think>It has the border. It shows bars.</think>\n<answer>bars</answer>", "outcome": "final"}]


def _write(out: str, model: str, puzzles: dict[str, list[tuple[float, int, bool]]]) -> None:
    d = os.path.join(out, "eval", model, "synthetic_hard")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.jsonl"), "w") as f:
        for doc, samples in puzzles.items():
            r = QuestionResult("synthetic_hard", doc, "", [SampleResult(score, None if over else "x", turns,
                                                                        over_turn=over, void=_void(score, turns, over),
                                                                        detail=_detail(score, turns, over))
                                                           for score, turns, over in samples])
            f.write(json.dumps(r.to_json()) + "\n")


def test_the_summary_pools_seeds_by_puzzle_and_pairs_the_difference(tmp_path):
    cfg = load_config(os.path.join(REPO, "configs", "turn_scaling.py"))
    cfg.eval.turn_limits = [2, 4, 8]
    out = str(tmp_path)
    rng = np.random.default_rng(0)
    docs = [f"p{i}" for i in range(5)]
    # (score, turns, over-turned) per sample: 5 puzzles x 3 samples; an over-turned sample ran all 8 turns
    made = {}
    for model in ("sft", arm_name("mask", 0), arm_name("mask", 1), arm_name("no_mask", 0), arm_name("no_mask", 1)):
        made[model] = {}
        for d in docs:
            samples = []
            for _ in range(3):
                over = bool(rng.random() < 0.3)
                samples.append((0.0, 8, True) if over else (float(rng.random() < 0.6), int(rng.integers(1, 9)), False))
            made[model][d] = samples
        _write(out, model, made[model])
    for arm, rate in (("mask", 0.5), ("no_mask", 0.25)):
        for s in (0, 1):
            os.makedirs(os.path.join(out, arm_name(arm, s), "logs"))
            with open(os.path.join(out, arm_name(arm, s), "logs", "metrics.jsonl"), "w") as f:
                f.write(json.dumps({"step": 1, "over_turn_rate": rate, "void_rate": rate / 5}) + "\n"
                        + json.dumps({"step": 1}) + "\n")

    summary = turn_scaling_summary(out, cfg, [0, 1])

    def per_puzzle(models, fn):  # (puzzles,) means over every sample of the models
        return np.array([np.mean([fn(*x) for m in models for x in made[m][d]]) for d in docs])

    def se(x):
        return x.std(ddof=1) / np.sqrt(len(x))

    arms = {"sft": ["sft"], "mask": [arm_name("mask", 0), arm_name("mask", 1)],
            "no_mask": [arm_name("no_mask", 0), arm_name("no_mask", 1)]}
    for name, models in arms.items():
        for limit in (2, 4, 8):
            acc = per_puzzle(models, lambda score, turns, over, L=limit: score > 0.5 and turns <= L)
            row = summary["table"][name][str(limit)]
            assert row["accuracy"] == pytest.approx(100 * acc.mean()) and row["se"] == pytest.approx(100 * se(acc))
            over = per_puzzle(models, lambda score, turns, over, L=limit: turns > L or over)
            assert row["over_turn"] == pytest.approx(100 * over.mean())
            turns_ = per_puzzle(models, lambda score, turns, over, L=limit: min(turns, L))
            assert row["mean_turns"] == pytest.approx(turns_.mean())
            void = per_puzzle(models, lambda score, turns, over, L=limit: _void(score, turns, over) and turns <= L)
            assert row["void"] == pytest.approx(100 * void.mean())
    diff = (per_puzzle(arms["mask"], lambda s, t, o: s > 0.5 and t <= 8)
            - per_puzzle(arms["no_mask"], lambda s, t, o: s > 0.5 and t <= 8))
    assert summary["masked_minus_unmasked"]["8"]["mean"] == pytest.approx(100 * diff.mean())
    assert summary["masked_minus_unmasked"]["8"]["se"] == pytest.approx(100 * se(diff))
    gain = per_puzzle(arms["mask"], lambda s, t, o: s > 0.5 and t <= 8) - per_puzzle(
        arms["mask"], lambda s, t, o: s > 0.5 and t <= 4)  # the largest limit vs the training limit (4)
    assert summary["gain"]["mask"]["mean"] == pytest.approx(100 * gain.mean())
    unmasked_gain = per_puzzle(arms["no_mask"], lambda s, t, o: s > 0.5 and t <= 8) - per_puzzle(
        arms["no_mask"], lambda s, t, o: s > 0.5 and t <= 4)
    assert summary["gain"]["masked_minus_unmasked"]["mean"] == pytest.approx(100 * (gain - unmasked_gain).mean())
    assert summary["gain"]["masked_minus_unmasked"]["se"] == pytest.approx(100 * se(gain - unmasked_gain))
    guessed = {name: per_puzzle(models, _gave_up) for name, models in arms.items()}
    assert 0 < guessed["sft"].mean() < 1
    assert summary["gave_up"]["sft"]["rate"] == pytest.approx(100 * guessed["sft"].mean())
    assert summary["gave_up"]["sft"]["se"] == pytest.approx(100 * se(guessed["sft"]))
    d = guessed["mask"] - guessed["no_mask"]
    assert summary["gave_up"]["masked_minus_unmasked"] == {"mean": pytest.approx(100 * d.mean()),
                                                           "se": pytest.approx(100 * se(d))}
    seed1 = np.mean([np.mean([s > 0.5 and t <= 4 for s, t, o in made[arm_name("no_mask", 1)][d]]) for d in docs])
    assert summary["per_seed"]["no_mask"]["1"]["4"] == pytest.approx(100 * seed1)
    assert summary["rl_training"]["mask"]["over_turn_rate"] == 50.0
    assert summary["rl_training"]["no_mask"] == {"over_turn_rate": 25.0, "void_rate": 5.0, "steps_logged": 2}
    assert summary["puzzles"] == 5 and summary["samples_per_puzzle"] == 3 and summary["train_limit"] == 4

    report = write_turn_scaling_report(out, summary)
    text = pathlib.Path(report).read_text()
    assert f"| {summary['table']['no_mask']['8']['void']:.1f} | " in text and "25.0 / 5.0 (2 steps)" in text
    assert "| test turn limit | 2 | 4 | 8 |" in text and "| masked - unmasked (paired) |" in text
    q = summary["gave_up"]["no_mask"]
    assert f" | {q['rate']:.1f} +- {q['se']:.1f} | " in text and "Masked - unmasked, paired by puzzle: accuracy gain" in text
    assert f"| GRPO with over-turn masking | {summary['table']['mask']['2']['accuracy']:.1f} +- " in text
    assert (tmp_path / "turn_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a model evaluated on other puzzles is refused, naming it
    _write(out, arm_name("no_mask", 1), {d: made[arm_name("no_mask", 1)][d] for d in docs[:4]})
    with pytest.raises(ValueError, match="rl_no_mask_seed1 was evaluated on other puzzles"):
        turn_scaling_summary(out, cfg, [0, 1])


def test_the_flag_selects_the_turn_scaling_config(capsys):
    """`--turn-scaling` with the default config runs configs/turn_scaling.py, `--seeds` its RL seeds; a config
    without the block is one clear error."""
    assert main(["demo", "--turn-scaling", "--seeds", "0,1,2", "--show-config"]) == 0
    shown = capsys.readouterr().out
    for line in ("--config.turn_scaling.seeds=[0, 1, 2]", "--config.rl.env.max_turns=4",
                 "--config.eval.env.max_turns=16", "--config.scene_overrides.hard_candidates=(4, 7)"):
        assert line in shown, line
    assert main(["demo", "--turn-scaling", "--config", os.path.join(REPO, "configs", "demo.py"), "--show-config"]) == 2
    assert "needs a config with a turn_scaling block" in capsys.readouterr().err
    # one RL seed on its own (a later --seeds 0,1 in the same folder resumes it and pools); the recipe's spread needs 2
    assert main(["demo", "--turn-scaling", "--seeds", "1", "--show-config"]) == 0
    assert "--config.turn_scaling.seeds=[1]" in capsys.readouterr().out
    assert main(["demo", "--seeds", "1", "--out", "/nonexistent/never_written"]) == 2
    assert "--seeds 1: the spread over seeds needs at least two" in capsys.readouterr().err
    assert main(["demo", "--seeds", "1,1"]) == 2
    assert "expected different seeds" in capsys.readouterr().err


def test_the_packaged_sft_model_is_this_configs_and_a_bad_source_is_one_line(tmp_path):
    """Both arms start from the SFT stage's model as shipped (`turn_scaling.sft = "packaged"`: the ~18-minute stage
    is not rerun): <= 5 MB, the config's model, the packaged base's tokenizer; a source without a tokenizer is a
    ConfigError naming it."""
    from mini_o3_jax.agent.settings import agent_settings
    from mini_o3_jax.infer import DEMO_BASE, TURN_SCALING_SFT
    from mini_o3_jax.toy.turn_scaling import sft_model

    cfg = load_config(os.path.join(REPO, "configs", "turn_scaling.py"))
    assert cfg.turn_scaling.sft == "packaged" and sft_model(cfg) == TURN_SCALING_SFT
    size = sum(os.path.getsize(os.path.join(TURN_SCALING_SFT, f)) for f in os.listdir(TURN_SCALING_SFT))
    assert size <= 5 * 1024**2, size
    with open(os.path.join(TURN_SCALING_SFT, "config.json")) as f:
        hf = json.load(f)
    text = cfg.model["text"]
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]) == (
        text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"])
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (pathlib.Path(TURN_SCALING_SFT) / name).read_bytes() == (pathlib.Path(DEMO_BASE) / name).read_bytes()
    settings = agent_settings(TURN_SCALING_SFT)
    assert (settings["max_turns"], settings["max_context"]) == (cfg.eval.env.max_turns, cfg.eval.env.max_context)
    cfg.turn_scaling.sft = ""
    assert sft_model(cfg) is None
    cfg.turn_scaling.sft = str(tmp_path)
    with pytest.raises(ConfigError, match=f"turn_scaling.sft = '{tmp_path}'.*no tokenizer.json"):
        sft_model(cfg)
