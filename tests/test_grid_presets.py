"""The grid-layout presets of the synthetic puzzles (mini_o3_jax/toy): the from-scratch demo's 8x8 grid
(`SceneConfig.demo`), the toy recipe's 4x4 grid (`SceneConfig.grid4`), its texture labels and border
mark (`SceneConfig.toy`), and the perception questions drawn from toy scenes. The free-layout presets,
replay and the released file formats are tested in test_synthetic.py."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.data.direct import read_prompts, read_sharegpt
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.toy.expert import GIVE_UP, PATTERNS, expert_trajectory
from mini_o3_jax.toy.perception import perception_question
from mini_o3_jax.toy.puzzles import check_geometry, make_puzzle
from mini_o3_jax.toy.rng import derive
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
from mini_o3_jax.toy.shapes import COLORS, TEXTURES, shape_mask, texture_mask
from mini_o3_jax.toy.tokenizer import protocol_corpus, tokenizer_texts, train_bpe_tokenizer
from mini_o3_jax.toy.writers import write_all
from tests.helpers import pixels, replay

TINY = SceneConfig.tiny()
DEFAULT = SceneConfig()
DEMO = SceneConfig.demo()
TOY = SceneConfig.toy()


@pytest.fixture(scope="module")
def demo_tokenizer():
    """The BPE the from-scratch demo trains on the grid preset's texts."""
    return train_bpe_tokenizer(protocol_corpus() + tokenizer_texts(DEMO, n=12), vocab_size=700)


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
    assert c * 1.0 >= LEGIBLE_STROKE and DEMO.mark_px >= LEGIBLE_STROKE  # ... glyph and dot legible
    assert c * s0 < ILLEGIBLE_STROKE and DEMO.mark_px * s0 < ILLEGIBLE_STROKE  # not in the original
    w_lo, w_hi = geo["medium"].window_scale  # the quadrants (447 or 448 px: pixel_box clamps the last one)
    assert 0.248 < w_lo <= w_hi < 0.251 and c * w_hi < ILLEGIBLE_STROKE
    assert geo["easy"].size_range == geo["hard"].size_range == (48, 72)  # 6-9 view px: localisable
    lo, hi = geo["medium"].size_range  # 3.1-4 view px in the original, 6.2-8 in its quadrant
    assert (lo, hi) == (25, 32) and hi * s0 <= HIDDEN_PX and lo * w_lo >= LOCALISABLE_PX


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
        assert len(e.gpt_turns) <= MAX_TURNS and e.pattern == pattern
        replay(p, e, demo_tokenizer, config)
        assert e.gpt_turns[-1].endswith(f"<answer>{p.answer}</answer>")


