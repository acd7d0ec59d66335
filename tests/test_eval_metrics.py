"""Avg@K, pass@k, termination rates and the turn-limit curve against hand-computed values."""

from __future__ import annotations

import math

import pytest

from mini_o3_jax.eval.metrics import (
    QuestionResult,
    SampleResult,
    avg_at_k,
    avg_at_k_se,
    default_ks,
    pass_at_k,
    summarize,
    summarize_benchmark,
    turn_curve,
)
from mini_o3_jax.eval.report import PAPER_COLUMNS, results_table


def S(score, turns, **kw):
    return SampleResult(score=score, answer=None if score is None else "x", turns=turns, **kw)


# Three questions, four samples each. Turn counts chosen so the curve moves at every limit.
Q = [
    QuestionResult("b", "q1", "easy", [S(1.0, 1), S(1.0, 3), S(0.0, 2), S(1.0, 5)]),
    QuestionResult("b", "q2", "hard", [S(0.0, 6, over_turn=True), S(1.0, 4), S(0.0, 1, void=True), S(0.0, 2)]),
    QuestionResult("b", "q3", "hard", [S(0.0, 2), S(None, 3), S(0.0, 1, over_length=True), S(0.0, 6, over_turn=True)]),
]


def test_pass_at_k_matches_the_combinatorial_definition():
    # n=4, c=2: pass@1 = 2/4; pass@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6; pass@3 = 1 (only 2 wrong)
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 2, 3) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(32, 1, 32) == 1.0
    # brute force over all k-subsets for one case
    from itertools import combinations

    outcomes = [1, 0, 0, 1, 0]
    subsets = list(combinations(outcomes, 3))
    assert pass_at_k(5, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_avg_at_k_and_pass_at_k_by_hand():
    # per question accuracy: q1 3/4, q2 1/4, q3 0/4 (the failed judge counts as wrong) -> mean 1/3
    assert avg_at_k(Q) == pytest.approx(100 / 3)
    m = summarize(Q)
    assert m["questions"] == 3 and m["samples"] == 12 and m["samples_per_question"] == 4
    # pass@1 = mean(c/n) = Avg@K; pass@2: q1 1 - C(1,2)/C(4,2) = 1, q2 1 - C(3,2)/6 = 1/2, q3 0
    assert m["pass_at_k"]["1"] == pytest.approx(100 / 3)
    assert m["pass_at_k"]["2"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert m["pass_at_k"]["4"] == pytest.approx(100 * 2 / 3)
    assert m["mean_turns"] == pytest.approx((11 + 13 + 12) / 12)
    assert m["mean_turns_correct"] == pytest.approx((1 + 3 + 5 + 4) / 4)
    assert m["over_turn_rate"] == pytest.approx(2 / 12)
    assert m["over_length_rate"] == pytest.approx(1 / 12)
    assert m["void_rate"] == pytest.approx(1 / 12)
    assert m["judge_failed"] == 1
    assert m["answered_rate"] == pytest.approx(11 / 12)
    assert default_ks(32) == [1, 2, 4, 8, 16, 32] and default_ks(6) == [1, 2, 4, 6]


def test_avg_at_k_standard_error_by_hand():
    # per-question accuracies 3/4, 1/4, 0: mean 1/3, sample variance ((5/12)^2 + (1/12)^2 + (1/3)^2) / 2
    var = ((5 / 12) ** 2 + (1 / 12) ** 2 + (1 / 3) ** 2) / 2
    assert avg_at_k_se(Q) == pytest.approx(100 * math.sqrt(var / 3))
    assert summarize(Q)["avg_at_k_se"] == pytest.approx(avg_at_k_se(Q))
    assert avg_at_k_se(Q[:2]) == pytest.approx(100 * math.sqrt(((3 / 4 - 1 / 2) ** 2 * 2) / 1 / 2))
    assert math.isnan(avg_at_k_se(Q[:1]))


def test_turn_curve_by_hand():
    # correct samples and their turns: q1 {1, 3, 5}, q2 {4}; a sample counts at limit T if turns <= T
    curve = turn_curve(Q, [1, 2, 3, 4, 5, 6])
    expect = {1: (1 / 4) / 3, 2: (1 / 4) / 3, 3: (2 / 4) / 3, 4: (2 / 4 + 1 / 4) / 3, 5: (3 / 4 + 1 / 4) / 3,
              6: (3 / 4 + 1 / 4) / 3}
    for t, v in expect.items():
        assert curve[t] == pytest.approx(100 * v), t
    assert curve[6] == pytest.approx(avg_at_k(Q))  # at the run's own limit the curve is Avg@K
    # monotone by construction
    values = [curve[t] for t in sorted(curve)]
    assert values == sorted(values)


def test_per_category_summary_and_table():
    m = summarize_benchmark(Q, [2, 6])
    assert m["by_category"]["easy"]["avg_at_k"] == pytest.approx(75.0)
    assert m["by_category"]["hard"]["avg_at_k"] == pytest.approx(12.5)
    assert m["turn_curve"] == {"2": pytest.approx(100 / 12), "6": pytest.approx(100 / 3)}
    metrics = {"config": {"k": 4, "max_turns": 6}, "benchmarks": {"visualprobe_hard": m, "synthetic_hard": m}}
    table = results_table(metrics, label="ours")
    row = next(line for line in table.splitlines() if line.startswith("| **ours**"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(PAPER_COLUMNS) + 1
    assert cells[1] == "**33.3**" and all(c == "–" for c in cells[2:])
    assert "| Mini-o3 (paper) | 48.0 | 50.4 | 67.0 | 88.2 | 77.5 | 73.3 | 65.5 |" in table
    assert "| synthetic_hard | 33.3 |" in table
    assert not math.isnan(m["avg_at_k"])


def test_browser_shows_crops_and_filters(tmp_path):
    from mini_o3_jax.eval.report import write_browser

    turn = {"text": "<think>zoom</think><grounding>...</grounding>", "outcome": "crop", "source": "original_image",
            "box": [0.1, 0.2, 0.3, 0.4], "crop": "b/images/q1/s0_obs1.png"}
    q = QuestionResult("b", "q1", "easy", [S(1.0, 2, detail=[turn, {"text": "<answer>x</answer>", "outcome": "final"}]),
                                           S(0.0, 6, over_turn=True)], "<image>\nWhat?", "x", image="b/images/q1/original.png")
    page = write_browser([q], str(tmp_path / "b.html"), "t")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    assert "src='b/images/q1/s0_obs1.png'" in text and "src='b/images/q1/original.png'" in text
    assert "class='s correct'" in text and "class='s wrong overturn'" in text
    assert "correct (1)" in text and "wrong (1)" in text and "over-turn (1)" in text


def test_cli_data_synthetic_then_prepare(tmp_path, capsys):
    from mini_o3_jax.cli import main

    assert main(["data", "synthetic", "--out", str(tmp_path / "syn"), "--n", "2", "--preset", "tiny"]) == 0
    assert main(["data", "prepare", "--benchmark", "synthetic_hard", "--source", str(tmp_path / "syn" / "synthetic_hard"),
                 "--data-dir", str(tmp_path / "tfds")]) == 0
    assert "synthetic_hard: prepared 2 record(s)" in capsys.readouterr().out
    # a source with a broken row: reported by name, the good row kept
    import json

    path = tmp_path / "syn" / "synthetic_easy" / "val.json"
    rows = json.loads(path.read_text())
    rows[1]["problem"] = rows[1]["problem"].replace("<image>", "")
    path.write_text(json.dumps(rows))
    assert main(["data", "prepare", "--benchmark", "synthetic_easy", "--source", str(path.parent),
                 "--data-dir", str(tmp_path / "tfds")]) == 0
    out = capsys.readouterr().out
    assert "synthetic_easy: prepared 1 record(s)" in out and "1 unusable row" in out and rows[1]["doc_id"] in out \
        and "<image>" in out
