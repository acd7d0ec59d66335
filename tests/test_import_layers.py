"""The package's layers: every import (lazy ones inside functions included) runs downward.

A lower layer never reaches up (the model does not know about training, processing not about the agent's
prompts, eval not about RL), so each layer can be read, tested and reused without the ones above it, and
the toy world (`mini_o3_jax.toy`) stays out of the production path: only the command line reaches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mini_o3_jax"

# Lowest first. Packages in one layer are peers and must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("storage",),
    ("atomic_io", "integrity", "config_files"),
    ("parallel",),
    ("model",),
    ("processing",),
    ("agent",),
    ("rollout",),
    ("data",),
    ("scoring",),
    ("train",),
    ("sft", "rl", "eval"),
    ("infer", "pipeline"),
    ("toy",),
    ("cli",),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit(module: str) -> str:
    """'mini_o3_jax.model.text' -> 'model': the top-level module or subpackage a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path, package: Path = PACKAGE) -> str:
    return "mini_o3_jax." + ".".join(path.relative_to(package).with_suffix("").parts)


def imports(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every `mini_o3_jax` import in a file, wherever it stands."""
    module = module_name(path, package)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("mini_o3_jax.")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            name = node.module
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                name = ".".join(base + [node.module])
            if name == "mini_o3_jax":  # `from mini_o3_jax import toy`
                out += [(node.lineno, f"mini_o3_jax.{a.name}") for a in node.names]
            elif name.startswith("mini_o3_jax."):
                out.append((node.lineno, name))
    return out


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def upward_imports(path: Path, package: Path = PACKAGE) -> list[str]:
    """The imports of `path` that reach a peer or a higher layer."""
    own = unit(module_name(path, package))
    return [f"{path.relative_to(package)}:{line} imports {name}" for line, name in imports(path, package)
            if unit(name) != own and LAYER[unit(name)] >= LAYER[own]]


def test_every_module_has_a_layer():
    assert sorted({unit(module_name(p)) for p in SOURCES} - set(LAYER)) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path):
    assert upward_imports(path) == []


def test_the_check_sees_upward_and_peer_imports(tmp_path):
    """A model module importing the trainer is caught, also inside a function; so is eval importing rl."""
    root = tmp_path / "mini_o3_jax"
    bad_model = root / "model" / "bad.py"
    bad_eval = root / "eval" / "bad.py"
    good = root / "train" / "good.py"
    for p in (bad_model, bad_eval, good):
        p.parent.mkdir(parents=True, exist_ok=True)
    bad_model.write_text("def f():\n    from mini_o3_jax.train.step import Trainer\n    return Trainer\n")
    bad_eval.write_text("from mini_o3_jax.rl import loop\nfrom mini_o3_jax.scoring import scorer\n")
    good.write_text("from mini_o3_jax.model.text import TextDecoder\nfrom . import step\n")
    assert upward_imports(bad_model, root) == ["model/bad.py:2 imports mini_o3_jax.train.step"]
    assert upward_imports(bad_eval, root) == ["eval/bad.py:1 imports mini_o3_jax.rl"]
    assert upward_imports(good, root) == []
