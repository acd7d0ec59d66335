"""A scene's pixels: the background, clutter strokes, the objects and their labels.

Why integer or IEEE-exact numpy arithmetic (no PIL resampling): a seed gives the same pixels on any
machine; PNG file bytes additionally depend on the zlib build.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from mini_o3_jax.toy.rng import Rng
from mini_o3_jax.toy.scene import SceneConfig, SceneObject, box_gap, level_geometry
from mini_o3_jax.toy.shapes import (
    COLORS,
    GLYPH_H,
    GLYPH_W,
    INK,
    INK_RGB,
    glyph_bitmap,
    label_origin,
    shape_mask,
    texture_mask,
)

__all__ = ["render_scene"]

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


def render_scene(config: SceneConfig, objects: Sequence[SceneObject], level: str, seed: int) -> Image.Image:
    """The full-resolution RGB image of `objects` on a background drawn from `seed`."""
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
    rng = Rng("clutter", seed)
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
            if any(box_gap(sb, o.box) < 2 for o in objects):
                continue
        _draw_stroke(img, (x, y), p1, width, (g + d, g, g - d))
    for o in objects:
        x0, y0, x1, y1 = o.box
        region = img[y0:y1, x0:x1]
        mask = shape_mask(o.shape, o.size)
        region[mask] = COLORS[o.color]
        if o.glyph is None:
            continue
        ink = INK_RGB[INK[o.color]]
        if config.label == "texture":  # black lines (a dark tint in the original), a white dot on top
            region[mask & texture_mask(o.glyph, x0, y0, o.size)] = INK_RGB["black"]
            m = config.mark_px
            if o.mark and config.mark == "border":  # a frame along the silhouette's bounding box
                frame = np.zeros_like(mask)
                frame[:m], frame[-m:], frame[:, :m], frame[:, -m:] = True, True, True, True
                region[mask & frame] = INK_RGB["white"]
            elif o.mark:  # a solid square where a glyph's label would sit
                lx, ly = label_origin(o.shape, o.size, m, m)
                region[ly:ly + m, lx:lx + m] = INK_RGB["white"]
            continue
        lw, lh = GLYPH_W * c, GLYPH_H * c
        if level == "hard":  # dot row above the glyph, present or not, so look-alikes differ only by the dot
            lh += c + config.mark_px
        lx, ly = label_origin(o.shape, o.size, lw, lh)
        if level == "hard":
            m = config.mark_px
            if o.mark:
                mx = lx + (lw - m) // 2
                region[ly:ly + m, mx:mx + m][shape_mask("circle", m)] = ink
            ly += m + c
        region[ly:ly + GLYPH_H * c, lx:lx + lw][glyph_bitmap(o.glyph, c)] = ink
    return Image.fromarray(img, "RGB")
