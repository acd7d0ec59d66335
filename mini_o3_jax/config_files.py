"""Load ml-collections config files (`configs/*.py` exposing `get_config()`) with typed overrides.

    cfg = load_config("rl_tiny")                                   # a packaged config, by name
    cfg = load_config("configs/rl_grpo.py", ["train.steps=5"])     # `key=value` overrides
    cfg = load_config("configs/rl_grpo.py", args=["--config.model_path", "~/ckpt/sft"])  # CLI form
    optim = from_block(OptimConfig, cfg.optim, "optim")           # a block -> its typed dataclass

A config path that does not exist relative to the current directory is looked up among the configs
shipped with the package (`mini_o3_jax.configs`, the repository's `configs/`), so `mini-o3 sft --config
configs/sft_coldstart.py` works from any directory. Overrides are parsed against the type of the field they
replace (int, float, bool, str, list, tuple, a group of fields, or None); a leading `~` in any string field
is expanded to the home directory after the overrides (bash leaves `--config.model_path=~/ckpt` alone).

Why not `ml_collections.config_flags`: it accepts the same `--config.k v` forms and types, but lives in
absl's process-global FLAGS (defined once per process, parsed from sys.argv by `absl.app.run`), which does
not fit argparse subcommands or `cli.main([...])` called in-process (tests, notebooks), and reports a bad
value as absl's multi-line usage dump. This module keeps its override rules (int / float / bool / str /
list / tuple / group, `--config.flag` for true) and gives one-line errors with the closest field names.

Each block of a config maps 1:1 onto a frozen dataclass (`from_block`): the dataclass holds the defaults
and the checks, the block only the values an experiment chooses; `to_block` writes a dataclass back as a
block, for configs whose values are the dataclass defaults (configs/eval.py).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import ml_collections

from mini_o3_jax.errors import ConfigError

T = TypeVar("T")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
PREFIX = "--config."


def packaged_config_dir() -> str | None:
    """The folder of the configs shipped with the package: `mini_o3_jax.configs` when installed (a wheel, or
    an editable install, which maps it to the checkout's `configs/`), else a checkout's `configs/` beside
    the package (running from a source tree on PYTHONPATH). None when neither exists."""
    try:
        spec = importlib.util.find_spec("mini_o3_jax.configs")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    return checkout if os.path.isdir(checkout) else None


def packaged_configs() -> list[str]:
    """Names of the packaged configs (`rl_grpo`, `sft_tiny`, ...)."""
    folder = packaged_config_dir()
    if folder is None:
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def split_config_arg(path: str | os.PathLike) -> tuple[str, str | None]:
    """`configs/rl_grpo.py:tiny` -> (`configs/rl_grpo.py`, "tiny"): the text after the last `:` is the
    argument of the file's `get_config(arg)` (as big_vision's `config.py:runlocal`), unless the whole text
    names an existing file."""
    given = os.fspath(path)
    head, sep, arg = given.rpartition(":")
    if not sep or not head or os.path.exists(os.path.expanduser(given)) or os.sep in arg:
        return given, None
    return head, arg


def resolve_config_path(path: str | os.PathLike) -> str:
    """`path` itself when it exists (after `~` expansion), else the packaged config of that name:
    `configs/rl_grpo.py`, `rl_grpo.py` and `rl_grpo` all find `<package>/configs/rl_grpo.py`. A `:arg`
    suffix (`split_config_arg`) is left out."""
    given = split_config_arg(path)[0]
    expanded = os.path.expanduser(given)
    if os.path.isfile(expanded):
        return expanded
    if os.path.isdir(expanded):
        raise ConfigError(f"{given}: is a directory; expected a config file (.py with get_config())")
    name = os.path.basename(expanded)
    name = name[:-3] if name.endswith(".py") else name
    folder = packaged_config_dir()
    if folder is not None and name and os.path.isfile(os.path.join(folder, name + ".py")):
        return os.path.join(folder, name + ".py")
    known = ", ".join(packaged_configs()) or "none found"
    raise ConfigError(f"{given}: config file not found (relative to {os.getcwd()}), and no packaged config of that "
                      f"name; packaged configs: {known}")


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                args: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Run `get_config()` from a config file (or a packaged config by name; `file.py:arg` runs
    `get_config("arg")`, e.g. a config's `tiny` local mode), apply `key.sub=value` `overrides`, then
    command-line `args` (`--config.key=value` or `--config.key value`), then expand a leading `~` in string
    fields."""
    arg = split_config_arg(path)[1]
    path = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"_mini_o3_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:  # a config file is user code: report where it broke
        raise ConfigError(f"{path}: failed to execute ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    if arg is not None and not inspect.signature(module.get_config).parameters:
        raise ConfigError(f"{path}: get_config() takes no argument, so `:{arg}` does not apply")
    config = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned a {type(config).__name__}; expected an ml_collections.ConfigDict")
    for item in overrides:
        apply_override(config, item, source=path)
    for key, raw in split_override_args(config, args, source=path):
        set_field(config, key, raw, source=path)
    expand_home(config)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str, source: str = "config") -> None:
    """`model.text.hidden_size=128` style override, the value parsed against the field's type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    set_field(config, key.strip(), raw, source=source)


def split_override_args(config: ml_collections.ConfigDict, args: Sequence[str],
                        source: str = "config") -> list[tuple[str, str]]:
    """Command-line tokens -> (field, raw value) pairs, as ml_collections' config flags accept them:
    `--config.k=v`, `--config.k v`, and a bare `--config.flag` for a bool field (true)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith(PREFIX):
            name = token.lstrip("-").split("=", 1)[0]
            hint = f"; did you mean {PREFIX}{token.lstrip('-')}?" if name in field_names(config) else ""
            raise ConfigError(f"unknown argument {token!r}; expected {PREFIX}<field>=<value>{hint}")
        body = token[len(PREFIX):]
        if "=" in body:
            key, raw = body.split("=", 1)
            out.append((key, raw))
            i += 1
            continue
        _, _, current = _lookup(config, body, source)
        nxt = args[i + 1] if i + 1 < len(args) else None
        if isinstance(current, bool) and (nxt is None or nxt.startswith("--")):
            out.append((body, "true"))
            i += 1
        elif nxt is None or nxt.startswith(PREFIX):
            raise ConfigError(f"{token}: needs a value ({token}=VALUE or {token} VALUE)")
        else:
            out.append((body, nxt))
            i += 2
    return out


