"""The toy recipe end to end on reduced settings: every stage runs, resumes, and writes its report."""

from __future__ import annotations

import json
import os

from mini_o3_jax.config_files import load_config
from mini_o3_jax.recipe import run_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDUCED = [
    "baseline.train.steps=2", "sft.train.steps=3", "rl.train.steps=1", "rl.train.prompts_per_step=2",
    "rl.train.mini_batch_prompts=1", "rl.rollout.samples=2", "rl.train.dynamic_sampling=False",
    "data.eval_per_level=2", "data.tokenizer_puzzles=6", "eval.k=2", "eval.max_turn_tokens=32",
    "rl.rollout.max_turn_tokens=32", "ablation=True",
]


def test_reduced_demo_runs_every_stage_and_writes_its_report(tmp_path):
    cfg = load_config(os.path.join(REPO, "configs", "demo.py"), REDUCED)
    cfg.out_dir = str(tmp_path / "demo")
    out = run_recipe(cfg, console=None)
    root = tmp_path / "demo"
    for stage in ("baseline", "sft", "rl", "rl_no_mask"):
        assert (root / stage / "final" / "mini_o3.json").exists(), stage
        metrics = json.loads((root / "eval" / stage / "metrics.json").read_text())
        assert set(metrics["benchmarks"]) == {"synthetic_easy", "synthetic_medium", "synthetic_hard"}
        assert all(m["questions"] == 2 and m["samples_per_question"] == 2 for m in metrics["benchmarks"].values())
        assert set(out["accuracy"][stage]) == {"easy", "medium", "hard"}
    report = (root / "report.md").read_text()
    for needle in ("| baseline |", "| sft |", "| rl |", "| rl_no_mask |", "accuracy.png", "turns.png", "reward.png",
                   "eval/rl/index.html", "| total |"):
        assert needle in report, needle
    for png in ("accuracy.png", "turns.png", "reward.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rl_log = [json.loads(x) for x in (root / "rl" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert rl_log and "reward_mean" in rl_log[0]
    # a second run finds every stage complete and only rewrites the report
    again = run_recipe(cfg, console=None)
    assert again["accuracy"] == out["accuracy"]
