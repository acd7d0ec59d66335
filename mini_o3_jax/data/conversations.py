"""sharegpt conversations (LLaMA-Factory's format, as Mini-o3's cold-start set stores them): parsed and checked.

The one parser behind `data prepare`, a run reading its own cold-start file, and SFT tokenisation, so a
conversation one of them keeps never fails in another.
"""

from __future__ import annotations

import ast
import json
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from mini_o3_jax.data.records import RecordError
from mini_o3_jax.data.rows import check_nesting, check_size, json_error

IMAGE = "<image>"
# sharegpt speaker -> chat role; LLaMA-Factory's tags (human/gpt) and the chat names both occur
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
COLDSTART_ROLES = tuple(SHAREGPT_ROLES)


def _conversation_value(text: str) -> Any:
    """A conversations string parsed as JSON, else as the Python literal Mini-o3 stored (`repr` of the
    list), only after bounding its size and depth: `ast.literal_eval`, never `eval`."""
    what = "field 'conversations'"
    check_size(len(text), what)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError as e:
        raise json_error(e, what) from None
    check_nesting(text, what)  # ast recurses in Python: refuse deep text unparsed
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise RecordError(f"{what} is a string that is neither JSON nor a Python list literal: "
                          f"{type(e).__name__}: {str(e)[:120]}") from None


def check_turn_order(turns: Sequence[Mapping[str, str]]) -> None:
    """LLaMA-Factory's sharegpt rule: an optional system turn, then human and gpt turns alternating,
    from human to gpt."""
    roles = [SHAREGPT_ROLES[t["from"]] for t in turns]
    if roles and roles[0] == "system":
        roles = roles[1:]
    if not roles or roles[0] != "user" or roles[-1] != "assistant":
        raise RecordError(f"conversations roles are {roles}; expected human/gpt turns starting with human and "
                          "ending with gpt")
    for i, role in enumerate(roles):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise RecordError(f"conversations turn {i} is {role!r}; expected human and gpt turns to alternate")


def parse_conversations(value: Any) -> list[dict[str, str]]:
    """sharegpt turns from a list or from its string form (JSON, or the Python repr Mini-o3 stored),
    checked turn by turn and for turn order. The one parser behind `data prepare` and SFT."""
    if isinstance(value, str):
        value = _conversation_value(value)
    if not isinstance(value, list) or not value:
        raise RecordError(f"field 'conversations' must be a non-empty list of turns, got {type(value).__name__} "
                          f"{_short(value)}")
    turns = []
    for k, turn in enumerate(value):
        if not isinstance(turn, Mapping) or turn.get("from") not in COLDSTART_ROLES or not isinstance(
                turn.get("value"), str):
            raise RecordError(f"conversations turn {k} is {_short(turn)}; expected {{'from': one of "
                              f"{list(COLDSTART_ROLES)}, 'value': text}}")
        turns.append({"from": turn["from"], "value": turn["value"]})
    check_turn_order(turns)
    return turns


def _short(value: Any) -> str:
    """A bounded repr for error messages (a cell may be huge or deeply nested)."""
    try:
        return f"{reprlib.repr(value):.80}"
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def check_image_count(turns: Sequence[Mapping[str, str]], n_images: int) -> None:
    """One image per `<image>` placeholder in the human turns, so no image is trained without its tokens."""
    placeholders = sum(t["value"].count(IMAGE) for t in turns if t["from"] in ("human", "user"))
    if placeholders != n_images:
        raise RecordError(f"{placeholders} {IMAGE} placeholder(s) in the human turns but {n_images} image(s); "
                          "expected one image per placeholder")
