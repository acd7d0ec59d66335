"""Mini-o3's pre-resize rules (recipe spec §2): what happens to an image between loading and the Qwen
processor.

Decode, plain `convert("RGB")` (alpha dropped, not composited), then bound the pixel count: originals with
LANCZOS (`resize_original`), zoom-in crops with NEAREST and a 28-pixel short side (`resize_crop`), SFT
images with LLaMA-Factory's rule (`resize_llamafactory`). The released code truncates sizes with int(),
so these do too.
"""

from __future__ import annotations

import math

from PIL import Image

from mini_o3_jax.errors import ImageError
from mini_o3_jax.processing.image import (
    MAX_ASPECT,
    MIN_SIDE,
    MINI_O3_MAX_PIXELS,
    MINI_O3_MIN_PIXELS,
    plain_rgb,
    source_name,
)


def _scale_to_pixels(image: Image.Image, target: int, resample: Image.Resampling) -> Image.Image:
    """Scale both sides by sqrt(target / (w*h)), truncating with int() as the released code does."""
    width, height = image.size
    f = math.sqrt(target / (width * height))
    new_w, new_h = int(width * f), int(height * f)
    if new_w < 1 or new_h < 1:
        raise ImageError(
            f"image {source_name(image)} of size {width}x{height} (WxH) would be resized to "
            f"{new_w}x{new_h} to fit {target} pixels; expected a less elongated image"
        )
    return image.resize((new_w, new_h), resample=resample)


def _fit_pixel_budget(
    image: Image.Image, min_pixels: int, max_pixels: int, resample: Image.Resampling
) -> Image.Image:
    """Scale down above max_pixels, then (re-measured) up below min_pixels."""
    if min_pixels > max_pixels:
        raise ImageError(f"min_pixels = {min_pixels} > max_pixels = {max_pixels}; expected min <= max")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(
            f"image {source_name(image)} is empty ({width}x{height}, WxH); expected both sides >= 1"
        )
    if width * height > max_pixels:
        image = _scale_to_pixels(image, max_pixels, resample)
    width, height = image.size
    if width * height < min_pixels:
        image = _scale_to_pixels(image, min_pixels, resample)
    return image


def resize_original(
    image: Image.Image, min_pixels: int = MINI_O3_MIN_PIXELS, max_pixels: int = MINI_O3_MAX_PIXELS
) -> Image.Image:
    """Mini-o3's rule for the original (question) image, before the HF processor.

    Bounds the token count (2M px is about 2,551 visual tokens) so that several zoom turns fit in
    the context window. Following `multimodal_dataset.py::process_image` (spec §2): first a plain
    `convert("RGB")` if the mode is not RGB (the released code opens with
    `Image.open(p).convert("RGB")`: alpha dropped, palette expanded, before any resize; resizing a
    palette image first would make PIL fall back to NEAREST); then if w*h > max_pixels scale both
    sides by sqrt(max_pixels/(w*h)) with int() truncation (LANCZOS); then if w*h < min_pixels scale
    up the same way; both sides must be >= 28.

    Unlike the released code we also reject an aspect ratio >= 200 up front (the crop tool's
    rule), with a message naming the image, instead of failing later inside smart_resize.

    Raises:
        ImageError: aspect ratio >= 200, or a side ends up below 28 pixels.
    """
    w0, h0 = image.size
    if min(w0, h0) <= 0 or max(w0, h0) / min(w0, h0) >= MAX_ASPECT:
        raise ImageError(
            f"image {source_name(image)} is {w0}x{h0} (WxH): aspect ratio {max(w0, h0) / max(min(w0, h0), 1):.1f} "
            f"is not below {MAX_ASPECT}, the limit of Qwen2.5-VL's processor and Mini-o3's zoom tool"
        )
    image = _fit_pixel_budget(plain_rgb(image), min_pixels, max_pixels, Image.Resampling.LANCZOS)
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(
            f"image {source_name(image)} is {width}x{height} (WxH) after Mini-o3's pixel-budget resize; "
            f"expected both sides >= {MIN_SIDE}"
        )
    return image


