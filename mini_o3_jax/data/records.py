"""One record type per kind of data: `Record` (a question and its image) for every benchmark, RL prompt
set and inference question; `ConversationRecord` for a cold-start SFT trajectory.

The parsers in `formats.py` turn each published format's rows into these; a row that cannot be used
becomes a `BadRecord` naming the file, the row and the reason, so nothing disappears silently.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence

from mini_o3_jax.errors import MiniO3Error
from mini_o3_jax.processing.image import ImageSource

LETTERS = string.ascii_uppercase


class RecordError(MiniO3Error, ValueError):
    """A dataset row is unusable (missing image, no `<image>` in the problem, empty answer, ...)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """A question with its image, as the agent and the scorers consume it.

    A prepared set gives the image as its encoded bytes exactly as published; a run reading its own file
    gives the checked path, loaded when used. A free question (inference) has no benchmark, id or answer.
    """

    image: ImageSource  # encoded bytes (prepared sets) or a checked file path (a file read directly)
    problem: str  # the user text given to the model; starts with "<image>\n"
    solution: str = ""  # the ground truth: the answer text, or the option letter for multiple choice
    benchmark: str = ""  # registry name, e.g. "visualprobe_hard", "vstar", "hrbench_4k"
    doc_id: str = ""  # unique within the benchmark
    data_source: str = ""  # Mini-o3's data_source key, e.g. "visual_probe_hard", "vstar_bench"
    options: tuple[str, ...] = ()  # multiple choice: option texts in letter order (A, B, ...)
    category: str = ""  # difficulty or the benchmark's own category, for per-category metrics

    @property
    def multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def choices(self) -> dict[str, str]:
        return dict(zip(LETTERS, self.options))

    @property
    def answer_text(self) -> str:
        """The correct answer in words (the option text for multiple choice)."""
        return self.choices.get(self.solution, self.solution) if self.options else self.solution

    @property
    def scorer(self) -> str:
        """The rule scorer that is exact for this record: "choice" for multiple choice, else "exact"."""
        return "choice" if self.options else "exact"


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A row that was not turned into a Record, and why."""

    source: str  # the file it came from
    row: int | str  # its index (or key) in that file
    doc_id: str
    reason: str

    def __str__(self) -> str:
        ident = f" (doc_id {self.doc_id})" if self.doc_id else ""
        return f"{self.source}: row {self.row}{ident}: {self.reason}"


def describe_bad(bad: Sequence[BadRecord], limit: int = 20) -> str:
    """Bad rows one per line (indented), at most `limit` of them, then how many more: a screenful to act on."""
    lines = [f"  {b}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


class SourceError(MiniO3Error, FileNotFoundError):
    """A benchmark's source directory or file is missing or is not in any published layout."""


@dataclasses.dataclass(frozen=True)
class ConversationRecord:
    """One cold-start SFT trajectory: sharegpt turns plus the images its `<image>` placeholders stand for."""

    doc_id: str  # a direct read names a row without an id `file[row]`
    conversations: list[dict[str, str]]  # [{"from": "system"|"human"|"gpt", "value": ...}, ...]
    images: tuple[ImageSource, ...]  # in placeholder order (question image first): bytes or checked paths
    data_source: str


# --------------------------------------------------------------------------------------------------
# Multiple choice: options in the problem text, answer letters
# --------------------------------------------------------------------------------------------------

_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s*(.*?)\s*$")
_OPTION_INLINE = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)")
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:]?$")


def lettered(options: Sequence[str]) -> list[str]:
    """`["red", "blue"]` -> `["(A) red", "(B) blue"]`, the option-line form V* and MME-RealWorld print."""
    return [f"({letter}) {text}" for letter, text in zip(LETTERS, options)]


def _in_order(found: list[tuple[str, str]]) -> list[str] | None:
    letters = [letter for letter, _ in found]
    return [text for _, text in found] if letters == list(LETTERS[: len(found)]) else None


def parse_options(text: str) -> list[str]:
    """Option texts printed in `text` as "(A) ..." lines (or inline "(A) x (B) y"), in letter order.

    Returns [] when there are none, or when the letters do not run A, B, C, ... without a gap, so a
    stray "(C)" in a question is not mistaken for options.
    """
    found = [(m.group(1), m.group(2)) for m in map(_OPTION_LINE.match, text.splitlines()) if m]
    if not found:
        for line in text.splitlines():
            found = [(m.group(1), m.group(2)) for m in _OPTION_INLINE.finditer(line)]
            if len(found) >= 2:
                break
    return (_in_order(found) or []) if len(found) >= 2 else []


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".")


def answer_letter(answer: str, options: Sequence[str]) -> str:
    """The option letter an answer names: "B", "(B)", "B.", "(B) blue" or the option text "blue".

    Raises RecordError saying what was expected, so a solution that matches nothing is reported
    instead of being scored against the wrong option.
    """
    answer = answer.strip()
    letters = LETTERS[: len(options)]
    m = _LETTER.match(answer)
    if m:
        if m.group(1) not in letters:
            raise RecordError(f"answer letter {m.group(1)!r} is not among the options {letters[0]}-{letters[-1]}")
        return m.group(1)
    m = _OPTION_LINE.match(answer)
    if m and m.group(1) in letters and _norm(m.group(2)) == _norm(options[LETTERS.index(m.group(1))]):
        return m.group(1)
    matches = [letter for letter, text in zip(letters, options) if _norm(text) == _norm(answer)]
    if len(matches) == 1:
        return matches[0]
    raise RecordError(f"answer {answer!r} is neither an option letter {letters[0]}-{letters[-1]} "
                      f"nor one of the option texts {list(options)}")

