"""The toy recipe end to end on reduced settings, through `mini-o3 demo`: every stage runs, resumes, and
writes its report."""

from __future__ import annotations

import json
import os

import pytest

from mini_o3_jax.cli import main
from mini_o3_jax.data.synthetic import SceneConfig
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.recipe import PuzzlePrompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDUCED = [
    "perception_locate.train.steps=2", "perception.train.steps=2", "perception_search.train.steps=2",
    "perception_check.train.steps=2", "perception_hard.train.steps=2", "baseline.train.steps=2", "sft.train.steps=3", "rl.train.steps=1", "rl.train.prompts_per_step=2",
    "rl.train.mini_batch_prompts=1", "rl.rollout.samples=2", "rl.train.dynamic_sampling=False",
    "data.eval_per_level=2", "data.tokenizer_puzzles=6", "eval.k=2", "eval.max_turn_tokens=32",
    "rl.rollout.max_turn_tokens=32",
]
LEVELS = ("easy", "hard")  # the toy scene's levels


def test_reduced_demo_runs_every_stage_and_writes_its_report(tmp_path):
    root = tmp_path / "demo"
    argv = ["demo", "--config", os.path.join(REPO, "configs", "demo.py"), "--out", str(root), "--ablation"]
    argv += [f"--config.{o}" for o in REDUCED]
    assert main(argv) == 0
    summary = json.loads((root / "summary.json").read_text())
    # the perception stages ran first, each from the last, and both the baseline and SFT started from them
    for stage in ("perception_locate", "perception", "perception_search", "perception_check", "perception_hard"):
        assert (root / stage / "final" / "mini_o3.json").exists() and stage in summary["timings"]
    def started_from(stage):
        return json.loads((root / stage / "stage.json").read_text())["init"]

    assert started_from("perception_locate") == str(root / "init")
    assert started_from("perception") == str(root / "perception_locate" / "final")
    assert started_from("perception_search") == str(root / "perception" / "final")
    assert started_from("perception_check") == str(root / "perception_search" / "final")
    assert started_from("perception_hard") == str(root / "perception_check" / "final")
    assert started_from("baseline") == started_from("sft") == str(root / "perception_hard" / "final")
    assert started_from("rl") == started_from("rl_no_mask") == str(root / "sft" / "final")
    for stage in ("baseline", "sft", "rl", "rl_no_mask"):
        assert (root / stage / "final" / "mini_o3.json").exists(), stage
        # every checkpoint carries the environment it was trained with
        agent = json.loads((root / stage / "final" / "agent.json").read_text())
        assert agent["max_pixels"] == 112 * 112 and agent["system_prompt"] is None
        metrics = json.loads((root / "eval" / stage / "metrics.json").read_text())
        assert set(metrics["benchmarks"]) == {f"synthetic_{lv}" for lv in LEVELS}
        assert all(m["questions"] == 2 and m["samples_per_question"] == 2 for m in metrics["benchmarks"].values())
        assert set(summary["results"][stage]) == {f"synthetic_{lv}" for lv in LEVELS}
    report = (root / "report.md").read_text()
    for needle in ("| model | easy | hard |", "| baseline |", "| sft |", "| rl |", "| rl_no_mask |", "accuracy.png",
                   "turns.png", "reward.png", "eval/rl/index.html", "| total |"):
        assert needle in report, needle
    for png in ("accuracy.png", "turns.png", "reward.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rl_log = [json.loads(x) for x in (root / "rl" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert rl_log and "reward_mean" in rl_log[0]
    # a second run finds every stage complete and only rewrites the report
    def accuracy(summary):
        return {s: {b: m["avg_at_k"] for b, m in r.items()} for s, r in summary["results"].items()}

    assert main(argv) == 0
    assert accuracy(json.loads((root / "summary.json").read_text())) == accuracy(summary)


def test_rl_prompts_cycle_through_the_configured_levels():
    scene = SceneConfig.toy()
    every = PuzzlePrompts(scene, base=5)
    assert [every[i].data_source for i in range(4)] == ["synthetic_easy", "synthetic_hard"] * 2
    hard = PuzzlePrompts(scene, base=5, levels=["hard"])
    assert {hard[i].data_source for i in range(4)} == {"synthetic_hard"}
    assert "border" in hard[0].problem and hard[1].solution in ("stripes", "bars", "checks", "slashes")
    assert hard[3].problem == PuzzlePrompts(scene, base=5, levels=["hard"])[3].problem  # generated, deterministic
    with pytest.raises(ConfigError, match="not among the scene's levels"):
        PuzzlePrompts(scene, base=5, levels=["medium"])