def test_a_give_up_search_stops_before_the_target_and_guesses(demo_tokenizer):
    """GIVE_UP (the turn-scaling demo's early answers): the same checks in reading order as "direct", cut after
    1 .. all misses, then a guessed label; a search whose first check is the target, or another level, is
    "direct"'s. Guesses are right by chance only (1 in 4 textures)."""
    import dataclasses

    config = dataclasses.replace(TOY, hard_candidates=(4, 7))
    stops, right = [], 0
    for seed in range(40):
        p = make_puzzle(seed, "hard", config)
        direct = expert_trajectory(p, seed=seed, pattern="direct")
        e = expert_trajectory(p, seed=seed, pattern=GIVE_UP)
        assert e.pattern == GIVE_UP and e.boxes == direct.boxes[: len(e.boxes)]
        guess = re.search(r"<answer>(.*)</answer>$", e.gpt_turns[-1])[1]
        if len(direct.boxes) == 1:  # the target came first: nothing to give up on
            assert e.gpt_turns == direct.gpt_turns
            continue
        assert 1 <= len(e.boxes) < len(direct.boxes) and guess in TEXTURES
        assert e.gpt_turns[:-1] == direct.gpt_turns[: len(e.boxes)]
        assert e.gpt_turns[-1] == f"<think>No border here. Too many left to check. Guess {guess}.</think>\n" \
                                  f"<answer>{guess}</answer>"
        stops.append(len(e.boxes) / (len(direct.boxes) - 1))
        right += guess == p.answer
        if seed < 6:
            replay(p, e, demo_tokenizer, config, answer=guess)
    assert len(stops) >= 25 and min(stops) < 0.5 and max(stops) == 1.0  # every stop point occurs
    assert right < len(stops) / 2
    for level in ("easy",):
        p = make_puzzle(0, level, config)
        assert expert_trajectory(p, pattern=GIVE_UP).gpt_turns == expert_trajectory(p, pattern="direct").gpt_turns
    picks = [expert_trajectory(make_puzzle(s, "hard", config), seed=s, weights={"direct": 1, GIVE_UP: 1}).pattern
             for s in range(40)]
    assert 10 < picks.count(GIVE_UP) < 30
    with pytest.raises(ConfigError, match="give_up"):
        expert_trajectory(make_puzzle(0, "hard", config), weights={"guess": 1.0})


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
    paths = write_all(tmp_path, n=1, seed=0, preset="demo")
    (rec,) = read_sharegpt(paths[4])
    assert '"source": "original_image"' in rec.conversations[2]["value"]
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
    assert c * s0 < ILLEGIBLE_STROKE and GRID4.mark_px * s0 < ILLEGIBLE_STROKE
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
        inside = shape_mask(t.shape, t.size)
        ink = texture_mask(t.glyph, x0, y0, t.size)
        assert (patch[inside & ink] == 0).all() and (patch[inside & ~ink] == COLORS[t.color]).all()
        assert 0.45 < (inside & ink).sum() / inside.sum() < 0.55  # half ink: every texture has the same tint
    for color in {c for c, _ in tints}:  # one colour's textures are indistinguishable in the original
        means = [np.mean(v, axis=0) for (c, _), v in tints.items() if c == color]
        assert np.ptp(np.array(means), axis=0).max() < 4.0, color


def test_toy_targets_are_red_and_every_other_object_has_its_own_colour():
    for seed in range(20):
        for level in ("easy", "hard"):
            p = make_puzzle(seed, level, TOY)
            t = p.target_object
            assert t.color == "red" and p.kind == "pattern" and p.answer in TEXTURES
            assert p.question.startswith(("What pattern is on the red", "Which pattern fills the red"))
            others = [o for i, o in enumerate(p.objects) if i not in p.candidates]
            assert len({o.color for o in others}) == len(others) and "red" not in {o.color for o in others}
            assert [p.objects[i].role for i in p.decoys] == ["decoy"]
            assert all(o.glyph in TEXTURES and o.shape == "square" for o in p.objects)
            if level == "hard":
                assert p.description.endswith("with a white border") and p.ink == "white"
                assert [i for i in p.candidates if p.objects[i].mark] == [p.target]
    e = expert_trajectory(make_puzzle(1, "easy", TOY), seed=0, pattern="trial_and_error")
    assert re.fullmatch(r"This (square|circle) is \w+, not red\. The red (square|circle) is in this cell\. Zoom in\.",
                        e.gpt_turns[1].split("</think>")[0].removeprefix("<think>"))


def test_toy_border_marks_the_hard_target_only_and_shows_only_when_zoomed():
    """`mark="border"`: a `mark_px` white frame on the hard target's silhouette, none on its look-alikes;
    half a view px wide in the original (under the 1-px visibility rule), 2 px in the cell zoom."""
    assert TOY.mark == "border" and TOY.mark_px * view_scale(448, 448, TOY.view_pixels) < ILLEGIBLE_STROKE
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
        texture_mask("zigzag", 0, 0, 4)
    p = make_puzzle(0, "easy", SceneConfig.toy(decoy=False))
    assert p.decoys == ()
    assert expert_trajectory(p, seed=3).pattern != "trial_and_error"
    with pytest.raises(ConfigError, match="needs a decoy"):
        expert_trajectory(p, pattern="trial_and_error")