def set_field(config: ml_collections.ConfigDict, key: str, raw: str, source: str = "config") -> None:
    """Set the existing field `key` (dotted) from the text `raw`, checked against the field's type."""
    node, name, current = _lookup(config, key, source)
    what = f"{PREFIX}{key}={raw}"
    value = parse_value(raw, current, what)
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
        _merge_group(current, value, what)  # `--config.judge={'timeout_s': 2}` sets those fields, keeps the rest
        return
    try:
        node[name] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: {e}") from None


def _merge_group(group: ml_collections.ConfigDict, values: dict, what: str) -> None:
    """Set the fields `values` names in `group`, each checked against its type; the other fields are kept.
    (Assigning the dict would replace the group and drop every field it does not name.)"""
    for k, v in values.items():
        if k not in group:
            raise ConfigError(f"{what}: no field {k!r} in this group; it has {', '.join(sorted(group.keys()))}")
        if isinstance(group[k], ml_collections.ConfigDict) and isinstance(v, dict):
            _merge_group(group[k], v, what)
            continue
        try:
            group[k] = v
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{what}: field {k!r}: {e}") from None


def parse_value(raw: str, current: Any, what: str = "value") -> Any:
    """`raw` as a value of `current`'s type. `what` names the input in errors."""
    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{what}: expected a bool (true/false), the field is now {current}")
    if isinstance(current, int):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise ConfigError(f"{what}: expected an integer, the field is now {current}")
    if isinstance(current, float):
        try:
            return float(raw.strip())
        except ValueError:
            raise ConfigError(f"{what}: expected a number, the field is now {current}") from None
    if isinstance(current, str):
        if raw.strip() == "None":
            return None
        literal = _literal(raw)
        return literal if isinstance(literal, str) else raw
    if isinstance(current, list | tuple):
        literal = _literal(raw)
        if isinstance(literal, list | tuple):
            items = list(literal)
        elif raw.strip() == "":
            items = []
        else:  # `a,b` or `hard`: comma-separated items, each a literal if it parses as one
            items = [_literal(x.strip(), x.strip()) for x in raw.split(",")]
        return type(current)(items)
    if isinstance(current, ml_collections.ConfigDict | dict):
        literal = _literal(raw)
        if isinstance(literal, dict):
            return literal
        fields = ", ".join(sorted(current.keys()))
        raise ConfigError(f"{what}: this is a group of fields ({fields}); set one of them (e.g. "
                          f"{what.split('=')[0]}.FIELD=VALUE) or give a Python dict")
    if current is None:
        return _literal(raw, raw)
    literal = _literal(raw, raw)
    if not isinstance(literal, type(current)):
        raise ConfigError(f"{what}: the field holds a {type(current).__name__} ({current!r}), which cannot be set "
                          "from text")
    return literal


def _literal(raw: str, default: Any = None) -> Any:
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return default


