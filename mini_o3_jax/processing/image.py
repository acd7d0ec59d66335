"""Images -> Qwen2.5-VL patch rows, in plain numpy + PIL, bit-for-bit with HF's PIL backend.

The model only ever sees `pixel_values`, so any drift here (a different resampler, a different
float order, a different row layout) silently changes every answer. This module therefore copies
the *behaviour* of transformers' `Qwen2VLImageProcessorPil` (5.24) step by step:

1. `to_rgb_array`: transparency composited onto white, everything else `convert("RGB")`.
2. `smart_resize`: the target size, a multiple of 28 inside [min_pixels, max_pixels].
3. PIL bicubic resize of the uint8 RGB image (so the result is rounded back to uint8).
4. `x.astype(float64) * (1/255)` then cast to float32; `(x - mean) / std` in float32.
5. Patchify into rows of (C, T, py, px) with T = 2 identical frames, rows merge-block-major.

It also holds Mini-o3's own loading and pre-resize rules (`load_rgb`, `resize_original`,
`resize_crop`), which run *before* the processor and bound the pixel count of originals and zoom-in
crops: decode, plain `convert("RGB")`, pre-resize, processor (recipe spec §2). EXIF orientation is
not applied unless asked for (`exif_transpose=True`), as in the released pipeline.

Nothing here imports torch or transformers; the tests compare against transformers directly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mini_o3_jax.errors import ConfigError, ImageError

__all__ = [
    "MINI_O3_MAX_PIXELS",
    "MINI_O3_MIN_PIXELS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImageProcessor",
    "ProcessedImages",
    "load_image",
    "load_rgb",
    "num_image_tokens",
    "resize_crop",
    "resize_original",
    "smart_resize",
    "to_rgb_array",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Mini-o3's released RL/eval/SFT pixel bounds (recipe spec section 2), applied before the processor.
MINI_O3_MIN_PIXELS = 40_000
MINI_O3_MAX_PIXELS = 2_000_000

# The vision tower needs at least one 28x28 merge block per side.
_MIN_SIDE = 28
# HF's smart_resize refuses aspect ratios above this.
_MAX_ASPECT = 200

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _source_name(source: Any) -> str:
    """A short name for error messages: the path, "<bytes>", or the PIL image's filename."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "") or ""
        return repr(str(filename)) if filename else "<PIL image>"
    return repr(os.fspath(source))


