"""One scorer for RL and eval: a rule scorer by name, or the LLM judge, behind one non-blocking `submit`.

RL submits a rollout batch right after decoding and waits on the future before its advantages; eval submits
each question's K answers as soon as they are sampled and collects the finished futures between engine steps.
Either way the judge's latency overlaps decoding, and a failed judgement is marked, never guessed.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.scoring.judge import JudgeError, JudgeItem, LLMJudge
from mini_o3_jax.scoring.judge_config import JudgeConfig, judge_from_config
from mini_o3_jax.scoring.rules import rule_score


def extract_answer(texts: Sequence[str] | str) -> str | None:
    """Return the stripped text of the first ``<answer>...</answer>`` span, or ``None`` when there is none.

    The released "strict" extraction: ``texts`` are the assistant turns of one trajectory (or one joined
    string), joined with single spaces as `agent.protocol.extract_answer` (the one parser of answers) does,
    so an answer opened in one turn and closed in a later one still counts. No span: reward 0, no judge call.
    """
    answer = protocol.extract_answer([texts] if isinstance(texts, str) else list(texts))
    return None if answer is None else answer.strip()


class Question(Protocol):
    """What a trajectory is scored against: the raw dataset problem and solution."""

    @property
    def problem(self) -> str: ...

    @property
    def solution(self) -> str: ...


def trajectory_items(questions: Sequence[Question], trajs: Sequence[Trajectory]) -> list[JudgeItem]:
    """One item per trajectory: its question's raw problem and solution and its answer, stripped as
    :func:`extract_answer` strips it (the trajectory already holds the first ``<answer>`` span)."""
    return [JudgeItem(q.problem, q.solution, None if t.answer is None else t.answer.strip())
            for q, t in zip(questions, trajs)]


class Scores(NamedTuple):
    """The scores of one submission, in item order: ``rewards`` (float32) holds 0.0 where the judge gave no
    score and ``failed`` marks those, so RL can drop their groups and eval keep them unjudged for a re-run."""

    rewards: np.ndarray
    failed: np.ndarray

    def as_list(self) -> list[float | None]:
        """The scores with ``None`` for each failed judgement (eval's results files store them so)."""
        return [None if f else float(r) for r, f in zip(self.rewards, self.failed)]


def asked_of(items: Sequence[JudgeItem]) -> np.ndarray:
    """Which items the judge is asked about: an item without an answer scores 0 unasked."""
    return np.array([i.answer is not None for i in items], bool)


class Scorer:
    """Scores answers with ``kind``: "judge" (the LLM judge of ``judge``, the paper's reward), a rule scorer
    ("choice", "exact", "numeric"), or "auto": the rule each submission names (eval's per-record choice)."""

    def __init__(self, kind: str, judge: JudgeConfig | None = None):
        if kind not in ("judge", "auto"):
            rule_score(kind, None, "")  # an unknown name fails here, not on the first answer
        if kind == "judge" and judge is None:
            raise ValueError("Scorer('judge') needs a JudgeConfig (see judge_from_config)")
        self.kind = kind
        self.judge = LLMJudge(judge) if kind == "judge" and judge is not None else None

    @staticmethod
    def check(kind: str, judge: Mapping[str, Any] | None = None) -> JudgeConfig | None:
        """Validate a scorer's settings (a rule scorer's name, or for "judge" the judge block's endpoint and
        prompts) without starting anything, so that a mistake stops a run before the model is loaded.
        Returns the judge's config, or None for a rule scorer."""
        if kind != "judge":
            rule_score(kind, None, "")
            return None
        return judge_from_config(judge)

    @property
    def endpoint(self) -> str | None:
        """The judge's URL (no credentials in it), or None without a judge."""
        return None if self.judge is None else self.judge.endpoint

    @property
    def last_error(self) -> str | None:
        """Why the judge's latest failed attempt failed (key-redacted), or None."""
        return None if self.judge is None else self.judge.last_error

    def submit(self, items: Sequence[JudgeItem], rule: str | None = None) -> concurrent.futures.Future:
        """Score ``items`` and return at once a future of their :class:`Scores`: a rule scorer's is already
        done, the judge's completes on its thread. ``rule`` names the items' own rule scorer, which a
        scorer of kind "auto" uses. A judge fault fails no future; only a bug's exception reaches it."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        if self.judge is None:
            kind = rule if self.kind == "auto" else self.kind
            rewards = np.array([rule_score(kind, i.answer, i.solution) for i in items], np.float32)
            out.set_result(Scores(rewards, np.zeros(len(items), bool)))
            return out
        inner = self.judge.submit(items)

        def done(f: concurrent.futures.Future) -> None:
            try:  # an error must reach the waiting loop, or it would wait forever
                scores = f.result()
                out.set_result(Scores(np.array([0.0 if s is None else s for s in scores], np.float32),
                                      np.array([s is None for s in scores], bool)))
            except BaseException as exc:
                out.set_exception(exc)

        inner.add_done_callback(done)
        return out

    def check_judge(self, asked: np.ndarray, failed: np.ndarray, *, where: str, batch: str, fix: str) -> None:
        """Raise JudgeError when the judge failed on every answer of ``batch`` it was asked about (``asked``:
        `asked_of(items)`): it is unreachable or refusing, and asking again would only repeat that. ``where``
        opens the message and ``fix`` ends it."""
        asked = np.asarray(asked, bool)
        if self.judge is None or not failed.any() or (asked & ~failed).any():
            return
        j = self.judge
        raise JudgeError(f"{where}: the judge at {j.endpoint} gave no usable score for any of the "
                         f"{int(failed.sum())} answer(s) of {batch} ({j.config.attempts} attempt(s) each); "
                         f"last error: {j.last_error}. {fix}")

    def close(self) -> None:
        """Wait for outstanding judgements and stop the judge (idempotent)."""
        if self.judge is not None:
            self.judge.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
