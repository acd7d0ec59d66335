"""A toy puzzle: a scene, a question about one object's label, and what the expert needs to solve it.

    puzzle = make_puzzle(7, "medium", SceneConfig.tiny())
    check_geometry(puzzle)  # the level's claims, measured on this puzzle
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

from PIL import Image

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import DATASET_IMAGE_PLACEHOLDER
from mini_o3_jax.toy.render import render_scene
from mini_o3_jax.toy.rng import Rng, derive
from mini_o3_jax.toy.scene import (
    CROP_MARGIN,
    HIDDEN_PX,
    ILLEGIBLE_STROKE,
    LEGIBLE_STROKE,
    LEVELS,
    LOCALISABLE_PX,
    SceneConfig,
    SceneObject,
    box_gap,
    glyph_illegible,
    glyph_legible,
    level_geometry,
    texture_illegible,
    texture_legible,
    view_scale,
)
from mini_o3_jax.toy.shapes import INK, TEXTURES, fitting_sizes

__all__ = ["Puzzle", "check_geometry", "iter_puzzles", "make_puzzle", "puzzles_for"]

@dataclasses.dataclass(frozen=True)
class Puzzle:
    """One question about one generated image, with everything the expert needs to solve it."""

    doc_id: str
    seed: int
    level: str
    image: Image.Image  # RGB, full resolution
    question: str
    answer: str
    target_box: tuple[float, float, float, float]  # relative to the image, [0, 1]
    candidate_boxes: tuple[tuple[float, float, float, float], ...]  # every object of the target's colour+shape
    objects: tuple[SceneObject, ...]
    target: int  # index into objects
    candidates: tuple[int, ...]  # the target and its look-alikes (hard), in reading order
    decoys: tuple[int, ...]  # same colour, different shape (`unique_colors`: same shape, another colour)
    config: SceneConfig
    kind: str  # "number", "letter" or "pattern" (texture labels)
    ink: str  # colour of the target's dot ("white" / "black"): its glyph's ink; white on a (black) texture

    @property
    def problem(self) -> str:
        """The user text of Mini-o3's JSON records."""
        return f"{DATASET_IMAGE_PLACEHOLDER}\n{self.question}"

    @property
    def target_object(self) -> SceneObject:
        return self.objects[self.target]

    @property
    def description(self) -> str:
        o = self.target_object
        return f"{o.color} {o.shape}" + (f" with a {self.ink} {self.config.mark}" if self.level == "hard" else "")


def _quadrant(cell: tuple[int, int] | None, gx: int, gy: int) -> tuple[int, int]:
    assert cell is not None
    return 2 * cell[0] // gx, 2 * cell[1] // gy