def _check_pixel_limit(image: Image.Image, name: str) -> None:
    """Refuse images above PIL's decompression-bomb limit instead of letting PIL merely warn.

    PIL only warns between 1x and 2x the limit; a warning in a data loader is easy to miss and the
    decode can exhaust host memory, so anything above the limit is an error here.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    width, height = image.size
    if width * height > limit:
        raise ImageError(
            f"image {name} has {width}x{height} = {width * height} pixels, above PIL's decompression-bomb "
            f"limit PIL.Image.MAX_IMAGE_PIXELS = {limit}; expected a smaller image (if the file is trusted, "
            "raise the limit by setting PIL.Image.MAX_IMAGE_PIXELS to a larger value or None)"
        )


def load_image(source: ImageSource, *, exif_transpose: bool = False) -> Image.Image:
    """Open and fully decode an image, as stored, keeping its mode.

    Accepts a file path, encoded bytes, or a PIL image (passed through). The pixels are decoded
    now (`load()`), so a truncated or corrupt file fails here with the file's name rather than
    later inside a batch.

    EXIF orientation is *not* applied by default: Mini-o3's released pipeline (`Image.open`) and
    LLaMA-Factory do not rotate, so a rotated phone photo is seen as stored, and rotating it would
    change the pixels (and left/right answers) the model was trained and evaluated on (spec §2).
    `exif_transpose=True` applies `PIL.ImageOps.exif_transpose`, exactly as
    `transformers.image_utils.load_image` does, for HF parity.

    Unlike HF's `load_image` this does *not* call `convert("RGB")`: HF's plain convert drops alpha
    (no white compositing), whereas the image processor composites alpha on white. Keeping the mode
    lets the caller choose; `load_rgb` does the plain convert Mini-o3 used, and `to_rgb_array` the
    processor's compositing. URLs and base64 strings are not accepted.

    Raises:
        ImageError: missing file, not an image, truncated data, or more than
            `PIL.Image.MAX_IMAGE_PIXELS` pixels.
    """
    if isinstance(source, Image.Image):
        name = _source_name(source)
        try:
            source.load()
            return ImageOps.exif_transpose(source) if exif_transpose else source
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(
                f"image {name} could not be decoded ({e}); expected a complete, valid image"
            ) from e

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "<bytes>"
        data = bytes(source)
        opener: Any = io.BytesIO(data)
        if not data:
            raise ImageError(
                "image <bytes> is empty; expected the encoded bytes of an image file (PNG, JPEG, ...)"
            )
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = repr(path)
        if not os.path.exists(path):
            raise ImageError(f"image file {name} does not exist; expected a path to an image file")
        if not os.path.isfile(path):
            raise ImageError(f"image path {name} is not a regular file; expected a path to an image file")
        opener = path
    else:
        raise TypeError(
            f"load_image expects a path, encoded bytes or a PIL.Image.Image, got {type(source).__name__}"
        )

    try:
        with warnings.catch_warnings():
            # We apply our own, stricter limit below; silence PIL's in-between warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(opener)
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"image {name} is above PIL's decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS} (PIL: {e}); expected a smaller image (if the file is trusted, raise "
            "the limit by setting PIL.Image.MAX_IMAGE_PIXELS to a larger value or None)"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"image {name} is not a recognised image format (or its header is truncated); expected an encoded image (PNG, JPEG, WebP, ...)"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"image {name} could not be opened ({e}); expected a readable image file") from e

    with image:
        _check_pixel_limit(image, name)
        try:
            image.load()
            # exif_transpose returns a new image; otherwise copy, as the file handle is closed below.
            decoded = ImageOps.exif_transpose(image) if exif_transpose else image.copy()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            # PIL reports truncation as OSError("image file is truncated ...") or a broken stream.
            raise ImageError(
                f"image {name} could not be decoded, it is truncated or corrupt ({e}); expected a complete image file"
            ) from e
    return decoded


def load_rgb(source: ImageSource, *, exif_transpose: bool = False) -> Image.Image:
    """Decode and plain-`convert("RGB")`: Mini-o3's `Image.open(path).convert("RGB")` (spec §2).

    The conversion comes before any pre-resize (`resize_original`, `resize_crop`), as in the
    released `multimodal_dataset.py::process_image`: alpha is dropped (not composited), a palette
    image is expanded to its colours, and no EXIF rotation is applied unless `exif_transpose`.

    Raises:
        ImageError: as `load_image`, or a mode PIL cannot convert to RGB.
    """
    return _plain_rgb(load_image(source, exif_transpose=exif_transpose))


# --------------------------------------------------------------------------------------------------
# HF Qwen2-VL image processor (PIL backend)
# --------------------------------------------------------------------------------------------------


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 3136,
    max_pixels: int = 12845056,
) -> tuple[int, int]:
    """HF's target size: both sides multiples of `factor`, pixel count near [min, max], aspect kept.

    Reproduces HF's rule exactly, including Python's half-to-even `round` in the first step and
    the floor (too big) / ceil (too small) branches, because one step of 28 px changes the number
    of visual tokens and hence every position id after the image.

    Returns:
        (height, width) of the resized image.

    Raises:
        ImageError: a side is not positive, or the aspect ratio is above 200 (as HF).
    """
    if height <= 0 or width <= 0:
        raise ImageError(f"image size {height}x{width} (HxW) is empty; expected both sides >= 1")
    aspect = max(height, width) / min(height, width)
    if aspect > _MAX_ASPECT:
        raise ImageError(
            f"image size {height}x{width} (HxW) has aspect ratio {aspect:.2f}; expected at most {_MAX_ASPECT}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels, converted the way HF's `convert_to_rgb` does for PIL images.

    HF decides "has transparency" from the band names (`"A" in image.getbands()`) or a
    `transparency` entry in `image.info` (palette or RGB/L colour-key transparency). Such images are
    converted to RGBA and alpha-composited over opaque white; all others go through a plain
    `convert("RGB")` (L/1/P/I/I;16/F/CMYK/YCbCr/HSV, and also "RGBa" whose band is a lower-case
    "a"). The band test is literal, so LAB ("L", "A", "B") also takes the compositing path; we
    keep that quirk because parity matters more than sense here.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"to_rgb_array expects a PIL.Image.Image, got {type(image).__name__}")
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")
    except ValueError as e:
        raise ImageError(
            f"image {_source_name(image)} of PIL mode {image.mode!r} cannot be converted to RGB ({e}); "
            "expected a mode PIL can convert (RGB, RGBA, L, LA, P, 1, I, I;16, F, CMYK, ...)"
        ) from e
    return np.asarray(rgb, dtype=np.uint8)


def num_image_tokens(grid_thw: Sequence[int] | np.ndarray, merge_size: int = 2) -> int:
    """LLM placeholder tokens for one image: t*h*w // merge_size**2 (the merger joins 2x2 patches)."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(-1))
    return t * h * w // merge_size**2