def test_perception_questions_match_what_the_expert_and_the_environment_produce():
    for seed in range(6):
        p = make_puzzle(seed, "easy", TOY)
        first = expert_trajectory(p, seed=seed, pattern="direct").gpt_turns[0]
        conv, images = perception_question(seed, "locate", TOY)
        assert images[0] is not None and pixels(images[0]) == pixels(p.image)
        assert conv[0]["value"] == f"<image>\nWhere is the {p.description}?"
        assert f'"bbox_2d": {conv[1]["value"]}' in first  # the box the expert zooms, as it writes it
        conv, _ = perception_question(seed, "locate", TOY, style="expert")
        assert conv[0]["value"] == p.problem and conv[1]["value"] == first  # the expert's own first turn
        for style in ("short", "expert"):
            conv, (zoom,) = perception_question(seed, "read", TOY, style=style)
            name = conv[0]["value"].removeprefix("<image>\nWhat pattern is on the ").removesuffix("?")
            obj = next(o for o in p.objects if f"{o.color} {o.shape}" == name)
            box = protocol.pixel_box(tuple(v / 4 for v in (obj.cell[0], obj.cell[1], obj.cell[0] + 1, obj.cell[1] + 1)),
                                     p.image.size)
            assert pixels(zoom) == pixels(p.image.crop(box))  # the crop the environment makes of that cell
            want = obj.glyph if style == "short" else f"<think>It shows {obj.glyph}.</think>\n<answer>{obj.glyph}</answer>"
            assert conv[1]["value"] == want
        conv, _ = perception_question(seed, "dot", TOY)
        assert conv[1]["value"] in ("yes", "no") and conv[0]["value"].endswith("have a white border?")
        conv, images = perception_question(seed, "search", TOY, style="expert")  # the whole direct trajectory
        e = expert_trajectory(p, seed=seed, pattern="direct")
        assert conv == [m for m in e.conversations if m["from"] != "system"] and len(images) == len(e.images) == 2
        assert [pixels(a) for a in images] == [pixels(b) for b in e.images]
        conv, images = perception_question(seed, "search_hard", TOY, style="expert")
        e = expert_trajectory(make_puzzle(seed, "hard", TOY), seed=seed, pattern="direct")
        assert conv == [m for m in e.conversations if m["from"] != "system"] and len(images) == len(e.images) >= 2
        assert "It has the border." in conv[-1]["value"]
        conv, (image,) = perception_question(seed, "locate_hard", TOY, style="expert")  # the first turn alone
        assert conv == [m for m in e.conversations if m["from"] != "system"][:2] and pixels(image) == pixels(e.images[0])
        conv, _ = perception_question(seed, "locate_hard", TOY)
        assert f'"bbox_2d": {conv[1]["value"]}' in e.gpt_turns[0] and "first red square" in conv[0]["value"]
    answers = {perception_question(s, "dot", TOY)[0][1]["value"] for s in range(20)}
    assert answers == {"yes", "no"}
    first_is_target = 0
    for seed in range(40):  # "check": a hard trajectory up to the reaction to its first zoom
        conv, images = perception_question(seed, "check", TOY, style="expert")
        p = next(q for n in range(64)  # the puzzle drawn: the seed's own, or the n-th redraw for balance
                 if pixels((q := make_puzzle(derive("check", seed, n) if n else seed, "hard", TOY)).image)
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
        assert perception_question(seed, "check", TOY, style="expert")[0] == conv  # deterministic
    assert 12 <= first_is_target <= 28  # balanced: the target half of the time
    with pytest.raises(ConfigError, match="'expert' only"):
        perception_question(0, "check", TOY)
    with pytest.raises(ConfigError, match="'short' only"):
        perception_question(0, "dot", TOY, style="expert")
    with pytest.raises(ConfigError, match="'expert' only"):
        perception_question(0, "search", TOY)
    with pytest.raises(ConfigError, match="expected one of"):
        perception_question(0, "count", TOY)
    with pytest.raises(ConfigError, match="grid-layout"):
        perception_question(0, "read", TINY)
