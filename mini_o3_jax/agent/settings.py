"""The agent settings a checkpoint runs with: its `agent.json` (the environment it was trained with), else
the released eval's.

Why here, in the agent layer: `mini-o3 infer`, `mini-o3 eval` and the toy recipe (which writes the file) all
resolve a model's turns, context, pixel budget and system prompt by this one rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.image import MINI_O3_MAX_PIXELS, MINI_O3_MIN_PIXELS

AGENT_FILE = "agent.json"
AGENT_KEYS = ("min_pixels", "max_pixels", "system_prompt", "max_turns", "max_context", "max_turn_tokens")
# What a checkpoint without agent.json runs with: the released eval (spec §1, §5) and Mini-o3's pixel budget.
RELEASED_AGENT: dict[str, Any] = {
    "min_pixels": MINI_O3_MIN_PIXELS, "max_pixels": MINI_O3_MAX_PIXELS, "system_prompt": EnvConfig.system_prompt,
    "max_turns": 12, "max_context": 32768, "max_turn_tokens": 8192,
}


def agent_settings(model: str | os.PathLike) -> dict[str, Any]:
    """The environment a checkpoint was trained with (`agent.json` beside its weights), if it says.

    A model trained with another pixel budget or without the system prompt (the toy recipe's) only
    behaves when run the same way; the released Mini-o3 needs no such file (the defaults are its).
    """
    path = os.path.join(os.fspath(model), AGENT_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return _checked(json.load(f), path)


def resolve_agent(model: str | os.PathLike | None, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The agent settings to run `model` with, as `mini-o3 infer` and `mini-o3 eval` both do.

    Each of `AGENT_KEYS` comes from `explicit` when it holds the key (what the caller or the user set; a
    `system_prompt` of None there means none), else from the checkpoint's `agent.json`, else from
    `RELEASED_AGENT`. `context_guard` is `explicit`'s, else min(2000, max_context // 4), so that a small
    context keeps room for a turn. A bad agent.json is a ConfigError naming the file.
    """
    explicit = explicit or {}
    unknown = sorted(set(explicit) - {*AGENT_KEYS, "context_guard"})
    if unknown:
        raise ConfigError(f"resolve_agent: unknown setting(s) {unknown}; expected keys among {AGENT_KEYS}")
    try:
        agent = agent_settings(model) if model is not None else {}
    except ValueError as e:  # a bad agent.json (a JSON error names no file on its own)
        where = os.path.join(os.fspath(model), AGENT_FILE)
        raise ConfigError(e if where in str(e) else f"{where}: {e}") from None
    out = {k: explicit[k] if k in explicit else agent.get(k, RELEASED_AGENT[k]) for k in AGENT_KEYS}
    out["context_guard"] = explicit.get("context_guard", min(2000, out["max_context"] // 4))
    return out


def _checked(settings: Any, where: str) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected a JSON object with keys among {AGENT_KEYS}")
    unknown = sorted(set(settings) - set(AGENT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected keys among {AGENT_KEYS}")
    return settings


def write_agent_settings(model: str | os.PathLike, **settings: Any) -> str:
    path = os.path.join(os.fspath(model), AGENT_FILE)
    _checked(settings, path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    return path
