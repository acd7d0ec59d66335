"""The sample puzzle `mini-o3 infer` runs without --image: a packaged asset, so `infer` needs no toy import,
that must stay what the toy generator makes (it fails here if the generator or the asset drifts)."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from mini_o3_jax.infer import SAMPLE_PUZZLE, sample_puzzle
from mini_o3_jax.toy.puzzles import make_puzzle
from mini_o3_jax.toy.scene import PRESETS
from mini_o3_jax.toy.writers import SAMPLE_PUZZLE as SAMPLE_SPEC
from mini_o3_jax.toy.writers import write_sample_puzzle


def test_packaged_sample_is_what_the_toy_generator_makes(tmp_path):
    png, meta = write_sample_puzzle(tmp_path)
    with open(meta, encoding="utf-8") as fresh, open(f"{SAMPLE_PUZZLE}.json", encoding="utf-8") as packaged:
        assert json.load(fresh) == json.load(packaged)
    sample = sample_puzzle()
    puzzle = make_puzzle(SAMPLE_SPEC["seed"], SAMPLE_SPEC["level"], PRESETS[SAMPLE_SPEC["preset"]]())
    assert (sample.question, sample.answer, sample.level) == (puzzle.question, puzzle.answer, puzzle.level)
    assert sample.image.mode == "RGB" and sample.image.size == puzzle.image.size
    assert sample.image.tobytes() == puzzle.image.tobytes()  # pixels, not PNG bytes (those depend on zlib)
    with Image.open(png) as written:
        assert written.convert("RGB").tobytes() == sample.image.tobytes()


def test_infer_reads_the_sample_without_the_toy_package():
    code = ("import sys; from mini_o3_jax.infer import sample_puzzle, toy_model_warning, DEMO_MODEL; "
            "p = sample_puzzle(); assert toy_model_warning(DEMO_MODEL, p.image) is None; "
            "print(sorted(m for m in sys.modules if m.startswith('mini_o3_jax.toy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
