"""Load ml-collections config files (`configs/*.py` exposing `get_config()`) with CLI overrides."""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from mini_o3_jax.errors import ConfigError


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Run `get_config()` from a Python config file, then apply `key.sub=value` overrides."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"_mini_o3_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report where it broke
        raise ConfigError(f"{path}: failed to execute ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    config = module.get_config()
    for item in overrides:
        apply_override(config, item, source=path)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str, source: str = "config") -> None:
    """`model.text.hidden_size=128` style override; values parsed as Python literals when possible."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        if p not in node:
            raise ConfigError(f"{source}: override {key!r}: no field {p!r}")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"{source}: override {key!r}: no field {parts[-1]!r} (have {sorted(node.keys())})")
    node[parts[-1]] = value