def _relative(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    w, h = size
    return (box[0] / w, box[1] / h, box[2] / w, box[3] / h)


def make_puzzle(seed: int, level: str, config: SceneConfig | None = None) -> Puzzle:
    """A scene and question of `level` ("easy", "medium", "hard"), fully determined by the arguments.

    Raises:
        ConfigError: unknown level, or a scene too crowded to place the target and its look-alikes.
    """
    config = config or SceneConfig()
    if level not in config.levels:
        raise ConfigError(f"level = {level!r}; expected one of {config.levels}")
    geo = level_geometry(config)
    g = geo[level]
    rng = Rng("puzzle", seed, level)
    w, h = config.width, config.height
    margin = max(4, min(w, h) // 32)
    min_gap = max(4, geo["easy"].size_range[0] // 3)
    placed: list[SceneObject] = []
    cell = g.cell
    free_cells = rng.shuffle([(i, j) for j in range(h // cell) for i in range(w // cell)]) if cell else []

    def place_cell(size: int, avoid_quadrant: tuple[int, int] | None = None) -> tuple | None:
        """Grid layout: the next free cell (outside `avoid_quadrant`), the object centred with a jitter
        that keeps its crop margin."""
        for k, (i, j) in enumerate(free_cells):
            if avoid_quadrant is not None and _quadrant((i, j), w // cell, h // cell) == avoid_quadrant:
                continue
            del free_cells[k]
            slack = (cell - size) // 2
            jit = max(0, min(cell // 16, slack - math.ceil(size * CROP_MARGIN)))
            x, y = i * cell + slack + rng.randint(-jit, jit), j * cell + slack + rng.randint(-jit, jit)
            return (x, y, x + size, y + size), (i, j)
        return None

    def place(size: int, far: Sequence[SceneObject] = (), far_gap: int = 0, tries: int = 400) -> tuple | None:
        for _ in range(tries):
            x, y = rng.randint(margin, w - margin - size), rng.randint(margin, h - margin - size)
            box = (x, y, x + size, y + size)
            if all(box_gap(box, o.box) >= min_gap for o in placed) and all(box_gap(box, o.box) >= far_gap for o in far):
                return box
        return None

    t_color = rng.choice(config.target_colors or config.colors)
    t_shape = rng.choice(g.target_shapes)
    texture = config.label == "texture"
    glyphs = list(TEXTURES) if texture else list(config.glyphs)
    answer = rng.choice(glyphs)
    label = g.label
    n_cand = rng.randint(*config.hard_candidates) if level == "hard" else 1
    cand_glyphs = [answer] + rng.shuffle([x for x in glyphs if x != answer])[: n_cand - 1]
    while len(cand_glyphs) < n_cand:
        cand_glyphs.append(rng.choice(glyphs))
    # Look-alikes are at least a legible zoom apart, so a tight zoom never shows two of them.
    far_gap = g.tight_side + 2 * math.ceil(max(w, h) / 10**config.box_decimals)
    cands: list[SceneObject] = []
    for i in range(n_cand):
        size = rng.choice(fitting_sizes(t_shape, *g.size_range, *label))
        box, where = place_cell(size) or (None, None) if cell else (place(size, cands, far_gap), None)
        if box is None:
            raise ConfigError(f"SceneConfig: could not place {n_cand} {level} look-alikes {far_gap} px apart in a "
                              f"{w}x{h} scene; use a larger scene")
        obj = SceneObject(t_shape, t_color, size, box, cand_glyphs[i], mark=(level == "hard" and i == 0),
                          role="target" if i == 0 else "candidate", cell=where)
        cands.append(obj)
        placed.append(obj)
    # At least one same-colour decoy (trial and error zooms it) and one same-shape object of another colour.
    decoy_level = "medium" if level == "medium" else "easy"
    other_shapes = [s for s in config.shapes if s != t_shape]
    other_colors = [col for col in config.colors if col != t_color]
    if config.unique_colors:  # one object per colour: the decoy shares the shape, the rest share nothing
        free = rng.shuffle(other_colors)[: config.distractors + 1]
        extra: list[tuple[str, str, str]] = [(t_shape, free[0], "decoy")] if config.decoy else []
        extra += [(rng.choice(config.shapes), col, "distractor") for col in free[int(config.decoy):]]
    else:
        extra = [(rng.choice(other_shapes), t_color, "decoy")] if config.decoy else []
        extra += [(t_shape, rng.choice(other_colors), "distractor")]
        combos = [(s, col) for s in config.shapes for col in config.colors if (s, col) != (t_shape, t_color)]
        extra += [(*rng.choice(combos), "distractor") for _ in range(config.distractors)]
    for i, (shape, color, role) in enumerate(extra):
        has_glyph = role == "decoy" or rng.random() < config.glyph_fraction
        lvl = decoy_level if role == "decoy" else rng.choice(tuple(lv for lv in ("easy", "medium") if lv in geo))
        fits = fitting_sizes(shape, *geo[lvl].size_range, *label)
        if has_glyph and not fits:
            has_glyph = False
        size = rng.choice(fits) if has_glyph else rng.randint(*geo[lvl].size_range)
        # the decoy is a look-alike's distance from them too: zooming it must not show the target
        if cell:  # medium: the decoy is in another quadrant, so trial and error has a wrong quadrant to zoom
            avoid = _quadrant(cands[0].cell, w // cell, h // cell) if role == "decoy" and level == "medium" else None
            box, where = place_cell(size, avoid) or (None, None)
        else:
            box, where = place(size, cands if role == "decoy" else (), far_gap, tries=400 if i < 2 else 60), None
        if box is None:
            if i < 2:
                raise ConfigError(f"SceneConfig: no room for the {role} in a {w}x{h} scene; use a larger scene")
            continue
        mark = level == "hard" and has_glyph and rng.random() < config.mark_fraction
        placed.append(SceneObject(shape, color, size, box, rng.choice(glyphs) if has_glyph else None, mark, role,
                                  where))

    image = render_scene(config, placed, level, rng.u64())
    target = placed[0]
    kind = "pattern" if texture else "number" if answer.isdigit() else "letter"
    ink = "white" if texture else INK[t_color]
    desc = f"{t_color} {t_shape}" + (f" with a {ink} {config.mark}" if level == "hard" else "")
    question = rng.choice((f"What pattern is on the {desc}?", f"Which pattern fills the {desc}?") if texture else
                          (f"What {kind} is written on the {desc}?", f"Which {kind} is on the {desc}?"))
    candidates = tuple(sorted(range(n_cand), key=lambda i: (placed[i].box[1], placed[i].box[0])))
    return Puzzle(
        doc_id=f"synthetic_{level}_{seed}", seed=seed, level=level, image=image, question=question,
        answer=answer, target_box=_relative(target.box, (w, h)),
        candidate_boxes=tuple(_relative(placed[i].box, (w, h)) for i in candidates),
        objects=tuple(placed), target=0, candidates=candidates,
        decoys=tuple(i for i, o in enumerate(placed) if o.role == "decoy"),
        config=config, kind=kind, ink=ink)


def check_geometry(puzzle: Puzzle) -> dict[str, float]:
    """Measure the level's claims on this puzzle; raise AssertionError if one does not hold.

    Returns the measurements (view px of the target and of a stroke in each view) for reports.
    """
    cfg, t, c = puzzle.config, puzzle.target_object, puzzle.config.glyph_cell
    g = level_geometry(cfg)[puzzle.level]
    s0 = g.original_scale
    m = {"original_scale": s0, "target_view_px": t.size * s0, "stroke_view_px": c * s0,
         "window_scale_max": g.window_scale[1], "tight_side": float(g.tight_side)}
    texture = cfg.label == "texture"
    assert texture_illegible(s0) if texture else glyph_illegible(c, s0), m
    if puzzle.level == "medium":
        assert t.size * s0 <= HIDDEN_PX and t.size * g.window_scale[0] >= LOCALISABLE_PX, m
        assert glyph_illegible(c, g.window_scale[1]), m
    else:
        assert t.size * s0 >= LOCALISABLE_PX, m
    if puzzle.level == "hard":
        marked = [i for i in puzzle.candidates if puzzle.objects[i].mark]
        assert len(puzzle.candidates) >= 2 and marked == [puzzle.target], m
        assert cfg.mark_px * s0 < (LEGIBLE_STROKE if texture else ILLEGIBLE_STROKE), m
        assert cfg.mark_px >= LEGIBLE_STROKE, m
        assert all(puzzle.objects[i].size * s0 >= LOCALISABLE_PX for i in puzzle.candidates), m
    same = [o for o in puzzle.objects if (o.color, o.shape) == (t.color, t.shape)]
    assert len(same) == len(puzzle.candidates), "the target's colour+shape must be unique outside the look-alikes"
    if g.cell:  # grid: each object alone inside its cell, which a zoom shows 1:1 (glyph and dot legible)
        n = g.cell
        cells = [o.cell for o in puzzle.objects]
        assert len(set(cells)) == len(cells), "at most one object per cell"
        for o in puzzle.objects:
            assert o.cell is not None and o.cell[0] * n < o.box[0] and o.box[2] < (o.cell[0] + 1) * n - 1, o
            assert o.cell[1] * n < o.box[1] and o.box[3] < (o.cell[1] + 1) * n - 1, o
        m["cell_scale"] = view_scale(n, n, cfg.view_pixels)
        legible = texture_legible(m["cell_scale"]) if texture else glyph_legible(c, m["cell_scale"])
        assert legible and cfg.mark_px * m["cell_scale"] >= LEGIBLE_STROKE, m
    return m


def iter_puzzles(split: str, n: int, seed: int, config: SceneConfig) -> Iterator[Puzzle]:
    """The `n` puzzles of a split, made one at a time (a default-preset scene is 38 MB of pixels)."""
    levels = (split,) if split in LEVELS else config.levels  # other splits take the levels in turn
    for i in range(n):
        level = levels[i % len(levels)]
        p = make_puzzle(derive("synthetic", split, seed, i), level, config)
        yield dataclasses.replace(p, doc_id=f"{split}_{i:05d}")


def puzzles_for(split: str, n: int, seed: int, config: SceneConfig) -> list[Puzzle]:
    return list(iter_puzzles(split, n, seed, config))
