"""Judge-free scorers for data sets whose answers are option letters, short strings or numbers.

Cheaper than the LLM judge, deterministic and usable offline; `SCORERS` names them for config files
(`reward.kind`, `eval.scorer`). Each maps (extracted answer or ``None``, raw solution) to 1.0 or 0.0.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping

from mini_o3_jax.errors import ConfigError

_WRAPPERS = " \t\n\r*`\"'"
# The whole answer is one letter, possibly bracketed and/or followed by a period/colon: "B", "(B)", "B.", "b)".
_BARE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")
# An option label opening the answer: "B) a red car", "(B) red", "B. red", "B: red". A bare "A red car" is not.
_LEADING_LABEL = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])[.:)])(?:\s|$)")
# A cue word followed by the letter: "The answer is B", "answer: (c)", "option b", "choice D".
_CUED_LETTER = re.compile(
    r"\b(?:answer|option|choice)\b\s*(?:is\b)?\s*:?\s*(?:option\s+|choice\s+)?\(?([A-Za-z])\b\)?(?=(\s*\w)?)",
    re.IGNORECASE,
)


def _choice_letter(text: str) -> str | None:
    """The option letter ``text`` names, upper-cased, or ``None`` when no single letter can be identified."""
    text = text.strip(_WRAPPERS)
    for pattern in (_BARE_LETTER, _LEADING_LABEL):
        match = pattern.match(text)
        if match:
            return next(g for g in match.groups() if g).upper()
    letters = set()
    for match in _CUED_LETTER.finditer(text):
        letter, next_word = match.group(1), match.group(2)
        # A lower-case letter followed by a word is an article ("the answer is a red car"), not an option.
        if letter.islower() and next_word is not None:
            continue
        letters.add(letter.upper())
    return letters.pop() if len(letters) == 1 else None


def score_choice(answer: str | None, solution: str) -> float:
    """1.0 when ``answer`` names the same option letter as ``solution`` (case-insensitive), else 0.0.

    Both sides accept "B", "(B)", "B.", "B) a red car"; the answer may also say "The answer is B" or
    "option b". An answer naming no letter, or several different ones, scores 0.0.
    """
    if answer is None:
        return 0.0
    mine, truth = _choice_letter(answer), _choice_letter(solution)
    return float(mine is not None and mine == truth)


_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _normalize(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def score_exact(answer: str | None, solution: str) -> float:
    """1.0 when the SQuAD-normalised answer equals the normalised solution, else 0.0.

    An answer that normalises to nothing (empty, or only punctuation/articles) scores 0.0 even against an
    equally empty solution, so that an empty ``<answer></answer>`` is never rewarded.
    """
    if answer is None:
        return 0.0
    mine = _normalize(answer)
    return float(bool(mine) and mine == _normalize(solution))


# Thousands groups only in the canonical 1,234,567 form; otherwise "1,2" is the number 1 followed by 2.
_NUMBER = re.compile(r"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)(\s*%)?")


def _first_number(text: str) -> tuple[float, bool] | None:
    """The first number in ``text`` and whether a percent sign follows it, or ``None``."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    return float(match.group(1).replace(",", "")), match.group(2) is not None


def score_numeric(answer: str | None, solution: str, rel_tol: float = 1e-6) -> float:
    """1.0 when the first numbers of ``answer`` and ``solution`` agree within ``rel_tol``, else 0.0.

    Accepts integers, decimals, signs and thousands separators ("1,234"). A percent sign is ignored
    ("50%" equals "50") and, when only one side has it, the fraction also matches ("50%" equals "0.5"),
    since data sets write percentages both ways. 0.0 when either side has no number.
    """
    if answer is None:
        return 0.0
    mine, truth = _first_number(answer), _first_number(solution)
    if mine is None or truth is None:
        return 0.0
    (a, a_pct), (b, b_pct) = mine, truth
    candidates = [(a, b)]
    if a_pct != b_pct:
        candidates.append((a / 100.0, b) if a_pct else (a, b / 100.0))
    return float(any(math.isclose(x, y, rel_tol=rel_tol, abs_tol=0.0) for x, y in candidates))


SCORERS: Mapping[str, Callable[[str | None, str], float]] = {
    "choice": score_choice,
    "exact": score_exact,
    "numeric": score_numeric,
}


def rule_score(kind: str, answer: str | None, solution: str) -> float:
    """Score with the rule-based scorer named ``kind`` (one of :data:`SCORERS`)."""
    try:
        scorer = SCORERS[kind]
    except KeyError:
        raise ConfigError(f"unknown rule scorer {kind!r}; known: {sorted(SCORERS)}") from None
    return scorer(answer, solution)