def _lookup(config: ml_collections.ConfigDict, key: str, source: str) -> tuple[Any, str, Any]:
    """(the ConfigDict holding `key`, its last name, its value); an unknown key is a ConfigError with the
    closest field names."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict | dict) or part not in node:
            where = ".".join(parts[:depth])
            raise ConfigError(f"no field {key!r} in {source}{_suggest(config, key, node, where)}")
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1], node[parts[-1]]


def _suggest(config: ml_collections.ConfigDict, key: str, node: Any, where: str) -> str:
    """A "did you mean" for a missing field: a misspelt last name among its group's fields (the group's fields
    are listed too), anything else among every dotted field name."""
    parts, depth = key.split("."), len(where.split(".")) if where else 0
    if isinstance(node, ml_collections.ConfigDict | dict) and depth == len(parts) - 1:
        names = sorted(node.keys())
        close = [f"{where}.{c}" if where else c for c in difflib.get_close_matches(parts[-1], names, n=3, cutoff=0.6)]
        listing = f"; {where or 'the config'} has {', '.join(names)}" if len(names) <= 40 else ""
    else:
        close = difflib.get_close_matches(key, field_names(config), n=3, cutoff=0.6)
        if close:
            listing = ""
        elif isinstance(node, ml_collections.ConfigDict | dict):
            listing = f"; {where or 'the config'} has {', '.join(sorted(node.keys()))}"
        else:
            listing = f"; {where!r} is a {type(node).__name__}, not a group of fields"
    return (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "") + listing


def field_names(config: ml_collections.ConfigDict | dict, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted name (`train.steps`), for listings and suggestions."""
    out = []
    for k in sorted(config.keys()):
        v = config[k]
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict | dict) and len(v):
            out += field_names(v, name + ".")
        else:
            out.append(name)
    return out


def expand_home(config: ml_collections.ConfigDict | dict) -> None:
    """Expand a leading `~` in every string field (and strings in lists/tuples), in place: model_path,
    data.path, out_dir, ... written as `--config.model_path=~/ckpt`, which the shell does not expand."""
    for k in list(config.keys()):
        v = config[k]
        if isinstance(v, ml_collections.ConfigDict | dict):
            expand_home(v)
        elif isinstance(v, str) and v.startswith("~"):
            if os.path.expanduser(v) != v:
                config[k] = os.path.expanduser(v)
        elif isinstance(v, list | tuple) and any(isinstance(x, str) and x.startswith("~") for x in v):
            config[k] = type(v)(os.path.expanduser(x) if isinstance(x, str) else x for x in v)


def format_config(config: ml_collections.ConfigDict, path: str | None = None) -> str:
    """The resolved config as `mini-o3 <cmd> --show-config` prints it: one `--config.<field>=<value>` line per
    field, in a form that can be pasted back as an override."""
    lines = [f"# {path}"] if path else []
    for name in field_names(config):
        node, last, value = _lookup(config, name, "config")
        lines.append(f"{PREFIX}{name}={_show(value)}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, str):  # bare when it reads back as the same text, quoted otherwise
        plain = value and value == value.strip() and "\n" not in value and value != "None"
        return value if plain and not isinstance(_literal(value), str) else repr(value)
    if isinstance(value, ml_collections.ConfigDict):
        return repr(value.to_dict())
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def from_block(cls: type[T], block: Mapping[str, Any] | ml_collections.ConfigDict | None, where: str,
               **given: Any) -> T:
    """The dataclass `cls` from a config block, key for field: a nested block becomes the nested dataclass,
    a list a tuple where the field is one; a key the block leaves out takes the dataclass default (the one
    place a default lives). An unknown key is one ConfigError naming `where.key` and the closest field.
    `given` are fields the caller sets itself (typed values, not read from the block)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in (block or {}).items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {where}.{key}{hint}; {where} has {', '.join(names)}")
        values[key] = _typed(hints[key], value, f"{where}.{key}")
    values.update(given)
    try:
        return cls(**values)
    except ConfigError:
        raise  # the dataclass's own check names the field
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` as the field type `hint` wants it: nested dataclasses built, lists as tuples, groups as dicts."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, Mapping | ml_collections.ConfigDict):
            return from_block(option, value, where)
        if (option is tuple or typing.get_origin(option) is tuple) and isinstance(value, list | tuple | int | str):
            return tuple(value) if isinstance(value, list | tuple) else (value,)
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    return value


def to_block(obj: Any, skip: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A dataclass instance as a config block (tuples as lists, nested dataclasses as nested blocks), every
    field but `skip` (dotted for nested ones: `rollout.max_len`) listed, so that each can be overridden on
    the command line."""
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_block(value, [k[len(f.name) + 1:] for k in skip if k.startswith(f.name + ".")])
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
