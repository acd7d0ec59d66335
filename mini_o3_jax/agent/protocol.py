"""Reading the model's turns the way Mini-o3's rollout did (recipe spec §1.3-§1.8, §4.5).

The released engine matched regexes on the decoded turn text (special tokens skipped) and `eval`'d
the box. We keep the regexes byte for byte, so the same turns become tool calls, errors or answers,
but read the box as a Python literal: the same result on every well-formed box, and model output is
never executed.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Sequence

from mini_o3_jax.errors import MiniO3Error

# Detection: any complete <grounding>...</grounding> makes the turn a tool call.
TOOL_CALL_RE = re.compile(r"<grounding>(.*?)</grounding>", re.DOTALL)
# Parsing (full-string match; the greedy prefix makes it read the *last* call in the turn). The key
# order bbox_2d -> source and the space after "bbox_2d": are part of the protocol.
CALL_RE = re.compile(r'.*<grounding>{"bbox_2d": (.*),.*"source": [\',"](.*)[\',"]}</grounding>', re.DOTALL)
OBSERVATION_RE = re.compile(r"observation_([0-9]*)")
# A final turn that does not end in an answer is "void" (logged, and scored 0 by the judge).
FINAL_ANSWER_RE = re.compile(r".*<answer>.*</answer>$", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ORIGINAL_IMAGE = "original_image"
MAX_BOX_CHARS = 512  # a longer "box" is not a box; refuse it before parsing


class ToolCallError(MiniO3Error, ValueError):
    """A malformed or impossible tool call. Its text goes back to the model in the error turn."""


@dataclasses.dataclass(frozen=True)
class ToolCall:
    box: tuple[float, float, float, float]  # relative to the source image, as the model wrote it
    source: str  # as written: "original_image" or "observation_<i>"
    index: int  # 0 = the original image, k = the k-th successful crop


def has_tool_call(text: str) -> bool:
    return TOOL_CALL_RE.search(text) is not None


def parse_tool_call(text: str, num_observations: int) -> ToolCall:
    """The last `<grounding>` call of a turn, checked against the `num_observations` images so far.

    Raises:
        ToolCallError: with a message for the model, for anything the released engine rejected.
    """
    m = CALL_RE.match(text)
    if m is None:
        raise ToolCallError(
            'the tool call must be <grounding>{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}'
            "</grounding> (or source observation_i), with bbox_2d first"
        )
    box_text, source = m.group(1), m.group(2)
    box = _literal_box(box_text)
    if source == ORIGINAL_IMAGE:
        index = 0
    else:
        s = OBSERVATION_RE.match(source)
        if s is None or not s.group(1):
            raise ToolCallError(f"source must be 'original_image' or 'observation_i', got {source!r}")
        index = int(s.group(1))
    if index >= num_observations:
        raise ToolCallError(
            f"source {source!r} does not exist: only original_image"
            + (f" and observation_1..observation_{num_observations - 1}" if num_observations > 1 else "")
            + " are available"
        )
    return ToolCall(box=box, source=source, index=index)


def _literal_box(text: str) -> tuple[float, float, float, float]:
    if len(text) > MAX_BOX_CHARS:
        raise ToolCallError(f"bbox_2d is {len(text)} characters long; expected a list of 4 numbers")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ToolCallError(f"bbox_2d must be a list of 4 numbers, got {text.strip()[:80]!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ToolCallError(f"bbox_2d must be a list of 4 numbers, got {text.strip()[:80]!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ToolCallError(f"bbox_2d must hold numbers, got {text.strip()[:80]!r}")
    if not all(math.isfinite(v) for v in value):
        raise ToolCallError(f"bbox_2d must hold finite numbers, got {text.strip()[:80]!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


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
    """Whether a final turn ends with an answer (else the trajectory is void)."""
    return FINAL_ANSWER_RE.match(text) is not None


def extract_answer(assistant_texts: Sequence[str]) -> str | None:
    """The scored answer: the first `<answer>...</answer>` of the assistant turns joined by spaces."""
    m = ANSWER_RE.search(" ".join(assistant_texts))
    return None if m is None else m.group(1)