@dataclasses.dataclass(frozen=True)
class ProcessedImages:
    """Patch rows of a list of images, concatenated, plus one (t, h, w) patch grid per image."""

    pixel_values: np.ndarray  # float32 (sum_i t_i*h_i*w_i, C*T*p*p)
    grid_thw: np.ndarray  # int64 (n_images, 3)


def _require_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"image processor field {name!r} = {value!r}; expected a positive integer")
    return int(value)


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """Qwen2.5-VL image processor, numerically identical to HF's `Qwen2VLImageProcessorPil`.

    Defaults are the *published* Qwen2.5-VL `preprocessor_config.json` (max 12,845,056 pixels),
    not HF's class defaults (max 1,003,520), because that is what the released checkpoints and
    Mini-o3 run with.
    """

    min_pixels: int = 3136
    max_pixels: int = 12845056
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        for field in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"):
            _require_positive_int(field, getattr(self, field))
        if self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"image processor min_pixels = {self.min_pixels} > max_pixels = {self.max_pixels}; "
                "expected min_pixels <= max_pixels"
            )
        for field in ("image_mean", "image_std"):
            values = getattr(self, field)
            if isinstance(values, (str, bytes)) or len(values) != 3:
                raise ConfigError(
                    f"image processor field {field!r} = {values!r}; expected 3 per-channel values"
                )
            object.__setattr__(self, field, tuple(float(v) for v in values))
        if any(v == 0.0 for v in self.image_std):
            raise ConfigError(f"image processor image_std = {self.image_std}; expected non-zero values")

    def save_pretrained(self, path: str | os.PathLike) -> str:
        """Write a `preprocessor_config.json` that both this class and transformers read back."""
        os.makedirs(path, exist_ok=True)
        out = os.path.join(path, "preprocessor_config.json")
        config = {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        with open(out, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        return out

    @property
    def factor(self) -> int:
        """Side granularity in pixels: one merged LLM token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one pixel row: C * T * p * p (1176 for Qwen2.5-VL)."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageProcessor:
        """Read `preprocessor_config.json` from a checkpoint directory (or that file itself).

        Accepts the published layout (top-level `min_pixels`/`max_pixels`) and the transformers-5
        layout (`size: {shortest_edge, longest_edge}`); as in HF, top-level keys win. A missing
        file gives the published Qwen2.5-VL defaults. Settings this module does not reproduce
        (no resize/rescale/normalize/RGB conversion, non-bicubic resample, another rescale factor)
        raise ConfigError rather than being ignored, because ignoring them would change numerics.
        """
        path = os.fspath(path)
        file = path if os.path.isfile(path) else os.path.join(path, "preprocessor_config.json")
        if not os.path.exists(file):
            if not os.path.isdir(path):
                raise ConfigError(
                    f"{path!r} is neither a checkpoint directory nor a preprocessor_config.json file"
                )
            return cls()
        try:
            with open(file, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{file!r} could not be read as JSON ({e}); expected a preprocessor_config.json"
            ) from e
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{file!r} holds a {type(raw).__name__}; expected a JSON object")
        return cls._from_dict(raw, file)

    @classmethod
    def _from_dict(cls, raw: Mapping[str, Any], file: str) -> ImageProcessor:
        for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if raw.get(key, True) is not True:
                raise ConfigError(
                    f"{file!r}: {key} = {raw[key]!r} is not supported; expected true (or absent)"
                )
        resample = raw.get("resample", 3)
        if resample != int(Image.Resampling.BICUBIC):
            raise ConfigError(f"{file!r}: resample = {resample!r} is not supported; expected 3 (bicubic)")
        rescale = raw.get("rescale_factor", 1 / 255)
        if not isinstance(rescale, (int, float)) or not math.isclose(rescale, 1 / 255, rel_tol=1e-12):
            raise ConfigError(f"{file!r}: rescale_factor = {rescale!r} is not supported; expected 1/255")

        kwargs: dict[str, Any] = {}
        size = raw.get("size")
        if size is not None:
            if not isinstance(size, Mapping):
                raise ConfigError(
                    f"{file!r}: size = {size!r}; expected {{'shortest_edge': int, 'longest_edge': int}}"
                )
            if "shortest_edge" in size:
                kwargs["min_pixels"] = size["shortest_edge"]
            if "longest_edge" in size:
                kwargs["max_pixels"] = size["longest_edge"]
        for key in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"):
            if raw.get(key) is not None:
                kwargs[key] = raw[key]
        for key in ("image_mean", "image_std"):
            if raw.get(key) is not None:
                value = raw[key]
                if not isinstance(value, Sequence) or isinstance(value, str):
                    raise ConfigError(f"{file!r}: {key} = {value!r}; expected a list of 3 floats")
                kwargs[key] = tuple(value)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{file!r}: {e}") from e

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) that an image of this size is resized to before patchifying."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def preprocess_one(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image -> (patch rows float32 (N, C*T*p*p), grid (1, gh, gw)), HF's PIL path exactly."""
        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        new_h, new_w = self.target_size(height, width)
        # HF hands the uint8 array back to PIL and resizes there, so the result is rounded to uint8.
        resized = Image.fromarray(rgb).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.uint8)
        # HF's rescale: upcast to float64, multiply by the factor, then cast to float32 ...
        x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        # ... and normalize in float32 with float32 mean/std.
        x = (x - np.asarray(self.image_mean, dtype=np.float32)) / np.asarray(self.image_std, dtype=np.float32)
        return self._patchify(x)

    def _patchify(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(H, W, C) float32 -> rows ordered (block-row, block-col, in-block row, in-block col).

        Each row is (C, T, py, px) with the frame repeated T times, the layout the ViT's Conv3d
        patch embedding was trained on.
        """
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        height, width, channels = x.shape
        gh, gw = height // p, width // p
        blocks = x.reshape(gh // m, m, p, gw // m, m, p, channels)
        # (bh, mh, py, bw, mw, px, C) -> (bh, bw, mh, mw, C, py, px)
        blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5)
        blocks = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
        rows = np.ascontiguousarray(blocks.reshape(gh * gw, channels * t * p * p), dtype=np.float32)
        return rows, (1, gh, gw)

    def __call__(self, images: Image.Image | Sequence[Image.Image]) -> ProcessedImages:
        """Process one image or a list; rows of all images are concatenated in order."""
        if isinstance(images, Image.Image):
            images = [images]
        rows: list[np.ndarray] = []
        grids: list[tuple[int, int, int]] = []
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"ImageProcessor expects PIL images, got {type(image).__name__}")
            patches, grid = self.preprocess_one(image)
            rows.append(patches)
            grids.append(grid)
        if not rows:
            return ProcessedImages(
                pixel_values=np.zeros((0, self.patch_dim), dtype=np.float32),
                grid_thw=np.zeros((0, 3), dtype=np.int64),
            )
        return ProcessedImages(
            pixel_values=np.concatenate(rows, axis=0),
            grid_thw=np.asarray(grids, dtype=np.int64),
        )


# --------------------------------------------------------------------------------------------------
# Mini-o3 pre-resize rules (recipe spec section 2)
# --------------------------------------------------------------------------------------------------


def _scale_to_pixels(image: Image.Image, target: int, resample: Image.Resampling) -> Image.Image:
    """Scale both sides by sqrt(target / (w*h)), truncating with int() as the released code does."""
    width, height = image.size
    f = math.sqrt(target / (width * height))
    new_w, new_h = int(width * f), int(height * f)
    if new_w < 1 or new_h < 1:
        raise ImageError(
            f"image {_source_name(image)} of size {width}x{height} (WxH) would be resized to "
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
            f"image {_source_name(image)} is empty ({width}x{height}, WxH); expected both sides >= 1"
        )
    if width * height > max_pixels:
        image = _scale_to_pixels(image, max_pixels, resample)
    width, height = image.size
    if width * height < min_pixels:
        image = _scale_to_pixels(image, min_pixels, resample)
    return image


def _plain_rgb(image: Image.Image) -> Image.Image:
    """The released code's plain PIL convert: alpha is dropped, not composited."""
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageError(
            f"image {_source_name(image)} of PIL mode {image.mode!r} cannot be converted to RGB ({e}); "
            "expected a mode PIL can convert (RGB, RGBA, L, LA, P, 1, I, I;16, F, CMYK, ...)"
        ) from e


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
    if min(w0, h0) <= 0 or max(w0, h0) / min(w0, h0) >= _MAX_ASPECT:
        raise ImageError(
            f"image {_source_name(image)} is {w0}x{h0} (WxH): aspect ratio {max(w0, h0) / max(min(w0, h0), 1):.1f} "
            f"is not below {_MAX_ASPECT}, the limit of Qwen2.5-VL's processor and Mini-o3's zoom tool"
        )
    image = _fit_pixel_budget(_plain_rgb(image), min_pixels, max_pixels, Image.Resampling.LANCZOS)
    width, height = image.size
    if width < _MIN_SIDE or height < _MIN_SIDE:
        raise ImageError(
            f"image {_source_name(image)} is {width}x{height} (WxH) after Mini-o3's pixel-budget resize; "
            f"expected both sides >= {_MIN_SIDE}"
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
    image = _fit_pixel_budget(_plain_rgb(image), min_pixels, max_pixels, Image.Resampling.NEAREST)
    width, height = image.size
    short = min(width, height)
    if short < _MIN_SIDE:
        width, height = int(width * _MIN_SIDE / short) + 1, int(height * _MIN_SIDE / short) + 1
        image = image.resize((width, height), resample=Image.Resampling.NEAREST)
    if max(width, height) / min(width, height) >= _MAX_ASPECT:
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
    if min(width, height) < _MIN_SIDE:
        image = image.resize((max(width, _MIN_SIDE), max(height, _MIN_SIDE)), resample=Image.Resampling.BICUBIC)
    width, height = image.size
    if width / height > _MAX_ASPECT:
        image = image.resize((height * 180, height), resample=Image.Resampling.BICUBIC)
    elif height / width > _MAX_ASPECT:
        image = image.resize((width, width * 180), resample=Image.Resampling.BICUBIC)
    return _plain_rgb(image)
