"""Evaluation numbers from scored samples: Avg@K, pass@k, how episodes ended, accuracy vs turn limit.

Everything here is a pure function of `QuestionResult`s (what `results.jsonl` holds), so metrics can
be recomputed from a finished or resumed run's files without the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass
class SampleResult:
    """One of the K samples of a question, as scored."""

    score: float | None  # 1.0 / 0.0; None when the judge failed after its retries
    answer: str | None
    turns: int
    over_turn: bool = False
    over_length: bool = False
    void: bool = False
    tokens: int = 0  # the whole trajectory (prompt, model and environment tokens)
    response_tokens: int = 0  # model-sampled tokens
    detail: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per turn: text, box, crop...


@dataclasses.dataclass
class QuestionResult:
    benchmark: str
    doc_id: str
    category: str
    samples: list[SampleResult]
    problem: str = ""
    solution: str = ""
    answer_text: str = ""  # the solution in words (the option text for multiple choice)
    scorer: str = ""
    image: str = ""  # the saved model-view original, relative to the run directory

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> QuestionResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["samples"] = [SampleResult(**s) for s in d["samples"]]
        return cls(**kw)

    @property
    def scores(self) -> list[float]:
        """Scores with a failed judge counted as wrong (the paper's judge reports no abstentions)."""
        return [0.0 if s.score is None else float(s.score) for s in self.samples]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(results: Sequence[QuestionResult]) -> float:
    """Mean accuracy over all K samples of every question, in percent (the paper's Avg@K)."""
    per_question = [sum(r.scores) / len(r.scores) for r in results if r.samples]
    return 100.0 * sum(per_question) / len(per_question) if per_question else float("nan")


def avg_at_k_se(results: Sequence[QuestionResult]) -> float:
    """Standard error of `avg_at_k` over questions, in percent: the sample standard deviation of the
    per-question accuracies (each the mean of its K samples) over sqrt(#questions). It treats the questions
    as a sample of the benchmark's distribution and includes the sampling noise of the K samples; it says
    nothing about training noise (for that, compare runs of several seeds). NaN below two questions."""
    per_question = [sum(r.scores) / len(r.scores) for r in results if r.samples]
    n = len(per_question)
    if n < 2:
        return float("nan")
    mean = sum(per_question) / n
    var = sum((p - mean) ** 2 for p in per_question) / (n - 1)
    return 100.0 * math.sqrt(var / n)


def default_ks(k: int) -> list[int]:
    """1, 2, 4, ... up to K (and K itself)."""
    out, v = [], 1
    while v < k:
        out.append(v)
        v *= 2
    return out + [k]


def correct_within(sample: SampleResult, limit: int) -> bool:
    """Would this sample be correct had the episode been allowed only `limit` turns?

    The prompt and every environment message are the same whatever the limit, and sampling keys depend
    only on the question and the position, so up to turn `limit` the episode is the same one. A sample
    that answered within `limit` turns keeps its score; any other would have been cut at the limit
    (over-turn: reward 0). Valid for limits up to the run's own turn limit.
    """
    return sample.score is not None and sample.score > 0.5 and sample.turns <= limit


def turn_curve(results: Sequence[QuestionResult], limits: Iterable[int]) -> dict[int, float]:
    """Avg@K (percent) at each test-time turn limit, from one run at the largest limit."""
    out = {}
    for limit in sorted(set(limits)):
        per_q = [sum(correct_within(s, limit) for s in r.samples) / len(r.samples) for r in results if r.samples]
        out[limit] = 100.0 * sum(per_q) / len(per_q) if per_q else float("nan")
    return out


def summarize(results: Sequence[QuestionResult], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Avg@K, pass@k, turn and termination statistics of one benchmark (or one category of it)."""
    samples = [s for r in results for s in r.samples]
    n = len(samples)
    if not results or not n:
        return {"questions": len(results), "samples": 0}
    k = min(len(r.samples) for r in results)
    ks = [x for x in (ks or default_ks(k)) if 1 <= x <= k]
    passes = {}
    for x in ks:
        vals = [pass_at_k(len(r.samples), sum(v > 0.5 for v in r.scores), x) for r in results]
        passes[str(x)] = 100.0 * sum(vals) / len(vals)

    def rate(flag: str) -> float:
        return sum(bool(getattr(s, flag)) for s in samples) / n

    answered = [s for s in samples if s.answer is not None]
    return {
        "questions": len(results),
        "samples": n,
        "samples_per_question": k,
        "avg_at_k": avg_at_k(results),
        "avg_at_k_se": avg_at_k_se(results),
        "pass_at_k": passes,
        "mean_turns": sum(s.turns for s in samples) / n,
        "mean_turns_correct": (sum(s.turns for s in samples if s.score == 1.0)
                               / max(1, sum(s.score == 1.0 for s in samples))),
        "answered_rate": len(answered) / n,
        "over_turn_rate": rate("over_turn"),
        "over_length_rate": rate("over_length"),
        "void_rate": rate("void"),
        "judge_failed": sum(s.score is None for s in samples),
        "mean_response_tokens": sum(s.response_tokens for s in samples) / n,
        "mean_tokens": sum(s.tokens for s in samples) / n,
        "response_tokens": sum(s.response_tokens for s in samples),
    }


def summarize_benchmark(results: Sequence[QuestionResult], limits: Sequence[int],
                        ks: Sequence[int] | None = None) -> dict[str, Any]:
    """`summarize` overall and per category, plus the turn-limit curve."""
    out = summarize(results, ks)
    cats = sorted({r.category for r in results if r.category})
    if len(cats) > 1:
        out["by_category"] = {c: summarize([r for r in results if r.category == c], ks) for c in cats}
    out["turn_curve"] = {str(k): v for k, v in turn_curve(results, limits).items()}
    return out
