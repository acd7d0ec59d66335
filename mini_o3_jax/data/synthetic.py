"""Procedurally generated VisualProbe-style puzzles and a scripted expert that solves them by zooming.

Why: tests, benchmarks, notebooks and the CPU demo need visual-search data whose difficulty is known
by construction, that a tiny model can learn in minutes, and that needs no download. A scene is a
textured background with many coloured shapes, some carrying a glyph; the question asks for the
glyph on one of them ("What number is written on the red triangle?" -> "7").

Difficulty is geometry measured against the model's per-view pixel budget (`SceneConfig.view_pixels`:
the original is shrunk to it, and so is every raw full-resolution crop). With `s` the per-side scale
a view applies (`view_scale`; 1 when the region already fits the budget, upscaling adds nothing):

* a glyph (5x7 bitmap font, one font pixel = `glyph_cell` raw px) is **legible** in a view when a
  stroke spans >= 2 view px (`glyph_cell * s >= 2`) and **illegible** when it spans < 1 view px;
* an object can be **localised** in a view when its side spans >= 6 view px, and **cannot be
  localised precisely** when it spans <= 4 view px (under a third of a 14-px ViT patch);
* the hard level's mark (a dot `mark_px` wide, or with `mark="border"` a frame of that width) is
  visible at >= 2 view px and invisible under 1.

Levels (checked for every puzzle by `check_geometry`, and for a config by `level_geometry`):

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
short fixed sentence per step kind (`_TERSE`).

Determinism: every random draw comes from `random.Random(...).random()` (stable across Python
versions) or an integer hash, and pixels are rasterised with integer or IEEE-exact arithmetic in
numpy (no fonts, no PIL resampling), so a seed gives the same pixels and text on any machine. PNG
file bytes additionally depend on the zlib build.

    puzzle = make_puzzle(7, "medium", SceneConfig.tiny())
    expert = expert_trajectory(puzzle, seed=0)          # cold-start conversation + images
    write_benchmark("data", "hard", 100, seed=0, config=SceneConfig.tiny())
    write_coldstart("data/coldstart", 500, seed=0, config=SceneConfig.tiny())
    expert_trajectory(make_puzzle(7, "hard", SceneConfig.demo()), seed=0)  # grid boxes, terse thoughts
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.prompts import OBSERVATION_TEMPLATE, SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import DATASET_IMAGE_PLACEHOLDER, IM_END, IM_START, IMAGE_PLACEHOLDER

__all__ = [
    "COLORS",
    "DEFAULT_PATTERN_WEIGHTS",
    "FONT_5X7",
    "LEVELS",
    "PATTERNS",
    "SHAPES",
    "ExpertTrajectory",
    "LevelGeometry",
    "PERCEPTION_SKILLS",
    "Puzzle",
    "SceneConfig",
    "SceneObject",
    "TEXTURES",
    "check_geometry",
    "expert_trajectory",
    "glyph_illegible",
    "glyph_legible",
    "level_geometry",
    "make_puzzle",
    "observation_text",
    "perception_question",
    "tokenizer_texts",
    "view_scale",
    "write_all",
    "write_benchmark",
    "write_coldstart",
]

LEVELS = ("easy", "medium", "hard")
PATTERNS = ("direct", "trial_and_error", "depth_first", "goal_maintenance")
DEFAULT_PATTERN_WEIGHTS: Mapping[str, float] = {
    "direct": 0.4, "trial_and_error": 0.2, "depth_first": 0.2, "goal_maintenance": 0.2}

# The legibility and localisation rules (module docstring), in view pixels.
LEGIBLE_STROKE = 2.0
ILLEGIBLE_STROKE = 1.0
LOCALISABLE_PX = 6.0
HIDDEN_PX = 4.0
MAX_TURNS = 6  # Mini-o3's training turn limit: every expert trajectory fits it

# Saturated object colours; the background and clutter are low-chroma greys, so colour is a clean cue.
COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (215, 38, 38), "green": (30, 160, 60), "blue": (40, 80, 215), "yellow": (240, 205, 30),
    "purple": (140, 60, 185), "orange": (245, 135, 25), "cyan": (30, 190, 205), "pink": (240, 110, 185),
}
# Glyphs and dots are drawn in the ink that contrasts with the object's colour.
INK: Mapping[str, str] = {
    "red": "white", "green": "white", "blue": "white", "purple": "white",
    "yellow": "black", "orange": "black", "cyan": "black", "pink": "black",
}
INK_RGB = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("square", "circle", "triangle", "diamond")

# A 5x7 bitmap font for digits and the letters that are not confusable with them (no I, O, Q).
FONT_5X7: Mapping[str, tuple[str, ...]] = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "C": (" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "),
    "D": ("#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"),
    "H": ("#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "J": ("  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "),
    "K": ("#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "M": ("#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"),
    "N": ("#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "V": ("#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "),
    "W": ("#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "),
    "X": ("#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"),
    "Y": ("#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "),
    "Z": ("#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"),
}
GLYPH_W, GLYPH_H = 5, 7

# Texture labels (`SceneConfig.label="texture"`): period-4 ink patterns, half ink and half colour, so the
# 4x-down original averages every one of them to the same flat tint while a 1:1 view shows them plainly.
# Why: a ViT trained from random init reads a texture from any one patch (a linear filter), whereas a
# glyph must be recognised wherever it sits, which a toy model did not learn in minutes (docs/demo.md).
TEXTURES: Mapping[str, str] = {
    "stripes": "horizontal lines", "bars": "vertical lines", "checks": "a checkerboard", "slashes": "diagonal lines"}
TEXTURE_PERIOD = 4  # raw px; 2 px of ink, 2 px of colour

# 3x3 names for where something is in an image (and for the half-size zoom windows).
_POSITIONS = (("top left", "top", "top right"), ("left", "center", "right"),
              ("bottom left", "bottom", "bottom right"))
_WINDOW_OFFSETS = (0.0, 0.25, 0.5)  # half-width/half-height windows: 3x3 overlapping grid
_CROP_MARGIN = 0.15  # a tight zoom keeps at least this fraction of the object's side around it


# --------------------------------------------------------------------------------------------------
# Config and the level rules
# --------------------------------------------------------------------------------------------------


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
        if not 2 <= lo <= hi <= 3:
            raise ConfigError(f"SceneConfig.hard_candidates = {self.hard_candidates}; expected 2 <= min <= max <= 3 "
                              f"so that checking them all fits {MAX_TURNS} turns")
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
    offsets = (0.0, 0.5) if grid else _WINDOW_OFFSETS  # grid: the coarse windows are the four quadrants
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
            hi = min(math.floor(1.5 * lo), math.floor(tight / (1 + 2 * _CROP_MARGIN)))
            why = (f"localisable in the original (>= {LOCALISABLE_PX:g} view px at scale {s0:.3f}) and inside a "
                   f"legible zoom of <= {tight} px")
        if grid:  # with its margin inside a cell, whose nested boxes' pixel edges may move by a few px
            hi = min(hi, math.floor((cell - 8) / (1 + 2 * _CROP_MARGIN)))
            why += f", inside a {cell}-px cell"
        if texture:  # large: its cell's token in the original is mostly the object's colour
            lo, hi = max(lo, cell // 2), math.floor((cell - 8) / (1 + 2 * _CROP_MARGIN))
            why += f", at least half a cell ({cell // 2} px)"
        label = marked if level == "hard" else glyph
        shapes = tuple(s for s in config.shapes if _fitting_sizes(s, lo, hi, *label))
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


# --------------------------------------------------------------------------------------------------
# Randomness and rasterisation (deterministic on any machine)
# --------------------------------------------------------------------------------------------------


class _Rng:
    """Seeded draws built only on `random.Random.random()`, whose stream Python guarantees."""

    def __init__(self, *key: Any):
        digest = hashlib.sha256(repr(key).encode()).digest()
        self._r = random.Random(int.from_bytes(digest[:8], "big"))

    def random(self) -> float:
        return self._r.random()

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._r.random()

    def randint(self, lo: int, hi: int) -> int:
        """Inclusive on both ends."""
        return lo + min(int(self._r.random() * (hi - lo + 1)), hi - lo)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.randint(0, len(seq) - 1)]

    def shuffle(self, items: list[Any]) -> list[Any]:
        for i in range(len(items) - 1, 0, -1):
            j = self.randint(0, i)
            items[i], items[j] = items[j], items[i]
        return items

    def weighted(self, names: Sequence[str], weights: Sequence[float]) -> str:
        x = self._r.random() * sum(weights)
        for name, wt in zip(names, weights):
            x -= wt
            if x < 0:
                return name
        return names[-1]

    def u64(self) -> int:
        return int(self._r.random() * 2**53)


def _derive(*key: Any) -> int:
    """A 63-bit seed for a named sub-stream (split, index, ...)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big") >> 1


