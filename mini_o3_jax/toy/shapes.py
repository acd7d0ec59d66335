"""The toy scene's vocabulary as integer-exact pixel masks: colours, shapes, a 5x7 font, textures.

Why hand-made masks: no fonts and no PIL drawing, so a glyph or a shape is the same pixels on any
machine (`toy/render.py` paints them; `toy/scene.py` sizes objects so their label fits).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from mini_o3_jax.errors import ConfigError

__all__ = ["COLORS", "FONT_5X7", "GLYPH_H", "GLYPH_W", "INK", "INK_RGB", "SHAPES", "TEXTURES", "TEXTURE_PERIOD",
           "fitting_sizes", "glyph_bitmap", "label_origin", "shape_mask", "texture_mask"]

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


@functools.lru_cache(maxsize=512)
def shape_mask(shape: str, size: int) -> np.ndarray:
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


def label_origin(shape: str, size: int, lw: int, lh: int) -> tuple[int, int]:
    """Top-left of the label block inside the shape's box (low in a triangle, centred elsewhere)."""
    if shape == "triangle":
        return (size - lw) // 2, size - lh - max(2, size // 10)
    return (size - lw) // 2, (size - lh) // 2


@functools.lru_cache(maxsize=4096)
def _label_fits(shape: str, size: int, lw: int, lh: int) -> bool:
    x, y = label_origin(shape, size, lw, lh)
    if x < 1 or y < 1 or x + lw + 1 > size or y + lh + 1 > size:
        return False
    return bool(shape_mask(shape, size)[y - 1:y + lh + 1, x - 1:x + lw + 1].all())


@functools.lru_cache(maxsize=1024)
def fitting_sizes(shape: str, lo: int, hi: int, lw: int, lh: int) -> tuple[int, ...]:
    return tuple(s for s in range(max(lo, 1), hi + 1) if _label_fits(shape, s, lw, lh))


@functools.lru_cache(maxsize=64)
def glyph_bitmap(char: str, cell: int) -> np.ndarray:
    rows = np.array([[ch == "#" for ch in row] for row in FONT_5X7[char]], bool)
    return np.repeat(np.repeat(rows, cell, axis=0), cell, axis=1)


def texture_mask(name: str, x0: int, y0: int, size: int) -> np.ndarray:
    """Where texture `name` puts ink in the size x size box at (x0, y0), anchored to image coordinates."""
    y, x = np.mgrid[y0:y0 + size, x0:x0 + size]
    half = TEXTURE_PERIOD // 2
    pattern = {"stripes": y // half, "bars": x // half, "checks": x // half + y // half,
               "slashes": (x + y) // half}
    if name not in pattern:
        raise ConfigError(f"unknown texture {name!r}; expected one of {list(TEXTURES)}")
    return pattern[name] % 2 == 0
