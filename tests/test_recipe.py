"""The toy recipe end to end on reduced settings, through `mini-o3 demo`: every stage runs, resumes, and
writes its report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mini_o3_jax.cli import main
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.toy.recipe import PuzzlePrompts
from mini_o3_jax.toy.scene import SceneConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDUCED = [
    "baseline.train.steps=2", "sft.train.steps=3", "rl.train.steps=1", "rl.train.prompts_per_step=2",
    "rl.train.mini_batch_prompts=1", "rl.rollout.samples=2", "rl.train.dynamic_sampling=False",
    "data.eval_per_level=2", "data.tokenizer_puzzles=6", "eval.k=2", "eval.rollout.max_turn_tokens=32",
    "rl.rollout.max_turn_tokens=32",
]
PERCEPTION = ("perception_locate", "perception", "perception_search", "perception_check", "perception_hard")
LEVELS = ("easy", "hard")  # the toy scene's levels


def _demo(root: Path, *options: str) -> list[str]:
    argv = ["demo", "--config", os.path.join(REPO, "configs", "demo.py"), "--out", str(root), "--ablation"]
    argv += [f"--config.{o}" for o in (*REDUCED, *options)]
    assert main(argv) == 0
    return argv


def _started_from(root: Path, stage: str) -> str:
    return json.loads((root / stage / "stage.json").read_text())["init"]


def test_reduced_demo_runs_every_stage_and_writes_its_report(tmp_path):
    """From the packaged base (the default, as `mini-o3 demo` runs): baseline, SFT, RL with and without
    over-turn masking, their evaluations and the report; a second run finds every stage complete."""
    from mini_o3_jax.infer import DEMO_BASE

    root = tmp_path / "demo"
    argv = _demo(root)
    summary = json.loads((root / "summary.json").read_text())
    assert not any((root / stage).exists() for stage in PERCEPTION)  # the base is their result
    assert _started_from(root, "baseline") == _started_from(root, "sft") == str(Path(DEMO_BASE).resolve())
    assert _started_from(root, "rl") == _started_from(root, "rl_no_mask") == str(root / "sft" / "final")
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


@pytest.mark.slow
def test_reduced_demo_from_scratch_trains_the_perception_chain(tmp_path):
    """`base=""`: a random init, then every perception stage, each from the last; baseline and SFT start from
    the last one. (Slow: 5 more training stages; the default run covers the stages after them.)"""
    root = tmp_path / "demo"
    _demo(root, "base=", *(f"{stage}.train.steps=2" for stage in PERCEPTION))
    summary = json.loads((root / "summary.json").read_text())
    start = str(root / "init")
    for stage in PERCEPTION:
        assert (root / stage / "final" / "mini_o3.json").exists() and stage in summary["timings"]
        assert _started_from(root, stage) == start
        start = str(root / stage / "final")
    assert _started_from(root, "baseline") == _started_from(root, "sft") == start
    assert set(summary["results"]) == {"baseline", "sft", "rl", "rl_no_mask"}


def test_demo_starts_from_the_packaged_base_with_its_tokenizer(tmp_path):
    """The default (`base="packaged"`): the run's tokenizer is the base's own (its embedding rows are those
    ids) with the demo's agent.json; a base without a tokenizer is one clear error."""
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.infer import DEMO_BASE
    from mini_o3_jax.toy.recipe import Recipe

    cfg = load_config(os.path.join(REPO, "configs", "demo.py"), [f"out_dir={tmp_path / 'run'}"])
    recipe = Recipe(cfg, console=None)
    assert recipe.base() == DEMO_BASE
    tok, proc = recipe.tokenizer()
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").read_bytes() == Path(
        DEMO_BASE, "tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "run" / "tokenizer" / "agent.json").read_text())["system_prompt"] is None
    cfg.base = str(tmp_path)
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        Recipe(cfg, console=None).base()


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


def _fake_seed_run(root, seed: int, acc: dict[str, tuple[float, float]]) -> None:
    """A seed's `summary.json` as `write_recipe_report` writes it: model -> benchmark -> metrics."""
    results = {m: {f"synthetic_{lv}": {"avg_at_k": a, "avg_at_k_se": 3.0, "mean_turns": 2.0, "samples_per_question": 8}
                   for lv, a in zip(LEVELS, pair)} for m, pair in acc.items()}
    run = root / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"results": results}))


def test_seeds_report_gives_mean_standard_error_and_paired_differences(tmp_path):
    """`mini-o3 demo --seeds`: accuracy over seeds as mean +- sample SD / sqrt(n), and RL - SFT paired by seed."""
    from mini_o3_jax.toy.recipe import write_seeds_report

    runs = {0: {"baseline": (30.0, 20.0), "sft": (70.0, 40.0), "rl": (68.0, 44.0)},
            1: {"baseline": (32.0, 24.0), "sft": (90.0, 36.0), "rl": (91.0, 41.0)},
            2: {"baseline": (28.0, 22.0), "sft": (50.0, 38.0), "rl": (52.0, 39.0)}}
    for s, acc in runs.items():
        _fake_seed_run(tmp_path, s, acc)
    path, summary = write_seeds_report(str(tmp_path), [0, 1, 2])
    sft_easy = summary["accuracy"]["sft"]["easy"]
    assert sft_easy["mean"] == pytest.approx(70.0) and sft_easy["se"] == pytest.approx(20.0 / 3 ** 0.5)
    d = summary["differences"]["rl-sft/hard"]
    assert d["per_seed"] == [4.0, 5.0, 1.0]
    assert d["mean"] == pytest.approx(10 / 3) and d["se"] == pytest.approx((13 / 3 / 3) ** 0.5)  # var 13/3 over 3 seeds
    text = Path(path).read_text()
    assert "| sft | 70.0 +- 11.5 | 38.0 +- 1.2 |" in text and "rl - sft" in text
    assert json.loads((tmp_path / "seeds.json").read_text())["seeds"] == [0, 1, 2]


@pytest.mark.parametrize("seeds", ["0", "0,0", "a,b"])
def test_demo_seeds_need_two_different_integers(seeds, capsys):
    assert main(["demo", "--seeds", seeds]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err and "Traceback" not in err