_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), 0x9E3779B97F4A7C15


def _hash(idx: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of `idx` under `seed`: integer noise, identical on every platform."""
    z = idx.astype(np.uint64) + np.uint64((seed * _GOLDEN) & (2**64 - 1))
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _smooth_field(width: int, height: int, k: int, seed: int, lo: int, hi: int) -> np.ndarray:
    """Value noise in [lo, hi] on a 2**k-px grid, bilinearly interpolated with integer shifts."""
    cell = 1 << k
    gw, gh = (width >> k) + 2, (height >> k) + 2
    grid = (_hash(np.arange(gw * gh), seed) % np.uint64(hi - lo + 1)).astype(np.int32).reshape(gh, gw) + lo
    x = np.arange(width)
    ix, fx = x >> k, (x & (cell - 1)).astype(np.int32)
    rows = (grid[:, ix] << k) + (grid[:, ix + 1] - grid[:, ix]) * fx  # (gh, width), times cell
    out = np.empty((height, width), np.uint8)
    fy = np.arange(cell, dtype=np.int32)[:, None]
    for j in range((height + cell - 1) >> k):  # one grid band at a time: no (height, width) gathers
        y0, y1 = j << k, min((j + 1) << k, height)
        out[y0:y1] = ((rows[j] << k) + (rows[j + 1] - rows[j]) * fy[: y1 - y0]) >> (2 * k)
    return out


def _smooth_1d(n: int, k: int, seed: int, lo: int, hi: int) -> np.ndarray:
    knots = (_hash(np.arange((n >> k) + 2), seed) % np.uint64(hi - lo + 1)).astype(np.int16) + lo
    x = np.arange(n)
    i, f = x >> k, (x & ((1 << k) - 1)).astype(np.int16)
    return ((knots[i] << k) + (knots[i + 1] - knots[i]) * f) >> k


@functools.lru_cache(maxsize=512)
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """The shape inside a size x size box, tested at doubled pixel centres (integer-exact)."""
    u = 2 * np.arange(size, dtype=np.int64) + 1
    dx, dy = np.abs(u[None, :] - size), u[:, None]
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return dx * dx + (dy - size) ** 2 <= size * size
    if shape == "triangle":  # apex up, base along the bottom
        return 2 * dx <= dy
    if shape == "diamond":
        return dx + np.abs(dy - size) <= size
    raise ConfigError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _label_origin(shape: str, size: int, lw: int, lh: int) -> tuple[int, int]:
    """Top-left of the label block inside the shape's box (low in a triangle, centred elsewhere)."""
    if shape == "triangle":
        return (size - lw) // 2, size - lh - max(2, size // 10)
    return (size - lw) // 2, (size - lh) // 2


@functools.lru_cache(maxsize=4096)
def _label_fits(shape: str, size: int, lw: int, lh: int) -> bool:
    x, y = _label_origin(shape, size, lw, lh)
    if x < 1 or y < 1 or x + lw + 1 > size or y + lh + 1 > size:
        return False
    return bool(_shape_mask(shape, size)[y - 1:y + lh + 1, x - 1:x + lw + 1].all())


@functools.lru_cache(maxsize=1024)
def _fitting_sizes(shape: str, lo: int, hi: int, lw: int, lh: int) -> tuple[int, ...]:
    return tuple(s for s in range(max(lo, 1), hi + 1) if _label_fits(shape, s, lw, lh))


@functools.lru_cache(maxsize=64)
def _glyph_bitmap(char: str, cell: int) -> np.ndarray:
    rows = np.array([[ch == "#" for ch in row] for row in FONT_5X7[char]], bool)
    return np.repeat(np.repeat(rows, cell, axis=0), cell, axis=1)


def _texture(name: str, x0: int, y0: int, size: int) -> np.ndarray:
    """Where texture `name` puts ink in the size x size box at (x0, y0), anchored to image coordinates."""
    y, x = np.mgrid[y0:y0 + size, x0:x0 + size]
    half = TEXTURE_PERIOD // 2
    pattern = {"stripes": y // half, "bars": x // half, "checks": x // half + y // half,
               "slashes": (x + y) // half}
    if name not in pattern:
        raise ConfigError(f"unknown texture {name!r}; expected one of {list(TEXTURES)}")
    return pattern[name] % 2 == 0


def _draw_stroke(img: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], width: int,
                 color: tuple[int, int, int]) -> None:
    """A straight stroke: pixels whose centre is within width/2 of the segment (IEEE-exact ops)."""
    h, w = img.shape[:2]
    r = width / 2
    x0, x1 = max(0, int(min(p0[0], p1[0]) - r)), min(w, int(max(p0[0], p1[0]) + r) + 1)
    y0, y1 = max(0, int(min(p0[1], p1[1]) - r)), min(h, int(max(p0[1], p1[1]) + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + (0.5 - p0[0])
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + (0.5 - p0[1])
    dx, dy = float(p1[0] - p0[0]), float(p1[1] - p0[1])
    t = np.minimum(np.maximum((px * dx + py * dy) / max(dx * dx + dy * dy, 1.0), 0.0), 1.0)
    ex, ey = px - t * dx, py - t * dy
    img[y0:y1, x0:x1][ex * ex + ey * ey <= r * r] = color


# --------------------------------------------------------------------------------------------------
# Scenes and puzzles
# --------------------------------------------------------------------------------------------------


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


def _gap(a: Sequence[int], b: Sequence[int]) -> int:
    """Chebyshev gap between two boxes (negative when they overlap)."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])


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
    rng = _Rng("puzzle", seed, level)
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
            jit = max(0, min(cell // 16, slack - math.ceil(size * _CROP_MARGIN)))
            x, y = i * cell + slack + rng.randint(-jit, jit), j * cell + slack + rng.randint(-jit, jit)
            return (x, y, x + size, y + size), (i, j)
        return None

    def place(size: int, far: Sequence[SceneObject] = (), far_gap: int = 0, tries: int = 400) -> tuple | None:
        for _ in range(tries):
            x, y = rng.randint(margin, w - margin - size), rng.randint(margin, h - margin - size)
            box = (x, y, x + size, y + size)
            if all(_gap(box, o.box) >= min_gap for o in placed) and all(_gap(box, o.box) >= far_gap for o in far):
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
        size = rng.choice(_fitting_sizes(t_shape, *g.size_range, *label))
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
        fits = _fitting_sizes(shape, *geo[lvl].size_range, *label)
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

    image = _render(config, placed, level, rng.u64())
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


def _render(config: SceneConfig, objects: Sequence[SceneObject], level: str, seed: int) -> Image.Image:
    w, h, c = config.width, config.height, config.glyph_cell
    k = max(4, (min(w, h) // 10).bit_length() - 1)  # blotches about a tenth of the scene
    img = np.empty((h, w, 3), np.uint8)
    if config.background == "position":  # low chroma (80..176 around a grey 128), so objects stay the saturated ones
        img[..., 0] = (80 + 96 * np.arange(w) / max(1, w - 1)).astype(np.uint8)[None, :]
        img[..., 1] = 128
        img[..., 2] = (80 + 96 * np.arange(h) / max(1, h - 1)).astype(np.uint8)[:, None]
    else:
        lum = _smooth_field(w, h, k, seed, 100, 165)
        tint = (_smooth_1d(w, k, seed + 2, -8, 8)[None, :]
                + _smooth_1d(h, k, seed + 3, -8, 8)[:, None]).astype(np.uint8)
        np.add(lum, tint, out=img[..., 0])  # uint8 wrap-around undoes the negative tints: 100 - 16 >= 0
        np.copyto(img[..., 1], lum)
        np.subtract(lum, tint, out=img[..., 2])
    rng = _Rng("clutter", seed)
    grid = config.layout == "grid"
    span = level_geometry(config)["easy"].size_range[0]
    for _ in range(config.clutter):  # low-chroma strokes about an object long: texture no question is about
        x, y = rng.randint(0, w - 1), rng.randint(0, h - 1)
        p1 = (x + rng.randint(-span, span), y + rng.randint(-span, span))
        g = rng.randint(60, 200)
        d = rng.randint(-12, 12)
        width = rng.randint(1, 3)
        if grid:  # background only: a stroke touching an object would blur its silhouette at 8x down
            sb = (min(x, p1[0]) - width, min(y, p1[1]) - width, max(x, p1[0]) + width, max(y, p1[1]) + width)
            if any(_gap(sb, o.box) < 2 for o in objects):
                continue
        _draw_stroke(img, (x, y), p1, width, (g + d, g, g - d))
    for o in objects:
        x0, y0, x1, y1 = o.box
        region = img[y0:y1, x0:x1]
        mask = _shape_mask(o.shape, o.size)
        region[mask] = COLORS[o.color]
        if o.glyph is None:
            continue
        ink = INK_RGB[INK[o.color]]
        if config.label == "texture":  # black lines (a dark tint in the original), a white dot on top
            region[mask & _texture(o.glyph, x0, y0, o.size)] = INK_RGB["black"]
            m = config.mark_px
            if o.mark and config.mark == "border":  # a frame along the silhouette's bounding box
                frame = np.zeros_like(mask)
                frame[:m], frame[-m:], frame[:, :m], frame[:, -m:] = True, True, True, True
                region[mask & frame] = INK_RGB["white"]
            elif o.mark:  # a solid square where a glyph's label would sit
                lx, ly = _label_origin(o.shape, o.size, m, m)
                region[ly:ly + m, lx:lx + m] = INK_RGB["white"]
            continue
        lw, lh = GLYPH_W * c, GLYPH_H * c
        if level == "hard":  # dot row above the glyph, present or not, so look-alikes differ only by the dot
            lh += c + config.mark_px
        lx, ly = _label_origin(o.shape, o.size, lw, lh)
        if level == "hard":
            m = config.mark_px
            if o.mark:
                mx = lx + (lw - m) // 2
                region[ly:ly + m, mx:mx + m][_shape_mask("circle", m)] = ink
            ly += m + c
        region[ly:ly + GLYPH_H * c, lx:lx + lw][_glyph_bitmap(o.glyph, c)] = ink
    return Image.fromarray(img, "RGB")


# --------------------------------------------------------------------------------------------------
# The scripted expert
# --------------------------------------------------------------------------------------------------


def observation_text(action: int) -> str:
    """The human turn the environment appends after zoom `action` (0-based), in the sharegpt form:
    the user content of `OBSERVATION_TEMPLATE` with the dataset `<image>` placeholder."""
    full = OBSERVATION_TEMPLATE.format(action=action, observation=action + 1)
    content = full.split(f"{IM_START}user\n", 1)[1].split(IM_END, 1)[0]
    return content.replace(IMAGE_PLACEHOLDER, DATASET_IMAGE_PLACEHOLDER)


@dataclasses.dataclass
class ExpertTrajectory:
    """A solved puzzle in the cold-start format, with the images the environment would produce."""

    conversations: list[dict[str, str]]  # system, human question, then gpt / human-observation turns
    images: list[Image.Image]  # the original, then each raw full-resolution crop in order
    pattern: str
    boxes: list[tuple[tuple[float, float, float, float], str]]  # per zoom: relative box as written, source

    @property
    def gpt_turns(self) -> list[str]:
        return [m["value"] for m in self.conversations if m["from"] == "gpt"]


@dataclasses.dataclass
class _View:
    image: Image.Image
    ox: int  # offset of this observation in the original image (raw crops keep the pixel scale)
    oy: int
    cells: tuple[int, int, int, int] | None = None  # grid layout: the cells it shows (x0, y0, x1, y1), x1 excl.

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.ox, self.oy, self.ox + self.image.width, self.oy + self.image.height)


class _Expert:
    """Plans zooms on the puzzle and writes the turns; crops exactly as `VisualSearchEnv` would."""

    def __init__(self, puzzle: Puzzle, rng: _Rng):
        self.p, self.rng, self.cfg = puzzle, rng, puzzle.config
        self.views = [_View(puzzle.image, 0, 0)]
        self.turns: list[str] = []  # gpt turn texts
        self.boxes: list[tuple[tuple[float, float, float, float], str]] = []
        t = puzzle.target_object
        self.color, self.shape, self.kind = t.color, t.shape, puzzle.kind
        self.desc = puzzle.description
        self.goal = f"the {self.kind} on the {self.desc}"
        g = level_geometry(self.cfg)[puzzle.level]
        if g.cell:
            self.views[0].cells = (0, 0, puzzle.image.width // g.cell, puzzle.image.height // g.cell)
        self.decimals = g.decimals

    # -- geometry -----------------------------------------------------------------------------------

    def _crop(self, src: int, want: Sequence[float], decimals: int) -> tuple[str, tuple[float, ...], tuple]:
        """`want` (original coords) snapped outward to `decimals` on view `src`: (text, values, pixel box
        in original coords)."""
        v = self.views[src]
        sw, sh = v.image.size
        q = 10**decimals
        rel = ((want[0] - v.ox) / sw, (want[1] - v.oy) / sh, (want[2] - v.ox) / sw, (want[3] - v.oy) / sh)
        snapped = (math.floor(rel[0] * q), math.floor(rel[1] * q), math.ceil(rel[2] * q), math.ceil(rel[3] * q))
        return self._written(src, [f"{min(max(n, 0), q) / q:.{decimals}f}" for n in snapped])

    def _written(self, src: int, texts: Sequence[str]) -> tuple[str, tuple[float, ...], tuple]:
        v = self.views[src]
        values = tuple(float(x) for x in texts)  # what the environment parses
        pb = protocol.pixel_box(values, v.image.size)
        return ", ".join(texts), values, (pb[0] + v.ox, pb[1] + v.oy, pb[2] + v.ox, pb[3] + v.oy)

    def _zoom(self, src: int, want: Sequence[float], accept) -> tuple[str, int] | None:
        """Snap `want` (original coords) to a box on view `src`; None unless `accept(pixel box)`."""
        for decimals in dict.fromkeys((self.cfg.box_decimals, 3)):
            text, values, box = self._crop(src, want, decimals)
            if accept(box):
                return self._commit(src, text, values, box)
        return None

    def _commit(self, src: int, text: str, values: tuple[float, ...], box: tuple,
                cells: tuple[int, int, int, int] | None = None) -> tuple[str, int]:
        v = self.views[src]
        source = protocol.ORIGINAL_IMAGE if src == 0 else f"observation_{src}"
        local = (box[0] - v.ox, box[1] - v.oy, box[2] - v.ox, box[3] - v.oy)
        self.views.append(_View(v.image.crop(local), box[0], box[1], cells))
        self.boxes.append((values, source))  # type: ignore[arg-type]
        call = f'<grounding>{{"bbox_2d": [{text}], "source": "{source}"}}</grounding>'
        return call, len(self.views) - 1

    def _inside(self, obj: SceneObject, box: Sequence[int], pad: int = 1) -> bool:
        return (box[0] + pad <= obj.box[0] and box[1] + pad <= obj.box[1]
                and obj.box[2] + pad <= box[2] and obj.box[3] + pad <= box[3])

    def tight(self, obj: SceneObject, src: int) -> tuple[str, int]:
        """A zoom around `obj` whose view shows its glyph (and dot) legibly and no other look-alike."""
        v = self.views[src]
        vx0, vy0, vx1, vy1 = v.box
        c, budget = self.cfg.glyph_cell, self.cfg.view_pixels
        others = [self.p.objects[i] for i in self.p.candidates if self.p.objects[i] is not obj]

        def accept(box: Sequence[int]) -> bool:
            scale = view_scale(box[2] - box[0], box[3] - box[1], budget)
            return (self._inside(obj, box) and glyph_legible(c, scale)
                    and (self.p.level != "hard" or self.cfg.mark_px * scale >= LEGIBLE_STROKE)
                    and all(_gap(box, o.box) > 0 for o in others))

        limit = level_geometry(self.cfg)[self.p.level].tight_side
        for attempt in range(8):
            shrink = 1.0 - 0.1 * attempt
            side = min(limit * shrink, obj.size * self.rng.uniform(1.6, 3.5))
            side = max(side, obj.size * (1 + 2 * _CROP_MARGIN))
            slack = max(0.0, (side - obj.size) / 2 - obj.size * _CROP_MARGIN)
            cx = obj.center[0] + self.rng.uniform(-slack, slack) * shrink
            cy = obj.center[1] + self.rng.uniform(-slack, slack) * shrink
            want = self._fit((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), (vx0, vy0, vx1 - 1, vy1 - 1))
            found = self._zoom(src, want, accept)
            if found:
                return found
        raise AssertionError(f"{self.p.doc_id}: no legible zoom on {obj} from view {src}")  # a bug, not bad input

    def wide(self, obj: SceneObject, src: int) -> tuple[str, int] | None:
        """A zoom around `obj` too large to read it (goal maintenance zooms out-of-reach first)."""
        v = self.views[src]
        c, budget = self.cfg.glyph_cell, self.cfg.view_pixels
        base = math.isqrt(budget * c * c // 4)

        def accept(box: Sequence[int]) -> bool:
            scale = view_scale(box[2] - box[0], box[3] - box[1], budget)
            return self._inside(obj, box, pad=2) and not glyph_legible(c, scale)

        for attempt in range(6):
            side = min(base * self.rng.uniform(1.5, 2.2), 0.9 * min(v.image.size)) * (1 + 0.05 * attempt)
            slack = max(0.0, side / 2 - obj.size)
            cx = obj.center[0] + self.rng.uniform(-slack, slack) * 0.5
            cy = obj.center[1] + self.rng.uniform(-slack, slack) * 0.5
            want = self._fit((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
                             (v.ox, v.oy, v.box[2] - 1, v.box[3] - 1))
            found = self._zoom(src, want, accept)
            if found:
                return found
        return None

    def window(self, src: int, obj: SceneObject | None = None, avoid: SceneObject | None = None,
               prefer: Sequence[SceneObject] = ()) -> tuple[str, int, str]:
        """A half-size window of view `src` that holds `obj` (best centred), or that misses `avoid`."""
        options = []
        for j, oy in enumerate(_WINDOW_OFFSETS):
            for i, ox in enumerate(_WINDOW_OFFSETS):
                written = self._written(src, [f"{x:.2f}" for x in (ox, oy, ox + 0.5, oy + 0.5)])
                box = written[2]
                if obj is not None and self._inside(obj, box, pad=2):
                    room = min(obj.box[0] - box[0], obj.box[1] - box[1], box[2] - obj.box[2], box[3] - obj.box[3])
                    options.append((-room, self.rng.random(), written, _POSITIONS[j][i]))
                elif obj is None and avoid is not None and _gap(box, avoid.box) > 0:
                    score = -sum(self._inside(o, box) for o in prefer)
                    options.append((score, self.rng.random(), written, _POSITIONS[j][i]))
        if not options:
            raise AssertionError(f"{self.p.doc_id}: no window for {obj or avoid}")  # a bug, not bad input
        _, _, written, name = min(options)
        call, k = self._commit(src, *written)
        return call, k, name

    def block(self, src: int, span: tuple[int, int], obj: SceneObject | None = None,
              avoid: SceneObject | None = None, prefer: Sequence[SceneObject] = ()) -> tuple[str, int]:
        """Grid layout: zoom the `span` (cells per side) block of view `src`, aligned to `span` within it,
        that holds `obj`, or (obj None) one that misses `avoid`, most `prefer` objects first."""
        v = self.views[src]
        assert v.cells is not None, "grid zooms need a cell-aligned source"
        x0, y0, x1, y1 = v.cells
        options = []
        for by in range(y0, y1, span[1]):
            for bx in range(x0, x1, span[0]):
                cells = (bx, by, bx + span[0], by + span[1])
                ids = {id(o) for o in self.p.objects
                       if o.cell and cells[0] <= o.cell[0] < cells[2] and cells[1] <= o.cell[1] < cells[3]}
                if obj is not None and id(obj) in ids:
                    options.append((0, 0.0, cells))
                elif obj is None and id(avoid) not in ids:
                    options.append((-sum(id(o) in ids for o in prefer), self.rng.random(), cells))
        _, _, cells = min(options)
        d, nx, ny = self.decimals, x1 - x0, y1 - y0
        rel = ((cells[0] - x0) / nx, (cells[1] - y0) / ny, (cells[2] - x0) / nx, (cells[3] - y0) / ny)
        if span == (1, 1) and self.cfg.zoom == "centre":  # the cell's central half: a quarter cell in from each side
            mx, my = 0.25 / nx, 0.25 / ny
            rel = (rel[0] + mx, rel[1] + my, rel[2] - mx, rel[3] - my)
            d = next(k for k in range(d, 9) if all(abs(round(r, k) - r) < 1e-12 for r in rel))
        text, values, box = self._written(src, [f"{r:.{d}f}" for r in rel])
        if obj is not None and not self._inside(obj, box):
            raise AssertionError(f"{self.p.doc_id}: {obj} is not inside the block {box}")  # a bug, not bad input
        if span == (1, 1) and any(_gap(box, o.box) <= 0 for o in self.p.objects if o is not obj):
            raise AssertionError(f"{self.p.doc_id}: the cell zoom {box} shows a second object")
        return self._commit(src, text, values, box, cells)

    def cell(self, obj: SceneObject, src: int) -> str:
        """Grid layout: the zoom onto `obj`'s cell (or its central half, `zoom="centre"`), seen at least
        1:1 (glyph and dot legible, nothing else)."""
        return self.block(src, (1, 1), obj)[0]

    def half(self, src: int, obj: SceneObject | None = None, **kw: Any) -> tuple[str, int]:
        """Grid layout: a quadrant of view `src` (the one holding `obj`)."""
        x0, y0, x1, y1 = self.views[src].cells  # type: ignore[misc]
        return self.block(src, ((x1 - x0) // 2, (y1 - y0) // 2), obj, **kw)

    def phrase(self, kind: str, **fields: Any) -> str:
        """Grid layout: the thought of one step kind, terse or verbose as the config says."""
        book = _TERSE if self.cfg.thoughts == "terse" else _VERBOSE_GRID
        t = self.p.target_object
        base = dict(d=f"{t.color} {t.shape}", c=t.color, s=t.shape, k=self.kind, goal=self.goal, ink=self.p.ink,
                    n=len(self.p.candidates), g=t.glyph, mark=self.cfg.mark)
        return self.say(*book[kind]).format(**{**base, **fields})

    def decoy(self, d: SceneObject) -> tuple[str, str]:
        """Grid trial and error: the thought and call that zoom decoy `d` first."""
        return self.phrase("decoy" if d.color == self.color else "decoy_shape"), self.cell(d, 0)

    def not_it(self, d: SceneObject) -> str:
        """... and the reaction to what the zoom showed."""
        if d.color == self.color:
            return self.phrase("not", wrong=d.shape)
        return self.phrase("not_color", wrong=d.color)

    @staticmethod
    def _fit(box: Sequence[float], bounds: Sequence[float]) -> tuple[float, float, float, float]:
        """Shift (then clip) `box` into `bounds`."""
        x0, y0, x1, y1 = box
        dx = max(0.0, bounds[0] - x0) - max(0.0, x1 - bounds[2])
        dy = max(0.0, bounds[1] - y0) - max(0.0, y1 - bounds[3])
        return (max(bounds[0], x0 + dx), max(bounds[1], y0 + dy), min(bounds[2], x1 + dx), min(bounds[3], y1 + dy))

    def where(self, obj: SceneObject) -> str:
        cx, cy = obj.center
        w, h = self.p.image.size
        return _POSITIONS[min(int(3 * cy / h), 2)][min(int(3 * cx / w), 2)]

    # -- text ---------------------------------------------------------------------------------------

    def say(self, *variants: str) -> str:
        return self.rng.choice(variants)

    def turn(self, thought: str, call: str) -> None:
        self.turns.append(f"<think>{thought}</think>\n{call}")

    def answer(self, reaction: str) -> None:
        a = self.p.answer
        self.turns.append(f"<think>{reaction}</think>\n<answer>{a}</answer>")

    def read(self, obj: SceneObject) -> str:
        if self.p.level == "hard":
            m = self.cfg.mark
            return self.say(f"This {self.color} {self.shape} has a {self.p.ink} {m}, and its {self.kind} is "
                            f"{obj.glyph}.", f"Found it: this {self.color} {self.shape} has the {self.p.ink} {m}. "
                            f"The {self.kind} on it is {obj.glyph}.")
        return self.say(f"Now I can read it: the {self.kind} on the {self.desc} is {obj.glyph}.",
                        f"The {self.desc} shows the {self.kind} {obj.glyph}.")

    def still(self) -> str:
        return self.say(f"I still need {self.goal}.", f"My goal is still {self.goal}.")


def expert_trajectory(puzzle: Puzzle, seed: int = 0, pattern: str | None = None,
                      weights: Mapping[str, float] | None = None) -> ExpertTrajectory:
    """A correct multi-turn trajectory for `puzzle`: think, zoom (one or more times), answer.

    `pattern` (default: drawn with `weights`, `DEFAULT_PATTERN_WEIGHTS` if None):
    "direct" zooms straight at the target (medium: a coarse window, then into observation_1);
    "trial_and_error" first zooms a wrong place (a same-colour decoy, or a window without the target)
    and says so; "depth_first" zooms a coarse window, then into it (medium: one level deeper);
    "goal_maintenance" zooms too wide first, then tight from the same source, restating the goal.
    Hard puzzles check the look-alikes in turn (seeded order) until the one with the dot.

    Raises:
        ConfigError: unknown pattern or bad weights.
    """
    if pattern is None:
        weights = dict(DEFAULT_PATTERN_WEIGHTS if weights is None else weights)
        if not puzzle.decoys:  # nothing to mistake for the target
            weights.pop("trial_and_error", None)
        if set(weights) - set(PATTERNS) or any(x < 0 for x in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"pattern weights {weights}; expected non-negative weights over {PATTERNS}")
        names = [p for p in PATTERNS if weights.get(p, 0) > 0]
        pattern = _Rng("pattern", puzzle.doc_id, puzzle.seed, seed).weighted(names, [weights[p] for p in names])
    if pattern not in PATTERNS:
        raise ConfigError(f"pattern = {pattern!r}; expected one of {PATTERNS}")
    if pattern == "trial_and_error" and not puzzle.decoys:
        raise ConfigError(f"{puzzle.doc_id}: pattern 'trial_and_error' needs a decoy; this scene has none "
                          "(SceneConfig.decoy=False)")
    ex = _Expert(puzzle, _Rng("expert", puzzle.doc_id, puzzle.seed, seed, pattern))
    if puzzle.config.layout == "grid":
        _solve_grid(ex, pattern)
    else:
        {"easy": _solve_easy, "medium": _solve_medium, "hard": _solve_hard}[puzzle.level](ex, pattern)
    conv = [{"from": "system", "value": SYSTEM_PROMPT_TOOL_CROP}, {"from": "human", "value": puzzle.problem}]
    for i, text in enumerate(ex.turns):
        conv.append({"from": "gpt", "value": text})
        if i < len(ex.turns) - 1:
            conv.append({"from": "human", "value": observation_text(i)})
    if len(ex.turns) > MAX_TURNS:
        raise AssertionError(f"{puzzle.doc_id}: {len(ex.turns)} turns > {MAX_TURNS}")
    return ExpertTrajectory(conv, [v.image for v in ex.views], pattern, ex.boxes)


def _solve_easy(ex: _Expert, pattern: str) -> None:
    p, t = ex.p, ex.p.target_object
    pos = ex.where(t)
    if pattern == "trial_and_error":
        d = p.objects[p.decoys[0]]
        call, _ = ex.tight(d, 0)
        ex.turn(ex.say(f"I need {ex.goal}. There is a {ex.color} object at the {ex.where(d)}; let me check it.",
                       f"I am looking for the {ex.desc}. Let me zoom in on the {ex.color} object at the "
                       f"{ex.where(d)}."), call)
        call, _ = ex.tight(t, 0)
        ex.turn(f"This is a {ex.color} {d.shape}, not a {ex.color} {ex.shape}. {ex.still()} The {ex.desc} is at "
                f"the {pos}. Let me zoom in there.", call)
    elif pattern == "depth_first":
        call, k, region = ex.window(0, t)
        ex.turn(ex.say(f"I need {ex.goal}. It is in the {region} region; let me zoom in on that region first.",
                       f"The {ex.desc} is somewhere in the {region} region. Let me look at that region."), call)
        call, _ = ex.tight(t, k)
        ex.turn(f"I can see the {ex.desc} here, but the {ex.kind} is still too small. Let me zoom in on it.", call)
    elif pattern == "goal_maintenance" and (wide := ex.wide(t, 0)) is not None:
        call, k = wide
        ex.turn(f"I need {ex.goal}. Let me zoom in on the area around the {ex.desc} at the {pos}.", call)
        call, _ = ex.tight(t, 0)
        ex.turn(f"The {ex.desc} is here, but its {ex.kind} is still too small to read. {ex.still()} Let me zoom in "
                "closer on the original image.", call)
    else:
        call, _ = ex.tight(t, 0)
        ex.turn(ex.say(f"I need {ex.goal}. The {ex.desc} is at the {pos}, but its {ex.kind} is too small to read. "
                       "Let me zoom in on it.",
                       f"I can see the {ex.desc} at the {pos}. Let me zoom in to read its {ex.kind}."), call)
    ex.answer(ex.read(t))


def _solve_medium(ex: _Expert, pattern: str) -> None:
    p, t = ex.p, ex.p.target_object
    first = f"I need {ex.goal}. It is too small to make out here"
    if pattern == "trial_and_error":
        decoys = [p.objects[i] for i in p.decoys]
        call, _, wrong = ex.window(0, avoid=t, prefer=decoys)
        ex.turn(f"{first}; it may be in the {wrong} region. Let me zoom in there.", call)
        seen = [d for d in decoys if ex._inside(d, ex.views[-1].box)]
        call, k, region = ex.window(0, t)
        miss = (f"There is only a {ex.color} {seen[0].shape} here, not a {ex.color} {ex.shape}." if seen
                else f"There is no {ex.color} {ex.shape} in this region.")
        ex.turn(f"{miss} {ex.still()} It may be in the {region} region instead. Let me zoom in there.", call)
    else:
        call, k, region = ex.window(0, t)
        ex.turn(ex.say(f"{first}; it seems to be in the {region} region. Let me zoom in there first.",
                       f"{first}. Let me zoom in on the {region} region, where it seems to be."), call)
    seen = f"I can see the {ex.desc} in this region, but the {ex.kind} is still too small to read."
    if pattern == "depth_first":
        call, k2, _ = ex.window(k, t)
        ex.turn(f"{seen} Let me zoom in on the part of this view around it.", call)
        call, _ = ex.tight(t, k2)
        ex.turn(f"The {ex.desc} is bigger now, but I need to zoom in once more to read it.", call)
    elif pattern == "goal_maintenance" and (wide := ex.wide(t, k)) is not None:
        call, _ = wide
        ex.turn(f"{seen} {ex.still()} Let me zoom in around it.", call)
        call, _ = ex.tight(t, k)
        ex.turn(f"It is still too small to read. {ex.still()} Let me zoom in closer on observation {k}.", call)
    else:
        call, _ = ex.tight(t, k)
        ex.turn(f"{seen} Let me zoom in on it.", call)
    ex.answer(ex.read(t))


def _solve_hard(ex: _Expert, pattern: str) -> None:
    p = ex.p
    order = ex.rng.shuffle(list(p.candidates))
    visits = [p.objects[i] for i in order[: order.index(p.target) + 1]]
    n = len(p.candidates)
    plural = f"{n} {ex.color} {ex.shape}s"
    reaction = ""
    if pattern == "trial_and_error":
        d = p.objects[p.decoys[0]]
        call, _ = ex.tight(d, 0)
        ex.turn(f"I need {ex.goal}. Let me start with the {ex.color} object at the {ex.where(d)}.", call)
        reaction = f"This is a {ex.color} {d.shape}, not a {ex.color} {ex.shape}. {ex.still()} I see {plural}."
    for j, obj in enumerate(visits):
        pos = ex.where(obj)
        if j == 0 and pattern == "depth_first":
            call, k, region = ex.window(0, obj)
            ex.turn(f"I need {ex.goal}. I see {plural}, and the dots are too small to see here. Let me first zoom "
                    f"in on the {region} region.", call)
            call, _ = ex.tight(obj, k)
            ex.turn(f"There is a {ex.color} {ex.shape} in this region. Let me zoom in on it to look for the dot.",
                    call)
        else:
            call, _ = ex.tight(obj, 0)
            if j == 0 and not reaction:
                intent = ex.say(f"I need {ex.goal}. I see {plural}, and the dots are too small to see here. Let me "
                                f"check the one at the {pos} first.",
                                f"There are {plural}. I need the one with a {p.ink} dot. Let me check the one at the "
                                f"{pos} first.")
            else:
                intent = f"Let me check the {ex.color} {ex.shape} at the {pos}."
            ex.turn(f"{reaction} {intent}".strip(), call)
        if obj is not p.target_object:
            reaction = f"This {ex.color} {ex.shape} has no {p.ink} dot; it shows {obj.glyph}."
            if pattern == "goal_maintenance" or ex.rng.random() < 0.5:
                reaction += f" {ex.still()}"
    ex.answer(ex.read(p.target_object))


# Grid-layout thoughts, one entry per step kind ("this cell" / "this part" name the box that follows).
# Fields: d "red circle", c colour, s shape, k "number"/"letter", goal "the number on the red circle
# [with a white dot]", n look-alikes, ink the mark's colour, mark "dot"/"border", g the glyph, wrong the
# decoy's shape.
_TERSE: Mapping[str, tuple[str, ...]] = {
    "cell": ("The {d} is in this cell. Zoom in.",),  # zoom the target's cell
    "part": ("The {d} is in this part. Zoom in.",),  # depth first: a quadrant that holds it
    "hidden": ("The {d} is too small here. Zoom in on this part.",),  # medium: the quadrant first
    "decoy": ("A {c} object is in this cell. Check it.",),  # trial and error: a same-colour decoy
    "decoy_shape": ("A {s} is in this cell. Check it.",),  # ... or (unique_colors) a same-shape one
    "not_color": ("This {s} is {wrong}, not {c}.",),
    "not": ("This is a {c} {wrong}, not a {c} {s}.",),  # ... and the reaction to it
    "none": ("No {d} here. Try this part.",),  # medium trial and error: the wrong quadrant
    "goal": ("Goal: {goal}. Zoom in on this part.",),  # goal maintenance: too wide first
    "still": ("Still too small. Goal: {goal}. Zoom in on this cell.",),  # ... then tight, same source
    "many": ("There are {n} {d}s. Find the one with a {ink} {mark}. Check this one.",),  # hard: first look-alike
    "many_part": ("There are {n} {d}s. Find the one with a {ink} {mark}. Zoom in on this part.",),
    "one": ("A {d} is in this cell. Zoom in.",),  # hard depth first: the look-alike inside the part
    "nodot": ("No {mark} here. Check the next {d}.",),
    "nodot_goal": ("No {mark} here. Goal: {goal}. Check the next {d}.",),
    "dot": ("It has the {mark}. It shows {g}.",),
    "read": ("It shows {g}.",),
}
_VERBOSE_GRID: Mapping[str, tuple[str, ...]] = {
    "cell": ("The {d} is in this cell, but its {k} is too small to read. Let me zoom in on it.",
             "I can see the {d} in this cell. Let me zoom in to read its {k}."),
    "part": ("The {d} is in this part of the image. Let me zoom in on that part first.",),
    "hidden": ("I need {goal}. It is too small to make out here; let me zoom in on this part first.",
               "The {d} is too small to see here. Let me zoom in on the part where it seems to be."),
    "decoy": ("I need {goal}. There is a {c} object in this cell; let me check it.",),
    "decoy_shape": ("I need {goal}. There is a {s} in this cell; let me check it.",),
    "not_color": ("This {s} is {wrong}, not {c}.",),
    "not": ("This is a {c} {wrong}, not a {c} {s}.",),
    "none": ("There is no {d} in this part. I still need {goal}. Let me try this part instead.",),
    "goal": ("I need {goal}. Let me zoom in on the area around the {d}.",),
    "still": ("The {d} is here, but its {k} is still too small to read. I still need {goal}. Let me zoom in on "
              "its cell.",),
    "many": ("I need {goal}. I see {n} {d}s, and the {mark}s are too small to see here. Let me check this one first.",),
    "many_part": ("I need {goal}. I see {n} {d}s, and the {mark}s are too small to see here. Let me first zoom in "
                  "on this part.",),
    "one": ("There is a {d} in this cell. Let me zoom in on it to look for the {mark}.",),
    "nodot": ("This {d} has no {ink} {mark}. Let me check the next one.",),
    "nodot_goal": ("This {d} has no {ink} {mark}. I still need {goal}. Let me check the next one.",),
    "dot": ("This {d} has a {ink} {mark}, and its {k} is {g}.",),
    "read": ("Now I can read it: the {k} on the {d} is {g}.", "The {d} shows the {k} {g}."),
}


def _solve_grid(ex: _Expert, pattern: str) -> None:
    """Grid layout: every zoom is a quadrant of its source, a quarter of one, or an object's cell."""
    p, t = ex.p, ex.p.target_object
    cells = ex.views[0].cells
    assert cells is not None
    quarter = (cells[2] // 4, cells[3] // 4)  # a 2x2-cell block on an 8x8 grid: too wide to read
    if p.level == "hard":
        if ex.cfg.search_order == "reading":  # row by row, left to right
            order = sorted(p.candidates, key=lambda i: p.objects[i].cell[::-1])
        else:
            order = ex.rng.shuffle(list(p.candidates))
        visits = [p.objects[i] for i in order[: order.index(p.target) + 1]]
        lead = ""
        if pattern == "trial_and_error":
            d = p.objects[p.decoys[0]]
            ex.turn(*ex.decoy(d))
            lead = ex.not_it(d) + " "
        for j, obj in enumerate(visits):
            if j == 0 and pattern == "depth_first":
                call, k = ex.half(0, obj)
                ex.turn(lead + ex.phrase("many_part"), call)
                ex.turn(ex.phrase("one"), ex.cell(obj, k))
            elif j == 0:
                ex.turn(lead + ex.phrase("many"), ex.cell(obj, 0))
            else:
                ex.turn(ex.phrase("nodot_goal" if pattern == "goal_maintenance" else "nodot"), ex.cell(obj, 0))
        ex.answer(ex.phrase("dot"))
        return
    k = 0  # the view the final cell zoom is cut from
    if p.level == "easy":
        if pattern == "trial_and_error":
            d = p.objects[p.decoys[0]]
            ex.turn(*ex.decoy(d))
            ex.turn(ex.not_it(d) + " " + ex.phrase("cell"), ex.cell(t, 0))
        elif pattern == "depth_first":
            call, k = ex.half(0, t)
            ex.turn(ex.phrase("part"), call)
        elif pattern == "goal_maintenance":
            ex.turn(ex.phrase("goal"), ex.block(0, quarter, t)[0])
    else:
        if pattern == "trial_and_error":
            ex.turn(ex.phrase("hidden"), ex.half(0, avoid=t, prefer=[p.objects[i] for i in p.decoys])[0])
            call, k = ex.half(0, t)
            ex.turn(ex.phrase("none"), call)
        else:
            call, k = ex.half(0, t)
            ex.turn(ex.phrase("hidden"), call)
        if pattern == "depth_first":
            call, k = ex.half(k, t)
            ex.turn(ex.phrase("part"), call)
        elif pattern == "goal_maintenance":
            ex.turn(ex.phrase("goal"), ex.half(k, t)[0])  # a quarter of the quadrant, then its cell from k
    if not (p.level == "easy" and pattern == "trial_and_error"):
        ex.turn(ex.phrase("still" if pattern == "goal_maintenance" else "cell"), ex.cell(t, k))
    ex.answer(ex.phrase("read"))


# --------------------------------------------------------------------------------------------------
# Single-skill questions (dense perception supervision)
# --------------------------------------------------------------------------------------------------

PERCEPTION_SKILLS = ("locate", "locate_hard", "read", "dot", "search", "search_hard", "check")


def perception_question(seed: int, skill: str, config: SceneConfig,
                        style: str = "short") -> tuple[list[dict[str, str]], list[Image.Image]]:
    """One question that exercises one perception skill the search needs, as a (human, gpt) conversation
    with its image, on a grid-layout puzzle's scene. Why: a model trained from random init must learn to
    see before it can learn to search (Qwen2.5-VL's pretraining plays this part for Mini-o3), and a
    trajectory spends ~400 tokens for one box and one answer; here every answer token is informative.

    "locate": the original and the target -> the expert's zoom box onto the target's cell (easy puzzles:
        a hard target differs from its look-alikes only by its dot).
    "locate_hard": a hard puzzle's original and question -> the expert's first turn, the zoom onto the
        first look-alike it checks (expert style: its own turn; short: the box).
    "check": a hard puzzle's direct expert trajectory up to its reaction to the first zoom ("expert" only):
        the first look-alike's box, then, on its zoom, either "it has the mark, it shows X" and the answer
        or "no mark" and the next look-alike's box. The first look-alike is the target half of the time.
        Why: in whole hard trajectories a from-scratch model told the mark at chance in context after
        150-300 steps; here every example carries one balanced mark decision on two images.
    "read": the cell zoom of one labelled object and a question about it -> its label.
    "dot": the cell zoom of one of a hard puzzle's look-alikes -> whether it carries the dot ("short" only).
    "search": an easy puzzle's whole direct expert trajectory: locate, zoom, read the observation ("expert"
        only). Why: a model that locates and reads alone still read a trajectory's observation at chance
        for ~600 steps of 8 and then at 100 % (`bench/learnability.py traj-read`, docs/demo.md); easy
        trajectories are ~3x cheaper a step than the hard level's, so the chaining is learnt on them.
    "search_hard": a hard puzzle's whole direct expert trajectory: check the look-alikes in turn for the
        mark, read the one that has it ("expert" only).
    The zooms are the crops the environment makes from the expert's boxes.

    `style="short"`: bare answers ("Where is the red square?" -> "[0.250, 0.500, 0.500, 0.750]", "What
    pattern is on the green square?" -> "bars", "Does the red square have a white dot?" -> "yes").
    `style="expert"`: the puzzle's own question type, answered with the very turn the expert would write
    at that point (`<think>...</think>` and its grounding call, or its answer), so that a model trained
    on them needs no new output format for the trajectories that follow (after 500 steps of short answers
    a model re-learned the trajectory format slowly, docs/demo.md).

    Raises:
        ConfigError: unknown skill or style, a free-layout config, or no hard level ("dot").
    """
    if skill not in PERCEPTION_SKILLS or style not in ("short", "expert") or (skill, style) in (
            ("dot", "expert"), ("search", "short"), ("search_hard", "short"), ("check", "short")):
        raise ConfigError(f"skill = {skill!r}, style = {style!r}; expected one of {PERCEPTION_SKILLS} and "
                          "'short' or 'expert' ('search', 'search_hard', 'check' are 'expert' only: the expert's trajectories; "
                          "'dot' is 'short' only: the expert's turn after a look-alike "
                          "without the dot zooms the next one, on an original this question does not show)")
    hard = skill in ("dot", "search_hard", "locate_hard", "check")
    if config.layout != "grid" or (hard and "hard" not in config.levels):
        raise ConfigError(f"perception_question({skill!r}) needs a grid-layout SceneConfig"
                          + (" with the hard level" if hard else ""))
    p = make_puzzle(seed, "hard" if hard else "easy", config)
    if skill == "check":  # puzzles drawn until one whose first look-alike checked is (not) the target
        first_is_target = _Rng("perception", seed, skill).random() < 0.5
        for n in itertools.count():
            p = make_puzzle(_derive("check", seed, n), "hard", config) if n else p
            e = expert_trajectory(p, seed=seed, pattern="direct")
            if (len(e.gpt_turns) == 2) == first_is_target:
                conv = [m for m in e.conversations if m["from"] != "system"]
                return conv[:4], e.images[:2]
    if skill.startswith("search"):
        e = expert_trajectory(p, seed=seed, pattern="direct")
        return [m for m in e.conversations if m["from"] != "system"], e.images
    rng = _Rng("perception", seed, skill)
    ex = _Expert(p, rng)
    expert = style == "expert"

    def conversation(question: str, answer: str, image: Image.Image):
        return [{"from": "human", "value": f"{DATASET_IMAGE_PLACEHOLDER}\n{question}"},
                {"from": "gpt", "value": answer}], [image]

    def box(call: str) -> str:  # a call's box as the expert wrote it: "[0.250, 0.500, 0.500, 0.750]"
        return call.split('"bbox_2d": ', 1)[1].split("]", 1)[0] + "]"

    if skill == "locate":
        call = ex.cell(p.target_object, 0)
        if expert:
            return conversation(p.question, f"<think>{ex.phrase('cell')}</think>\n{call}", p.image)
        return conversation(f"Where is the {p.description}?", box(call), p.image)
    if skill == "locate_hard":
        first = expert_trajectory(p, seed=seed, pattern="direct").gpt_turns[0]
        if expert:
            return conversation(p.question, first, p.image)
        t = p.target_object
        return conversation(f"Where is the first {t.color} {t.shape} to check?", box(first), p.image)
    if skill == "dot":
        obj = p.objects[rng.choice(p.candidates)]
        ex.cell(obj, 0)
        return conversation(f"Does the {obj.color} {obj.shape} have a {p.ink} {config.mark}?", "yes" if obj.mark else "no",
                            ex.views[-1].image)
    obj = rng.choice([o for o in p.objects if o.glyph is not None])
    what = "What pattern is on" if config.label == "texture" else "What is written on"
    question = f"{what} the {obj.color} {obj.shape}?"
    ex.cell(obj, 0)
    answer = f"<think>{ex.phrase('read', g=obj.glyph)}</think>\n<answer>{obj.glyph}</answer>" if expert \
        else str(obj.glyph)
    return conversation(question, answer, ex.views[-1].image)


# --------------------------------------------------------------------------------------------------
# Geometry checks (the level claims, per puzzle)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Files in Mini-o3's released formats
# --------------------------------------------------------------------------------------------------


def _iter_puzzles(split: str, n: int, seed: int, config: SceneConfig) -> Iterator[Puzzle]:
    """The `n` puzzles of a split, made one at a time (a default-preset scene is 38 MB of pixels)."""
    levels = (split,) if split in LEVELS else config.levels  # other splits take the levels in turn
    for i in range(n):
        level = levels[i % len(levels)]
        p = make_puzzle(_derive("synthetic", split, seed, i), level, config)
        yield dataclasses.replace(p, doc_id=f"{split}_{i:05d}")


def _puzzles_for(split: str, n: int, seed: int, config: SceneConfig) -> list[Puzzle]:
    return list(_iter_puzzles(split, n, seed, config))


@contextlib.contextmanager
def _json_list(path: str) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Yields `add(record)`: a JSON list written one record at a time, byte for byte what
    `json.dump(records, f, indent=1)` writes, so a split of any size is written with one record in memory.

    Why a temporary name: the file appears (by `os.replace`) only when complete, so an interrupted run
    never leaves a truncated list for `read_prompts` / `read_sharegpt`, nor a stale one that looks new.
    """
    partial, count = f"{path}.partial", 0
    with open(partial, "w", encoding="utf-8") as f:

        def add(record: Mapping[str, Any]) -> None:
            nonlocal count
            # json.dump nests each item one indent level deeper: the item's own lines, shifted by one space
            # (no raw newline can occur inside a JSON string, so every "\n" is a line break).
            f.write(("[\n " if count == 0 else ",\n ") + json.dumps(record, indent=1).replace("\n", "\n "))
            count += 1

        try:
            yield add
        except BaseException:
            f.close()
            os.remove(partial)
            raise
        f.write("\n]" if count else "[]")
    os.replace(partial, path)


def _progress(total: int | None, desc: str, show: bool) -> Any:
    """A tqdm bar on stderr (a no-op one unless `show`)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="puzzle", disable=not show, dynamic_ncols=True)


def write_benchmark(out_dir: str | os.PathLike, level_or_split: str, n: int, seed: int = 0,
                    config: SceneConfig | None = None, progress: bool = False) -> str:
    """Write `n` puzzles as Mini-o3's RL/val JSON (`read_prompts` reads it) plus PNG images.

    `level_or_split`: "easy" / "medium" / "hard" -> `out_dir/synthetic_<level>/val.json`
    (data_source `synthetic_<level>`); "train" -> `out_dir/synthetic_train/train.json`, levels in
    turn (data_source `synthetic_train`). Image paths are relative to the JSON's folder. Puzzles are
    made, written and released one at a time (memory does not grow with `n`); `progress` shows a bar.
    Returns the JSON path.
    """
    if level_or_split not in (*LEVELS, "train"):
        raise ConfigError(f"level_or_split = {level_or_split!r}; expected one of {(*LEVELS, 'train')}")
    config = config or SceneConfig()
    name = f"synthetic_{level_or_split}"
    root = os.path.join(os.fspath(out_dir), name)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    path = os.path.join(root, "train.json" if level_or_split == "train" else "val.json")
    with _json_list(path) as add, _progress(n, name, progress) as bar:
        for p in _iter_puzzles(level_or_split, n, seed, config):
            rel = f"images/{p.doc_id}.png"
            p.image.save(os.path.join(root, rel))
            add({"images": [rel], "doc_id": p.doc_id, "problem": p.problem, "solution": p.answer,
                 "data_source": name})
            bar.update()
    return path


def write_coldstart(out_dir: str | os.PathLike, puzzles_or_n: Iterable[Puzzle] | int, seed: int = 0,
                    config: SceneConfig | None = None, weights: Mapping[str, float] | None = None,
                    progress: bool = False) -> str:
    """Write expert trajectories as `out_dir/Mini-o3-Coldstart.json` (LLaMA-Factory sharegpt:
    `conversations` as a JSON string, relative image paths) with PNGs under
    `out_dir/images/minio3_coldstart_<i>/`. An int draws that many puzzles, levels in turn, made and
    released one at a time; `progress` shows a bar."""
    config = config or SceneConfig()
    if isinstance(puzzles_or_n, int):
        total: int | None = puzzles_or_n
        puzzles: Iterable[Puzzle] = _iter_puzzles("coldstart", puzzles_or_n, seed, config)
    else:
        puzzles = puzzles_or_n
        total = len(puzzles_or_n) if isinstance(puzzles_or_n, Sequence) else None
    root = os.fspath(out_dir)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "Mini-o3-Coldstart.json")
    with _json_list(path) as add, _progress(total, "coldstart", progress) as bar:
        for i, p in enumerate(puzzles):
            traj = expert_trajectory(p, seed=_derive("coldstart-expert", seed, i), weights=weights)
            folder = f"images/minio3_coldstart_{i}"
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            paths = []
            for k, im in enumerate(traj.images):
                rel = f"{folder}/{'original_image' if k == 0 else f'observation_{k}'}.png"
                im.save(os.path.join(root, rel))
                paths.append(rel)
            add({"conversations": json.dumps(traj.conversations), "images": paths})
            bar.update()
    return path


PRESETS = {"default": SceneConfig, "tiny": SceneConfig.tiny, "demo": SceneConfig.demo, "grid4": SceneConfig.grid4,
           "toy": SceneConfig.toy}


def write_all(out_dir: str | os.PathLike, n: int = 100, seed: int = 0, preset: str = "default",
              progress: bool = False) -> list[str]:
    """Everything `mini-o3 data synthetic` writes: `n` test questions per level, a training split of
    `3 n` (levels in turn) and `n` cold-start trajectories, all from one preset, streamed to disk one
    puzzle at a time (`progress`: a bar per level and split). Returns the paths."""
    if preset not in PRESETS:
        raise ConfigError(f"preset = {preset!r}; expected one of {sorted(PRESETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n = {n!r}; expected a whole number of questions per level, at least 1")
    config = PRESETS[preset]()
    paths = [write_benchmark(out_dir, level, n, seed, config, progress=progress) for level in config.levels]
    paths.append(write_benchmark(out_dir, "train", 3 * n, seed, config, progress=progress))
    paths.append(write_coldstart(os.path.join(os.fspath(out_dir), "coldstart"), n, seed, config, progress=progress))
    return paths


def tokenizer_texts(config: SceneConfig | None = None, n: int = 24, seed: int = 0) -> list[str]:
    """Questions, expert turns and observation texts of `n` puzzles (every level and pattern): a corpus
    for training a small BPE (`processing.tokenizer_train`) that encodes this data compactly."""
    config = config or SceneConfig.tiny()
    texts: list[str] = []
    for i, p in enumerate(_puzzles_for("tokenizer", n, seed, config) if n else []):
        patterns = [q for q in PATTERNS if p.decoys or q != "trial_and_error"]
        traj = expert_trajectory(p, seed=i, pattern=patterns[i % len(patterns)])
        texts += [m["value"] for m in traj.conversations[1:]]
    return texts
