"""How a toy scene looks (`SceneConfig`), and the level rules its object sizes follow from.

Difficulty is geometry measured against the model's per-view pixel budget (`SceneConfig.view_pixels`:
the original is shrunk to it, and so is every raw full-resolution crop). With `s` the per-side scale
a view applies (`view_scale`; 1 when the region already fits the budget, upscaling adds nothing):

* a glyph (5x7 bitmap font, one font pixel = `glyph_cell` raw px) is **legible** in a view when a
  stroke spans >= 2 view px (`glyph_cell * s >= 2`) and **illegible** when it spans < 1 view px;
* an object can be **localised** in a view when its side spans >= 6 view px, and **cannot be
  localised precisely** when it spans <= 4 view px (under a third of a 14-px ViT patch);
* the hard level's mark (a dot `mark_px` wide, or with `mark="border"` a frame of that width) is
  visible at >= 2 view px and invisible under 1.

Levels (checked for every puzzle by `puzzles.check_geometry`, and for a config by `level_geometry`):

* easy: the target is localisable in the original view; its glyph is illegible there and legible in
  one tight zoom around it.
* medium: the target cannot be localised precisely in the original view; it is localisable in a
  coarse zoom (a half-width, half-height window) whose glyph is still illegible; a second zoom into
  that observation (`source: "observation_1"`) reads it.
* hard: 2+ candidates share the target's colour and shape; only the target carries the mark (a dot or
  a border), invisible in the original and visible in a tight zoom; they must be checked in turn.

Grid layout (`SceneConfig.demo()`, `layout="grid"`): the scene is cut into cells of side
isqrt(view_pixels) (112 px: one 14-px ViT patch of the 8x-down original, seen 1:1 when zoomed), every
object sits alone and whole inside one cell, and every expert zoom is a quadrant of its source, a
quarter of one, or an object's cell, so a box is one of a few exact values (multiples of 0.125 on the
original) that a model trained from scratch can learn as "which cell". `thoughts="terse"` writes one
short fixed sentence per step kind (`toy/expert.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

from mini_o3_jax.agent import protocol
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.toy.shapes import COLORS, FONT_5X7, GLYPH_H, GLYPH_W, SHAPES, TEXTURE_PERIOD, fitting_sizes

__all__ = ["LEVELS", "PRESETS", "LevelGeometry", "SceneConfig", "SceneObject", "box_gap", "glyph_illegible",
           "glyph_legible", "level_geometry", "texture_illegible", "texture_legible", "view_scale"]

LEVELS = ("easy", "medium", "hard")

# The legibility and localisation rules (module docstring), in view pixels.
LEGIBLE_STROKE = 2.0
ILLEGIBLE_STROKE = 1.0
LOCALISABLE_PX = 6.0
HIDDEN_PX = 4.0
MAX_TURNS = 6  # Mini-o3's training turn limit: every expert trajectory fits it (up to 3 look-alikes)
MAX_LOOKALIKES = 8  # the most hard-level look-alikes a grid scene may hold (the turn-scaling demo's long searches)

# 3x3 names for where something is in an image (and for the half-size zoom windows).
POSITIONS = (("top left", "top", "top right"), ("left", "center", "right"),
             ("bottom left", "bottom", "bottom right"))
WINDOW_OFFSETS = (0.0, 0.25, 0.5)  # half-width/half-height windows: 3x3 overlapping grid
CROP_MARGIN = 0.15  # a tight zoom keeps at least this fraction of the object's side around it


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes look, and the model's per-view pixel budget the level geometry is measured against.

    Defaults: a 4096x3072 photo-sized scene seen at ~0.4 Mpx per view (512 visual tokens). Object
    sizes are not configured in pixels: they follow from the level rules and the budget, so any
    image size / budget pair that admits the three levels works (`level_geometry` says why not).
    """

    width: int = 4096
    height: int = 3072
    view_pixels: int = 401_408  # the original and every crop are shrunk to at most this many pixels
    min_pixels: int = 40_000  # crops below this are enlarged by the environment (Mini-o3's value)
    distractors: int = 60
    glyph_fraction: float = 0.5  # share of distractors carrying a glyph
    mark_fraction: float = 0.15  # share of hard-level distractors carrying a dot
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES
    glyphs: str = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
    glyph_cell: int = 2  # raw pixels per font pixel: strokes are this wide at full resolution
    mark_px: int = 4  # diameter of the hard level's dot (width of its border)
    # The hard level's mark: "dot" (a `mark_px` disc or, on a texture, square at the label's place) or
    # "border" (texture labels: a `mark_px` frame round the object). Why a border: a from-scratch model
    # learnt to tell a 2-px white border in a cell zoom within ~250 steps of 16, and had not learnt a 4-px
    # (or 7-px) dot after 300-400 (`bench/learnability.py perception --skills dot`, docs/demo.md).
    mark: str = "dot"
    # The order the expert checks the hard level's look-alikes in: "random" (seeded) or "reading" (grid
    # layout: row by row, left to right). Why: a fixed scan makes "the next one" a function of the image
    # and the number of zooms so far, which a small model can learn; a random one it cannot predict.
    search_order: str = "random"
    hard_candidates: tuple[int, int] = (2, 3)  # min/max look-alikes (target included)
    clutter: int = 300  # background strokes
    box_decimals: int = 2  # decimals of the expert's boxes (3 where 2 cannot keep a rule)
    layout: str = "free"  # "free": objects anywhere; "grid": one object per cell of side isqrt(view_pixels)
    thoughts: str = "verbose"  # "terse": one short fixed template per step kind (grid layout only)
    # "photo": blurry low-chroma blotches. "position": red grows left to right and blue top to bottom, so
    # every patch's colour says where it is (a from-scratch model has no other absolute-position cue).
    background: str = "photo"
    levels: tuple[str, ...] = LEVELS  # the levels this scene supports (a small grid has no room for medium)
    # Grid layout, the zoom that reads an object: "cell" (its whole cell, seen 1:1) or "centre" (the
    # cell's central half, which the environment enlarges to min_pixels when min_pixels > its area).
    zoom: str = "cell"
    # What the question asks for: "glyph" (a 5x7 character, `glyphs`) or "texture" (one of `TEXTURES`,
    # grid layout, easy and hard levels; the hard level's dot is drawn in the other ink at the centre).
    label: str = "glyph"
    # Every object outside the hard level's look-alikes has its own colour, so the colour alone finds the
    # target (the shape still names it); the trial-and-error decoy is then the target's shape in another
    # colour. Why: a toy model did not learn to bind colour and shape together within minutes (docs/demo.md).
    unique_colors: bool = False
    # A decoy for trial and error (a look-alike in colour or shape). Without one, the expert has no
    # trial-and-error pattern on this scene (the hard level still checks its look-alikes in turn).
    decoy: bool = True
    # The colours a target may have (empty: any of `colors`). Why: a toy model learnt to find "the red
    # object" among others within minutes, but not to match a colour word to one of six (docs/demo.md).
    target_colors: tuple[str, ...] = ()

    @classmethod
    def tiny(cls, **overrides: Any) -> SceneConfig:
        """The CPU-demo preset: 896x896 scenes, 112x112 views (16 visual tokens), 3 colours, 3 shapes
        and 4 digits, so a model with a few layers can learn to find, zoom and read in minutes."""
        base = dict(width=896, height=896, view_pixels=112 * 112, min_pixels=3136, distractors=8,
                    colors=("red", "green", "blue"), shapes=("square", "circle", "triangle"),
                    glyphs="1234", clutter=40)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def demo(cls, **overrides: Any) -> SceneConfig:
        """The from-scratch CPU-demo preset: `tiny()` on an 8x8 grid of 112-px cells with terse thoughts.

        Why: a model trained from random init on ~1k trajectories cannot learn to localise a small
        object and write arbitrary coordinates; here every object sits alone in one cell (one ViT patch
        of the original view), so a zoom is "which quadrant / which cell" and every box is a multiple
        of 0.125 (0.25 on a quadrant), and each thought is one short fixed sentence per step.
        """
        base = dict(layout="grid", thoughts="terse", box_decimals=3)
        base.update(overrides)
        return cls.tiny(**base)

    @classmethod
    def grid4(cls, **overrides: Any) -> SceneConfig:
        """The toy recipe's preset: a 448x448 scene on a 4x4 grid of 112-px cells, seen at 112x112.

        Why each choice (each measured on a 0.8M-parameter model trained from random init, docs/demo.md):
        a grid cell is one LLM token of the original view (a 2x2-patch merge) - on the 8x8 grid of
        `demo()` a cell is a quarter token and localisation did not emerge; the background encodes
        position (`background="position"`) - without it even one object on a blank scene was not
        localised; and the reading zoom is a cell's central half, which the environment enlarges 2x
        (`zoom="centre"`, min_pixels = the view budget) so a glyph spans ~30x42 view px - at 15x21
        reading stayed at chance. The scene is too small for the medium level (a quadrant view would show
        the glyph), so only easy and hard exist.
        """
        base = dict(width=448, height=448, background="position", levels=("easy", "hard"), zoom="centre",
                    min_pixels=112 * 112, glyph_cell=3, mark_px=3)
        base.update(overrides)
        return cls.demo(**base)

    @classmethod
    def toy(cls, **overrides: Any) -> SceneConfig:
        """The toy recipe's preset (configs/demo.py): `grid4()` with texture labels read from a 1:1 cell zoom.

        Why: on `grid4` a from-scratch model did not learn to read glyphs in minutes, even from an enlarged
        zoom; a texture is read from any single patch of the object. Objects are large (56-80 px, so a cell
        token is mostly the object's colour in the original), every object is textured (an untextured one
        would average to another tint), there is no clutter, and the hard level's mark is a 2-px white border:
        half a view px in the original, 2 px in the cell zoom (a 4-px dot was not learned, docs/demo.md). The
        expert checks the look-alikes in reading order: with a random order the first zoom is one of several
        boxes, and sampling its digits one by one mixed them into cells that hold no look-alike.
        Targets are red, every other object has its own colour and all are squares: locating the target was
        learned in 200 steps of 16 so, and not in 300 with circles too.
        """
        base = dict(label="texture", zoom="cell", min_pixels=56 * 56, glyph_fraction=1.0, clutter=0,
                    distractors=4, mark="border", mark_px=2, search_order="reading", unique_colors=True, target_colors=("red",),
                    colors=("red", "green", "blue", "yellow", "purple", "cyan"), shapes=("square",))
        base.update(overrides)
        return cls.grid4(**base)

    def __post_init__(self) -> None:
        for name in ("width", "height", "view_pixels", "min_pixels", "glyph_cell", "mark_px", "box_decimals"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SceneConfig.{name} = {value!r}; expected a positive integer")
        if self.distractors < 0 or self.clutter < 0:
            raise ConfigError(f"SceneConfig.distractors = {self.distractors}, clutter = {self.clutter}; "
                              "expected non-negative counts")
        if self.min_pixels > self.view_pixels:
            raise ConfigError(f"SceneConfig.min_pixels = {self.min_pixels} > view_pixels = {self.view_pixels}")
        if self.glyph_cell < 2:
            raise ConfigError(f"SceneConfig.glyph_cell = {self.glyph_cell}; a glyph is legible only when a "
                              f"stroke spans >= {LEGIBLE_STROKE:g} view px, so it needs >= 2 raw px")
        unknown = [c for c in (*self.colors, *self.target_colors) if c not in COLORS]
        unknown += [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ConfigError(f"SceneConfig: unknown colours/shapes {unknown}; known: {list(COLORS)}, {list(SHAPES)}")
        if set(self.target_colors) - set(self.colors):
            raise ConfigError(f"SceneConfig.target_colors = {self.target_colors}; expected a subset of colors {self.colors}")
        if len(set(self.colors)) < 2 or len(set(self.shapes)) < (1 if self.unique_colors else 2):
            raise ConfigError("SceneConfig needs >= 2 colours and >= 2 shapes (decoys share one with the target; "
                              "with unique_colors a decoy differs by colour, and one shape is enough)")
        bad = [g for g in self.glyphs if g not in FONT_5X7]
        if bad or len(set(self.glyphs)) < 3:
            raise ConfigError(f"SceneConfig.glyphs = {self.glyphs!r}; expected >= 3 distinct characters of "
                              f"{''.join(FONT_5X7)} (not {bad})")
        lo, hi = self.hard_candidates
        most = MAX_LOOKALIKES if self.layout == "grid" else 3
        if not 2 <= lo <= hi <= most:
            raise ConfigError(f"SceneConfig.hard_candidates = {self.hard_candidates}; expected 2 <= min <= max <= 3 "
                              f"(checking them all fits Mini-o3's {MAX_TURNS} training turns), or up to "
                              f"{MAX_LOOKALIKES} on the grid layout (searches longer than the training limit: "
                              "`mini-o3 demo --turn-scaling`)")
        if self.layout not in ("free", "grid") or self.thoughts not in ("verbose", "terse"):
            raise ConfigError(f"SceneConfig.layout = {self.layout!r}, thoughts = {self.thoughts!r}; expected "
                              "layout 'free' or 'grid' and thoughts 'verbose' or 'terse'")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ConfigError(f"SceneConfig.levels = {self.levels!r}; expected a non-empty subset of {LEVELS}")
        if self.zoom not in ("cell", "centre") or (self.zoom == "centre" and self.layout != "grid"):
            raise ConfigError(f"SceneConfig.zoom = {self.zoom!r} with layout {self.layout!r}; expected 'cell', or "
                              "'centre' with layout 'grid'")
        if self.label not in ("glyph", "texture") or (self.label == "texture" and (
                self.layout != "grid" or "medium" in self.levels)):
            raise ConfigError(f"SceneConfig.label = {self.label!r} with layout {self.layout!r}, levels {self.levels}; "
                              "expected 'glyph', or 'texture' with layout 'grid' and levels easy/hard only")
        if self.mark not in ("dot", "border") or (self.mark == "border" and self.label != "texture"):
            raise ConfigError(f"SceneConfig.mark = {self.mark!r} with label {self.label!r}; expected 'dot', or "
                              "'border' with label 'texture' (a glyph's dot row sits above the glyph)")
        if self.search_order not in ("random", "reading") or (self.search_order == "reading"
                                                               and self.layout != "grid"):
            raise ConfigError(f"SceneConfig.search_order = {self.search_order!r} with layout {self.layout!r}; "
                              "expected 'random', or 'reading' with layout 'grid'")
        if self.background not in ("photo", "position"):
            raise ConfigError(f"SceneConfig.background = {self.background!r}; expected 'photo' or 'position'")
        if self.thoughts == "terse" and self.layout != "grid":
            raise ConfigError("SceneConfig.thoughts = 'terse' needs layout = 'grid': free-layout boxes are "
                              "arbitrary, so their thoughts name positions in words")
        for name in ("glyph_fraction", "mark_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"SceneConfig.{name} = {getattr(self, name)}; expected a fraction in [0, 1]")
        level_geometry(self)  # raises ConfigError when a level cannot be built at this budget

    @property
    def max_expert_turns(self) -> int:
        """The longest expert trajectory: every look-alike checked, plus a detour (trial and error or depth first)
        and the answer; Mini-o3's 6 for the default 2-3 look-alikes."""
        return max(MAX_TURNS, self.hard_candidates[1] + 2)

    def env_config(self, **overrides: Any):
        """The `EnvConfig` that shows the model what these puzzles assume (budget and crop floor)."""
        from mini_o3_jax.agent.environment import EnvConfig

        return EnvConfig(**{"min_pixels": self.min_pixels, "max_pixels": self.view_pixels, **overrides})


def view_scale(width: int, height: int, view_pixels: int) -> float:
    """Per-side scale of Mini-o3's budget rule for a `width` x `height` region: sqrt(budget / area)
    with int-truncated sides when it is too big, else 1 (enlarging a small crop adds no detail)."""
    if width * height <= view_pixels:
        return 1.0
    f = math.sqrt(view_pixels / (width * height))
    return min(int(width * f) / width, int(height * f) / height)


def glyph_legible(cell: int, scale: float) -> bool:
    """A stroke of `cell` raw px spans >= 2 pixels of a view at `scale`."""
    return cell * scale >= LEGIBLE_STROKE


def glyph_illegible(cell: int, scale: float) -> bool:
    """A stroke spans under one view pixel: downsampling merges the strokes."""
    return cell * scale < ILLEGIBLE_STROKE


def texture_legible(scale: float) -> bool:
    """A texture period spans >= 4 view px: its 2-px ink lines survive as lines."""
    return TEXTURE_PERIOD * scale >= 4.0


def texture_illegible(scale: float) -> bool:
    """A texture period spans <= 2 view px (the Nyquist limit): antialiased resizing averages it away."""
    return TEXTURE_PERIOD * scale <= 2.0


@dataclasses.dataclass(frozen=True)
class LevelGeometry:
    """Object sizes (raw px) a level draws its targets from, and the scales that justify them."""

    level: str
    original_scale: float  # per-side scale of the original view
    window_scale: tuple[float, float]  # min/max scale of the half-size coarse windows
    size_range: tuple[int, int]  # target side in raw px
    target_shapes: tuple[str, ...]  # shapes whose label fits inside at a size in the range
    label: tuple[int, int]  # label block (w, h) in raw px: the glyph, plus the dot row on hard
    tight_side: int  # the largest tight zoom (raw px, square) that keeps a glyph legible
    cell: int = 0  # grid layout: cell side in raw px (a cell is seen 1:1); 0 for the free layout
    decimals: int = 0  # grid layout: decimals that write every cell-aligned box exactly


@functools.lru_cache(maxsize=64)
def level_geometry(config: SceneConfig) -> dict[str, LevelGeometry]:
    """The size ranges that make each level what it claims at `config.view_pixels`.

    Raises:
        ConfigError: a level is impossible (e.g. the scene is too small for the budget), with the
            rule that fails and what to change.
    """
    w, h, v, c = config.width, config.height, config.view_pixels, config.glyph_cell
    s0 = view_scale(w, h, v)
    grid = config.layout == "grid"
    cell, decimals = (_grid_cell(config) if grid else (0, 0))
    offsets = (0.0, 0.5) if grid else WINDOW_OFFSETS  # grid: the coarse windows are the four quadrants
    windows = [protocol.pixel_box((ox, oy, ox + 0.5, oy + 0.5), (w, h)) for oy in offsets for ox in offsets]
    ws = [view_scale(x1 - x0, y1 - y0, v) for x0, y0, x1, y1 in windows]
    w_lo, w_hi = min(ws), max(ws)
    hint = "use a larger scene (width/height) or a smaller view_pixels"
    if "medium" in config.levels and not glyph_illegible(c, w_hi):
        raise ConfigError(
            f"SceneConfig: a glyph stroke of {c} px spans {c * w_hi:.2f} view px in a half-size window of a "
            f"{w}x{h} scene at view_pixels={v}; medium needs < {ILLEGIBLE_STROKE:g} there; {hint}")
    if config.mark_px < LEGIBLE_STROKE:
        raise ConfigError(f"SceneConfig.mark_px = {config.mark_px}; the dot must span >= {LEGIBLE_STROKE:g} px at "
                          "full resolution to be visible when zoomed")
    texture = config.label == "texture"
    # a glyph's dot hides under one view px; a texture's dot (the other ink, on a 2-px pattern) under two
    mark_limit = LEGIBLE_STROKE if texture else ILLEGIBLE_STROKE
    if config.mark_px * s0 >= mark_limit:
        raise ConfigError(f"SceneConfig.mark_px = {config.mark_px} spans {config.mark_px * s0:.2f} view px in the "
                          f"original; hard needs < {mark_limit:g}; lower mark_px or {hint}")
    if texture and not (texture_illegible(s0) and texture_legible(view_scale(cell, cell, v))):
        raise ConfigError(f"SceneConfig(label='texture'): the {TEXTURE_PERIOD}-px texture must vanish in the original "
                          f"(scale {s0:.3f}) and show in a cell zoom; {hint}")
    # Largest square crop whose view keeps strokes >= 2 px, less the outward snapping of 2-decimal boxes.
    legible_side = math.isqrt(v * c * c // 4)
    snap = 2 * math.ceil(max(w, h) / 10 ** config.box_decimals) + 2
    tight = cell if grid else legible_side - snap  # grid: a cell zoom is exact (no snapping) and seen 1:1
    glyph = (config.mark_px, config.mark_px) if texture else (GLYPH_W * c, GLYPH_H * c)
    marked = glyph if texture else (GLYPH_W * c, GLYPH_H * c + c + config.mark_px)
    out = {}
    for level in config.levels:
        if level == "medium":
            lo, hi = math.ceil(LOCALISABLE_PX / w_lo), math.floor(HIDDEN_PX / s0)
            why = (f"localisable in a window (>= {LOCALISABLE_PX:g} view px at scale {w_lo:.3f}) yet not in the "
                   f"original (<= {HIDDEN_PX:g} px at scale {s0:.3f})")
        else:
            lo = math.ceil(LOCALISABLE_PX / s0)
            hi = min(math.floor(1.5 * lo), math.floor(tight / (1 + 2 * CROP_MARGIN)))
            why = (f"localisable in the original (>= {LOCALISABLE_PX:g} view px at scale {s0:.3f}) and inside a "
                   f"legible zoom of <= {tight} px")
        if grid:  # with its margin inside a cell, whose nested boxes' pixel edges may move by a few px
            hi = min(hi, math.floor((cell - 8) / (1 + 2 * CROP_MARGIN)))
            why += f", inside a {cell}-px cell"
        if texture:  # large: its cell's token in the original is mostly the object's colour
            lo, hi = max(lo, cell // 2), math.floor((cell - 8) / (1 + 2 * CROP_MARGIN))
            why += f", at least half a cell ({cell // 2} px)"
        label = marked if level == "hard" else glyph
        shapes = tuple(s for s in config.shapes if fitting_sizes(s, lo, hi, *label))
        if lo > hi or not shapes:
            raise ConfigError(
                f"SceneConfig: no {level} target fits: it must be {lo}..{hi} px to be {why}, and carry a "
                f"{label[0]}x{label[1]} px label inside one of {list(config.shapes)}; {hint}")
        out[level] = LevelGeometry(level, s0, (w_lo, w_hi), (lo, hi), shapes, label, tight, cell, decimals)
    return out


def _grid_cell(config: SceneConfig) -> tuple[int, int]:
    """Cell side (the largest square a view shows 1:1) and box decimals of the grid layout.

    Raises:
        ConfigError: the scene is not a whole number of quadrants of 2x2-cell blocks, or a multiple of
            one cell is not exact in a few decimals.
    """
    cell = math.isqrt(config.view_pixels)
    gx, gy = config.width // cell, config.height // cell
    if config.width % (4 * cell) or config.height % (4 * cell):
        raise ConfigError(f"SceneConfig(layout='grid'): {config.width}x{config.height} is not a multiple of "
                          f"4 cells of {cell} px (isqrt(view_pixels)) per side; quadrants and their quarters "
                          "must be whole cells")
    for decimals in range(config.box_decimals, 7):
        if 10**decimals % gx == 0 and 10**decimals % gy == 0:
            return cell, decimals
    raise ConfigError(f"SceneConfig(layout='grid'): a {gx}x{gy} grid needs more than 6 decimals per box; "
                      "use 8, 20 or 40 cells per side")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: int  # side of its square box in raw px
    box: tuple[int, int, int, int]  # pixel box on the full-resolution image, x1/y1 exclusive
    glyph: str | None = None  # its label: a glyph, or a texture name (`label="texture"`)
    mark: bool = False  # carries the dot (hard level)
    role: str = "distractor"  # "target", "candidate" (a look-alike of the target), "decoy", "distractor"
    cell: tuple[int, int] | None = None  # grid layout: (column, row) of the one cell it sits in

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


def box_gap(a: Sequence[int], b: Sequence[int]) -> int:
    """Chebyshev gap between two boxes (negative when they overlap)."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])


PRESETS = {"default": SceneConfig, "tiny": SceneConfig.tiny, "demo": SceneConfig.demo, "grid4": SceneConfig.grid4,
           "toy": SceneConfig.toy}
