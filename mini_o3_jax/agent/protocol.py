"""Reading the model's turns the way Mini-o3's rollout did (recipe spec §1.3-§1.8, §4.5).

The released engine matched regexes on the decoded turn text (special tokens skipped) and `eval`'d
the box. We give the same answers as those regexes on every text, so the same turns become tool
calls, errors or answers, but with linear-time string searches: the released call regex backtracks
cubically (an 8K-token turn of call-like fragments took minutes and held the GIL). The box is read
as a bounded Python literal, never executed.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Sequence

from mini_o3_jax.errors import MiniO3Error

OPEN, CLOSE = "<grounding>", "</grounding>"
# The released call regex, kept here as the definition `find_call` implements (DOTALL, re.match):
#   .*<grounding>{"bbox_2d": (.*),.*"source": [',"](.*)[',"]}</grounding>
CALL_HEAD = '<grounding>{"bbox_2d": '
SOURCE_KEY = '"source": '
CALL_TAIL = "}</grounding>"
QUOTES = "',\""  # the regex's [',"] class: a quote, a comma or a double quote
OBSERVATION_RE = re.compile(r"observation_([0-9]*)")
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ORIGINAL_IMAGE = "original_image"
MAX_BOX_CHARS = 512  # a longer "box" is not a box; refuse it before parsing
MAX_BOX_DEPTH = 8  # bracket nesting allowed into the literal parser (a box needs 1)
MAX_INDEX_DIGITS = 18  # an observation index this long cannot exist
QUOTE_CHARS = 80  # model text quoted back in an error message is cut to this length


class ToolCallError(MiniO3Error, ValueError):
    """A malformed or impossible tool call. Its text goes back to the model in the error turn."""


@dataclasses.dataclass(frozen=True)
class ToolCall:
    box: tuple[float, float, float, float]  # relative to the source image, as the model wrote it
    source: str  # as written: "original_image" or "observation_<i>"
    index: int  # 0 = the original image, k = the k-th successful crop


def has_tool_call(text: str) -> bool:
    """Released detection, `re.search(r"<grounding>(.*?)</grounding>", DOTALL)`: some `<grounding>`
    is followed by a `</grounding>`. The first opening tag leaves the most room, so test only it."""
    start = text.find(OPEN)
    return start >= 0 and text.find(CLOSE, start + len(OPEN)) >= 0


def find_call(text: str) -> tuple[str, str] | None:
    """(box text, source text) exactly as the released regex's groups 1 and 2, or None.

    Its greedy quantifiers pick, in priority order, the last `<grounding>{"bbox_2d": ` that can still
    match, then the longest box, the longest gap, the longest source. Resolving from the end gives
    the same choice with four reverse scans: the last `[',"]}</grounding>`, the last `"source": [',"]`
    that ends before it, the last comma before that, the last call head before that comma.
    """
    end = _last_call_tail(text)
    if end < 0:
        return None
    source_at = _last_source_key(text, end)
    if source_at < 0:
        return None
    comma = text.rfind(",", 0, source_at)
    if comma < 0:
        return None
    head = text.rfind(CALL_HEAD, 0, comma)
    if head < 0:
        return None
    return text[head + len(CALL_HEAD):comma], text[source_at + len(SOURCE_KEY) + 1:end]


def _last_call_tail(text: str) -> int:
    """Index of the quote of the last `[',"]}</grounding>`, or -1."""
    at = text.rfind(CALL_TAIL)
    while at > 0 and text[at - 1] not in QUOTES:
        at = text.rfind(CALL_TAIL, 0, at + len(CALL_TAIL) - 1)
    return at - 1 if at > 0 else -1


def _last_source_key(text: str, end: int) -> int:
    """Start of the last `"source": [',"]` whose quote lies before index `end`, or -1."""
    at = text.rfind(SOURCE_KEY, 0, max(end - 1, 0))  # a negative bound would count from the end
    while at >= 0 and text[at + len(SOURCE_KEY)] not in QUOTES:
        at = text.rfind(SOURCE_KEY, 0, at + len(SOURCE_KEY) - 1)
    return at


def parse_tool_call(text: str, num_observations: int) -> ToolCall:
    """The last `<grounding>` call of a turn, checked against the `num_observations` images so far.

    Raises:
        ToolCallError: with a message for the model, for anything the released engine rejected and
            for anything it would have executed.
    """
    found = find_call(text)
    if found is None:
        raise ToolCallError(
            'the tool call must be <grounding>{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}'
            "</grounding> (or source observation_i), with bbox_2d first"
        )
    box_text, source = found
    box = _literal_box(box_text)
    index = _source_index(source, num_observations)
    return ToolCall(box=box, source=source, index=index)


def _quote(text: str) -> str:
    """Model text for an error message, cut short: the model needs a hint, not its turn echoed back."""
    return repr(text[:QUOTE_CHARS]) + ("..." if len(text) > QUOTE_CHARS else "")


def _source_index(source: str, num_observations: int) -> int:
    """Observation index of `source`: 0 for the original, i for a prefix `observation_<i>`."""
    if source == ORIGINAL_IMAGE:
        return 0
    m = OBSERVATION_RE.match(source)
    if m is None or not m.group(1):
        raise ToolCallError(f"source must be 'original_image' or 'observation_i', got {_quote(source)}")
    digits = m.group(1).lstrip("0") or "0"  # int() refuses > 4300 digits; such an index is absent anyway
    if len(digits) > MAX_INDEX_DIGITS or int(digits) >= num_observations:
        raise ToolCallError(
            f"source {_quote(source)} does not exist: only original_image"
            + (f" and observation_1..observation_{num_observations - 1}" if num_observations > 1 else "")
            + " are available"
        )
    return int(digits)


def _literal_box(text: str) -> tuple[float, float, float, float]:
    """Four finite floats from a list or tuple literal; anything else is the model's error.

    The size and nesting are bounded before `ast.literal_eval`, whose parser recurses.
    """
    text = text.strip()
    if len(text) > MAX_BOX_CHARS:
        raise ToolCallError(f"bbox_2d is {len(text)} characters long; expected a list of 4 numbers")
    if _bracket_depth(text) > MAX_BOX_DEPTH:
        raise ToolCallError(f"bbox_2d must be a list of 4 numbers, got {_quote(text)}")
    try:
        value = ast.literal_eval(text)
    except Exception:  # SyntaxError, ValueError, MemoryError, RecursionError...: not a literal
        raise ToolCallError(f"bbox_2d must be a list of 4 numbers, got {_quote(text)}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ToolCallError(f"bbox_2d must be a list of 4 numbers, got {_quote(text)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ToolCallError(f"bbox_2d must hold numbers, got {_quote(text)}")
    not_finite = ToolCallError(f"bbox_2d must hold finite numbers, got {_quote(text)}")
    try:
        box = tuple(float(v) for v in value)
    except OverflowError:  # an int beyond float range, e.g. 400 nines
        raise not_finite from None
    if not all(math.isfinite(v) for v in box):
        raise not_finite
    return box  # type: ignore[return-value]


def _bracket_depth(text: str) -> int:
    """Deepest nesting of ([{ in `text`, counting every bracket (an upper bound on the literal's)."""
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def pixel_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Relative box -> integer pixel box on a (width, height) source, with the released checks:
    scale by the full-resolution size, truncate to int, clamp into the image, >= 1 px per side,
    aspect ratio < 200.

    Raises:
        ToolCallError: the box is empty or too thin after clamping.
    """
    w, h = size
    # int() then clamp, as released; clamping the float first gives the same integers and cannot
    # overflow on a huge coordinate.
    x0, y0, x1, y1 = (int(min(max(v * s, 0.0), s - 1)) for v, s in zip(box, (w, h, w, h)))
    bw, bh = x1 - x0, y1 - y0
    if bw < 1 or bh < 1:
        raise ToolCallError(
            f"the box {list(box)} is {bw}x{bh} pixels on the {w}x{h} source after clamping; "
            "x1 must exceed x0 and y1 must exceed y0"
        )
    if max(bw, bh) / min(bw, bh) >= 200:
        raise ToolCallError(f"the box {list(box)} is {bw}x{bh} pixels; its aspect ratio must be below 200")
    return x0, y0, x1, y1


def is_final_answer(text: str) -> bool:
    """Whether a final turn ends with an answer (else the trajectory is void): the released
    `re.match(r".*<answer>.*</answer>$", DOTALL)`, where `$` also matches before one final newline."""
    body = text[:-1] if text.endswith("\n") else text
    if not body.endswith(ANSWER_CLOSE):
        return False
    return text.find(ANSWER_OPEN, 0, len(body) - len(ANSWER_CLOSE)) >= 0


def extract_answer(assistant_texts: Sequence[str]) -> str | None:
    """The scored answer: the first `<answer>...</answer>` of the assistant turns joined by spaces
    (the released `re.search(r"<answer>(.*?)</answer>", DOTALL)`; no closing tag after the first
    opening one means none after any later one either)."""
    text = " ".join(assistant_texts)
    start = text.find(ANSWER_OPEN)
    if start < 0:
        return None
    end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
    return None if end < 0 else text[start + len(ANSWER_OPEN):end]
