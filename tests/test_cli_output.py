"""What the commands print and write (issue 16, items 11 and 13): `data synthetic` streams its files
(byte for byte what it wrote before, memory flat in --n, a progress bar, where it wrote), `export`
says which dtype it writes, `run` prints readable probabilities with token ids, and `infer` warns when
the packaged toy model is pointed at an image that is not a toy puzzle."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from mini_o3_jax.cli import main
from mini_o3_jax.errors import MiniO3Error
from mini_o3_jax.toy.roundtrip import scene
from tests.hf_reference import qwen_tokenizer_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- mini-o3 data synthetic ---------------------------------------------------------------------------

# Digests of `mini-o3 data synthetic --n 2 --seed 0 --preset P` as written by the list-building writer
# of commit 0a65db7 (before streaming): every JSON file's bytes, every PNG's pixels (mode, size, raw
# RGB). PNG pixels rather than PNG bytes because the compressed bytes also depend on the zlib build
# Pillow links; on this machine the PNG files themselves were checked identical too.
GOLDEN = {
    "tiny": "f63d5239d849bedc98e799cc655018315012e55c1bc40527c6b9877c2329d4b1",
    "toy": "56f357adf27fd8660b41da358fe6ed5fd206ba4874db147fb34908036083b334",
}


def tree_digest(root: str) -> str:
    """sha256 over (relative path, content digest) of every file, in sorted order."""
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if name.endswith(".png"):
                with Image.open(path) as im:
                    data = im.mode.encode() + str(im.size).encode() + im.tobytes()
            else:
                with open(path, "rb") as f:
                    data = f.read()
            h.update(os.path.relpath(path, root).encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.mark.parametrize("preset", sorted(GOLDEN))
def test_synthetic_streams_the_same_files_as_before(tmp_path, capsys, preset):
    out = tmp_path / "syn"
    assert main(["data", "synthetic", "--out", str(out), "--n", "2", "--preset", preset]) == 0
    assert tree_digest(str(out)) == GOLDEN[preset]
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".partial")]
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("writing 2 question(s) per level") and lines[0].endswith(f"under {out}")
    written = [line.removeprefix("wrote ") for line in lines[1:]]
    assert len(written) == (5 if preset == "tiny" else 4) and all(os.path.isfile(p) for p in written)
    # one progress bar per level and split, on stderr
    for name in ("synthetic_easy", "synthetic_hard", "synthetic_train", "coldstart"):
        assert re.search(rf"{name}: 100%.* {6 if name == 'synthetic_train' else 2}/", printed.err), name


def test_json_list_is_json_dump_byte_for_byte(tmp_path):
    from mini_o3_jax.toy.writers import _json_list

    for records in ([], [{}], [{"a": [1, {"b": "x\ny \u00e9"}], "c": []}], [{"k": i, "v": [i] * i} for i in range(3)]):
        path = str(tmp_path / "x.json")
        with _json_list(path) as add:
            for r in records:
                add(r)
        with open(path, encoding="utf-8") as f:
            assert f.read() == json.dumps(records, indent=1)
    # an error half-way leaves no file (nor a truncated one) under the final name
    with pytest.raises(RuntimeError), _json_list(str(tmp_path / "y.json")) as add:
        add({"a": 1})
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["x.json"]


def test_synthetic_holds_one_puzzle_at_a_time(tmp_path, monkeypatch):
    """Streaming: when a puzzle is made, every earlier puzzle's image has been released (the old writer
    held a whole split: 3 n images of 38 MB each at the default preset)."""
    import weakref

    from mini_o3_jax.toy import puzzles
    from mini_o3_jax.toy.writers import write_all

    made, alive_at_make = [], []
    make = puzzles.make_puzzle

    def tracked(*a, **kw):
        alive_at_make.append(sum(r() is not None for r in made))
        p = make(*a, **kw)
        made.append(weakref.ref(p.image))
        return p

    monkeypatch.setattr(puzzles, "make_puzzle", tracked)
    write_all(tmp_path, n=8, preset="toy")
    # at most the one just written is still referenced (a loop variable) when the next is made
    assert len(made) == 2 * 8 + 3 * 8 + 8 and max(alive_at_make) <= 1


def test_synthetic_memory_is_flat_in_n(tmp_path):
    """Peak RSS of a real process: writing n=16 after n=2 raises the peak by little (the old writer: by
    ~33 MB: a 448x448 scene held per puzzle of the 48-puzzle training split)."""
    code = (
        "import resource, sys\n"
        "from mini_o3_jax.toy.writers import write_all\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "write_all(sys.argv[1] + '/a', n=2, preset='toy'); small = peak()\n"
        "write_all(sys.argv[1] + '/b', n=16, preset='toy'); print(peak() - small)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert float(run.stdout) < 8.0, run.stdout  # MB


def test_synthetic_bad_n_is_one_error_line(tmp_path, capsys):
    assert main(["data", "synthetic", "--out", str(tmp_path / "o"), "--n", "0", "--preset", "toy"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --n 0: expected at least 1 question per level"
    assert not (tmp_path / "o").exists()


# --- export / run / infer on a tiny random checkpoint -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory) -> str:
    """A float32 random-weight tiny checkpoint (HF layout) with the Qwen tokenizer files."""
    hf = tmp_path_factory.mktemp("tiny") / "hf"
    cfg = os.path.join(REPO, "configs", "qwen2_5_vl_tiny.py")
    assert main(["init", "--config", cfg, "--out", str(hf), "--tokenizer", qwen_tokenizer_dir(), "--dtype", "float32",
                 "--override", "model.text.num_hidden_layers=1"]) == 0
    return str(hf)


def safetensors_dtypes(path) -> set[str]:
    """The dtypes named in a safetensors file's header."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_export_keeps_the_checkpoint_dtype_and_says_so(tmp_path, capsys, tiny_fp32):
    capsys.readouterr()
    assert main(["export", "--model", tiny_fp32, "--out", str(tmp_path / "same")]) == 0
    out = capsys.readouterr().out
    assert "writing float32 (the checkpoint's dtype)" in out and out.rstrip().endswith("(float32)")
    assert json.loads((tmp_path / "same" / "config.json").read_text())["torch_dtype"] == "float32"
    assert safetensors_dtypes(tmp_path / "same" / "model.safetensors") == {"F32"}

    assert main(["export", "--model", tiny_fp32, "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert "casting float32 -> bfloat16 as asked (--dtype bfloat16)" in capsys.readouterr().out
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert safetensors_dtypes(tmp_path / "bf16" / "model.safetensors") == {"BF16"}


def test_format_probability_keeps_three_significant_digits():
    from mini_o3_jax.pipeline import format_probability

    assert format_probability(0.5) == "50.0%"
    assert format_probability(1.0) == "100%"
    assert format_probability(1 / 151936) == "0.000658%"
    assert format_probability(1.234e-9) == "1.23e-07%"
    assert format_probability(0.0) == "0.00%"


def test_run_prints_readable_probabilities_with_ids(tmp_path, capsys, tiny_fp32):
    from mini_o3_jax.pipeline import Pipeline

    image = tmp_path / "scene.png"
    scene(1, (320, 240)).save(image)
    capsys.readouterr()
    assert main(["run", "--model", tiny_fp32, "--image", str(image), "--question", "What is red?", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("next-token distribution") and lines[0].endswith("top 3:")
    assert lines[1] == "  (uniform over 151,936 tokens: 0.000658% each)"  # the tiny preset's vocabulary
    assert lines[2].split() == ["rank", "prob", "id", "token"]
    rows = [re.fullmatch(r"\s+(\d)\s+(\S+)%\s+(\d+)\s+(.+)", line).groups() for line in lines[3:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    # the same numbers as the pipeline's, to three significant digits, and never all zero
    pipe = Pipeline.from_pretrained(tiny_fp32)
    want = pipe.top_next_token_ids(str(image), "What is red?", k=3)
    for (_, pct, tid, text), (i, t, p) in zip(rows, want):
        assert int(tid) == i and text == repr(t)
        assert float(pct) == pytest.approx(100 * p, rel=5e-3) and float(pct) > 0
    assert main(["run", "--model", tiny_fp32, "--image", str(image), "--question", "?", "--top-k", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top-k 0: expected at least 1 token to show"


def test_infer_warns_when_the_toy_model_gets_a_non_toy_image(tmp_path, capsys, monkeypatch):
    from mini_o3_jax import infer as infer_mod
    from mini_o3_jax.infer import DEMO_MODEL, toy_model_warning
    from mini_o3_jax.toy.puzzles import make_puzzle
    from mini_o3_jax.toy.scene import SceneConfig

    photo = tmp_path / "photo.png"
    scene(3, (640, 480)).save(photo)
    toy = tmp_path / "toy.png"
    make_puzzle(5, "hard", SceneConfig.toy()).image.save(toy)
    warning = toy_model_warning(DEMO_MODEL, str(photo))
    assert warning.startswith("warning: the packaged toy demo model only knows the toy puzzles (448x448")
    assert "on this 640x480 image" in warning and "\n" not in warning
    assert toy_model_warning(DEMO_MODEL, str(toy)) is None
    assert toy_model_warning(DEMO_MODEL, Image.open(photo)) == warning
    assert toy_model_warning(DEMO_MODEL, photo.read_bytes()) == warning
    assert toy_model_warning(tmp_path, str(photo)) is None  # another model: no opinion
    assert toy_model_warning(DEMO_MODEL, str(tmp_path / "missing.png")) is None  # infer reports that

    # the CLI prints it once, on stderr, before running the model (the packaged model's real run on the
    # sample is tests/test_cli.py::test_infer_without_arguments_runs_the_packaged_demo_model_on_a_sample)
    seen = []

    def stop(*a, **kw):
        err = capsys.readouterr().err.splitlines()  # less the (still empty) tqdm bar of turns
        seen.append([line for line in err if line.strip() and not line.startswith("turns:")])
        raise MiniO3Error("stopped before running")

    monkeypatch.setattr(infer_mod, "infer", stop)
    for model, image in ([], photo), ([], toy), (["--model", str(tmp_path)], photo):
        capsys.readouterr()
        assert main(["infer", *model, "--image", str(image), "--question", "What is red?", "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == "error: stopped before running"
    assert seen == [[warning], [], []]