def resize_crop(
    image: Image.Image, min_pixels: int = MINI_O3_MIN_PIXELS, max_pixels: int = MINI_O3_MAX_PIXELS
) -> Image.Image:
    """Mini-o3's rule for a zoom-in crop, before the HF processor.

    Crops can be tiny or thin, which the ViT (28 px blocks) and HF's smart_resize (aspect <= 200)
    cannot take, so they are stretched rather than rejected. The steps come from the recipe spec's
    paraphrase of the released `vllm_async_engine.py::process_image` (the exact code was not
    available), interpreted as:

    0. Plain `convert("RGB")` if the mode is not RGB. Crops are cut from the original, which the
       environment already converted on load (`load_rgb`), so this only matters for a caller's
       non-RGB crop; with NEAREST resampling the order makes no difference to the pixels.
    1. The same pixel budget as `resize_original` but with NEAREST: if w*h > max_pixels scale by
       sqrt(max_pixels/(w*h)), then if w*h < min_pixels by sqrt(min_pixels/(w*h)); sides int()-truncated.
    2. If min(w, h) < 28: every side becomes int(side * 28 / min(w, h)) + 1 (the short side becomes
       29), NEAREST.
    3. If max(w, h) / min(w, h) >= 200: the short side becomes int(long / 190) + 1, NEAREST.

    Note that step 1 usually lifts a small crop to a 28+ px short side already (a 10x500 crop
    becomes 28x1414), so step 2 only fires for very elongated crops.

    Raises:
        ImageError: the pixel budget would shrink a side to zero.
    """
    image = _fit_pixel_budget(plain_rgb(image), min_pixels, max_pixels, Image.Resampling.NEAREST)
    width, height = image.size
    short = min(width, height)
    if short < MIN_SIDE:
        width, height = int(width * MIN_SIDE / short) + 1, int(height * MIN_SIDE / short) + 1
        image = image.resize((width, height), resample=Image.Resampling.NEAREST)
    if max(width, height) / min(width, height) >= MAX_ASPECT:
        if width < height:
            width = int(height / 190) + 1
        else:
            height = int(width / 190) + 1
        image = image.resize((width, height), resample=Image.Resampling.NEAREST)
    return image


def resize_llamafactory(
    image: Image.Image, min_pixels: int = MINI_O3_MIN_PIXELS, max_pixels: int = MINI_O3_MAX_PIXELS
) -> Image.Image:
    """The cold-start SFT image rule: LLaMA-Factory's Qwen2-VL plugin with Mini-o3's
    `image_max_pixels: 2000000`, `image_min_pixels: 40000` (spec §2, §3).

    Pixel budget as `resize_original` but with PIL's default (bicubic) resampling; then a side
    below 28 px is raised to 28, and an aspect ratio above 200 is cut to 180 by stretching the
    short side, so every image the SFT data holds is accepted by smart_resize.

    Unlike the RL/eval path, and exactly like LLaMA-Factory's `_preprocess_image`, the plain
    `convert("RGB")` comes *after* the resizes and no EXIF rotation is applied (LLaMA-Factory
    opens with a bare `Image.open`): the SFT images are what LLaMA-Factory fed the model. (PIL
    resizes a palette image with NEAREST whatever filter is asked for, and RGBA premultiplied; for
    RGB and L images, such as the JPEGs of the cold-start set, the order makes no difference.)
    """
    image = _fit_pixel_budget(image, min_pixels, max_pixels, Image.Resampling.BICUBIC)
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        image = image.resize((max(width, MIN_SIDE), max(height, MIN_SIDE)), resample=Image.Resampling.BICUBIC)
    width, height = image.size
    if width / height > MAX_ASPECT:
        image = image.resize((height * 180, height), resample=Image.Resampling.BICUBIC)
    elif height / width > MAX_ASPECT:
        image = image.resize((width, width * 180), resample=Image.Resampling.BICUBIC)
    return plain_rgb(image)
