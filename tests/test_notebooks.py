"""Every notebook runs top to bottom in a fresh interpreter (with MINI_O3_SMOKE=1: training notebooks take
a few steps only), so the tours never rot; their key outputs are checked."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def notebook_script(path: pathlib.Path) -> str:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4, f"{path}: expected nbformat 4"
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path}: no code cells"
    return "\n\n".join(cells)


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: pathlib.Path, tmp_path: pathlib.Path):
    script = tmp_path / "notebook.py"
    script.write_text(notebook_script(path))
    root = str(path.parent.parent)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path), MINI_O3_SMOKE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for needle in KEY_OUTPUTS.get(path.name, ()):
        assert needle in proc.stdout, f"{path.name}: {needle!r} missing from its output"


# What each notebook must print besides running: the numbers and artefacts a reader looks for.
KEY_OUTPUTS = {
    "train_tiny.ipynb": ('"easy":', '"hard":', "| model | easy | hard |", "truth:"),
    "quickstart.ipynb": ("checkpoint:", "truth:", "correct:", "report:", "--- turn 1:",
                         "figure: quickstart_trajectory.png"),
}
