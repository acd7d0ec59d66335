"""Images -> Qwen2.5-VL patch rows, in plain numpy + PIL, bit-for-bit with HF's PIL backend.

The model only ever sees `pixel_values`, so any drift here (a different resampler, a different
float order, a different row layout) silently changes every answer. This module therefore copies
the *behaviour* of transformers' `Qwen2VLImageProcessorPil` (5.24) step by step:

1. `to_rgb_array`: transparency composited onto white, everything else `convert("RGB")`.
2. `smart_resize`: the target size, a multiple of 28 inside [min_pixels, max_pixels].
3. PIL bicubic resize of the uint8 RGB image (so the result is rounded back to uint8).
4. `x.astype(float64) * (1/255)` then cast to float32; `(x - mean) / std` in float32.
5. Patchify into rows of (C, T, py, px) with T = 2 identical frames, rows merge-block-major.

It also holds Mini-o3's loading rule (`load_image`, `load_rgb`): EXIF orientation is not applied
unless asked for (`exif_transpose=True`), as in the released pipeline. The pre-resize rules that
run between loading and the processor live in `processing/resize.py`.

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
    "smart_resize",
    "to_rgb_array",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Mini-o3's released RL/eval/SFT pixel bounds (recipe spec section 2), applied before the processor.
MINI_O3_MIN_PIXELS = 40_000
MINI_O3_MAX_PIXELS = 2_000_000

# The vision tower needs at least one 28x28 merge block per side.
MIN_SIDE = 28
# HF's smart_resize refuses aspect ratios above this.
MAX_ASPECT = 200

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def source_name(source: Any) -> str:
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
        name = source_name(source)
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


def plain_rgb(image: Image.Image) -> Image.Image:
    """The released code's plain PIL convert: alpha is dropped, not composited."""
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageError(
            f"image {source_name(image)} of PIL mode {image.mode!r} cannot be converted to RGB ({e}); "
            "expected a mode PIL can convert (RGB, RGBA, L, LA, P, 1, I, I;16, F, CMYK, ...)"
        ) from e


def load_rgb(source: ImageSource, *, exif_transpose: bool = False) -> Image.Image:
    """Decode and plain-`convert("RGB")`: Mini-o3's `Image.open(path).convert("RGB")` (spec §2).

    The conversion comes before any pre-resize (`resize_original`, `resize_crop`), as in the
    released `multimodal_dataset.py::process_image`: alpha is dropped (not composited), a palette
    image is expanded to its colours, and no EXIF rotation is applied unless `exif_transpose`.

    Raises:
        ImageError: as `load_image`, or a mode PIL cannot convert to RGB.
    """
    return plain_rgb(load_image(source, exif_transpose=exif_transpose))


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
    if aspect > MAX_ASPECT:
        raise ImageError(
            f"image size {height}x{width} (HxW) has aspect ratio {aspect:.2f}; expected at most {MAX_ASPECT}"
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
            f"image {source_name(image)} of PIL mode {image.mode!r} cannot be converted to RGB ({e}); "
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
