"""Every notebook runs top to bottom in a fresh interpreter (with MINI_O3_SMOKE=1: training notebooks take
a few steps only), so the tours never rot; their key outputs are checked. They run as a user runs them:
from an empty working directory, with the installed package only (no checkout on the path), writing only
under that directory, and without deprecation warnings."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# Recorded inside the notebook's interpreter: every warning, however the libraries set their filters for
# display (Jupyter shows a DeprecationWarning raised by a cell's own code and every FutureWarning).
WARNINGS_PRELUDE = '''\
import atexit as _atexit, json as _json, warnings as _warnings
_seen = []
_warnings.simplefilter("always")
_warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: _seen.append(
    [category.__name__, f"{filename}:{lineno}", str(message)])
_atexit.register(lambda: open("warnings.json", "w").write(_json.dumps(_seen)))
'''
DEPRECATIONS = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")


def code_cells(path: pathlib.Path) -> list[str]:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4, f"{path}: expected nbformat 4"
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path}: no code cells"
    return cells


def notebook_script(path: pathlib.Path) -> str:
    return "\n\n".join(code_cells(path))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"01_backbone_tour.ipynb", "quickstart.ipynb", "train_tiny.ipynb"}


def test_the_readme_lists_every_notebook():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    for path in NOTEBOOKS:
        assert path.name in readme, f"README.md does not mention notebooks/{path.name}"


# A path into a source checkout, or a change of the import path: an installed package must be enough.
CHECKOUT = re.compile(r"sys\.path|__file__|\.\./|parents\[|[\"']configs/|\bREPO\b|tempfile")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_needs_no_checkout(path: pathlib.Path):
    for cell in code_cells(path):
        for line in cell.splitlines():
            assert not CHECKOUT.search(line), f"{path.name}: {line.strip()!r} (reads from a checkout or a temp dir)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: pathlib.Path, tmp_path: pathlib.Path):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    script = tmp_path / "notebook.py"
    script.write_text(WARNINGS_PRELUDE + "\n\n" + notebook_script(path))
    # the package as installed (`pip install -e .` or a wheel): no checkout root on PYTHONPATH
    env = dict(os.environ, JAX_PLATFORMS="cpu", TMPDIR=str(tmp), MINI_O3_SMOKE="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for needle in KEY_OUTPUTS.get(path.name, ()):
        assert needle in proc.stdout, f"{path.name}: {needle!r} missing from its output"
    for rel in WRITES[path.name]:
        assert (cwd / rel).is_file(), f"{path.name}: {rel} not written under the current directory"
    warned = json.loads((cwd / "warnings.json").read_text())
    bad = [w for w in warned if w[0] in DEPRECATIONS]
    assert not bad, f"{path.name} emitted deprecation warnings:\n" + "\n".join(" ".join(w) for w in bad)


# What each notebook must print besides running: the numbers and artefacts a reader looks for.
KEY_OUTPUTS = {
    # (run_roundtrip's contract is checked here: the notebook is its one run in the suite)
    "01_backbone_tour.ipynb": ("decoder q:", "image tokens", "max |logit difference|",
                               "hf vs orbax max |logprob diff|: 0.0 |"),
    "train_tiny.ipynb": ('"easy":', '"hard":', "| model | easy | hard |", "truth:"),
    "quickstart.ipynb": ("checkpoint:", "truth:", "correct:", "report:", "--- turn 1:",
                         "figure: runs/quickstart/quickstart_trajectory.png"),
}

# What each writes, relative to the directory it is run from.
WRITES = {
    "01_backbone_tour.ipynb": ("runs/backbone_tour/hf/config.json", "runs/backbone_tour/infer/report.html"),
    "quickstart.ipynb": ("runs/quickstart/report/report.html", "runs/quickstart/quickstart_trajectory.png"),
    "train_tiny.ipynb": ("runs/train_tiny_smoke/report.md", "runs/train_tiny_smoke/accuracy.png"),
}
