"""mini_o3_jax.processing.image against transformers' PIL-backend Qwen2-VL image processor.

All images are generated here (gradients + noise, so a different resampler or rounding would
show); nothing is committed. The HF oracle is built once per module (importing transformers is
the slow part).
"""

from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from mini_o3_jax.errors import ConfigError, ImageError
from mini_o3_jax.processing.image import (
    MINI_O3_MAX_PIXELS,
    MINI_O3_MIN_PIXELS,
    ImageProcessor,
    load_image,
    load_rgb,
    num_image_tokens,
    smart_resize,
    to_rgb_array,
)
from mini_o3_jax.processing.resize import resize_crop, resize_original
from tests.hf_reference import hf_image_processor

# Exact: a float32 (instead of float64) rescale would differ by 4.8e-7, which 1e-6 would miss.
ATOL = 0.0


# --------------------------------------------------------------------------------------------------
# Image factories
# --------------------------------------------------------------------------------------------------


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: bicubic vs. other filters and off-by-one rounding both show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * xx / max(w - 1, 1)
    g = 255 * (0.5 + 0.5 * np.sin(yy / 7.0 + xx / 13.0))
    b = rng.integers(0, 256, (h, w))
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _img(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(_rgb(h, w, seed))


def _alpha(h: int, w: int, seed: int = 1) -> np.ndarray:
    """Alpha with fully transparent, fully opaque and partial regions."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w))
    a[: h // 4] = 0
    a[-(h // 4) :] = 255
    return a.astype(np.uint8)


def _rgba(h: int, w: int) -> Image.Image:
    return Image.fromarray(np.dstack([_rgb(h, w, 2), _alpha(h, w)]), "RGBA")


def _la(h: int, w: int) -> Image.Image:
    rgba = Image.fromarray(np.dstack([_rgb(h, w, 3), _alpha(h, w, 4)]), "RGBA")
    return rgba.convert("LA")


def _palette(h: int, w: int, transparent: bool) -> Image.Image:
    """A real palette PNG round trip (with a tRNS chunk when `transparent`)."""
    p = _img(h, w, 5).quantize(colors=64)
    buf = io.BytesIO()
    if transparent:
        p.save(buf, "PNG", transparency=3)
    else:
        p.save(buf, "PNG")
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    assert out.mode == "P"
    assert ("transparency" in out.info) == transparent
    return out


def _rgb_colorkey(h: int, w: int) -> Image.Image:
    """RGB with a PNG colour-key transparency (info['transparency'] is an RGB tuple)."""
    a = _rgb(h, w, 6) // 32 * 32  # few distinct colours so the key actually matches pixels
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", transparency=tuple(int(v) for v in a[0, 0]))
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    assert out.mode == "RGB" and isinstance(out.info.get("transparency"), tuple)
    return out


def _i16(h: int, w: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    a = ((xx * 977 + yy * 131) % 600).astype(np.uint16)  # values above 255 too: PIL clips them
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    return img


# (id, image factory, min_pixels, max_pixels)
CASES = [
    ("rgb_300x400", lambda: _img(300, 400), 3136, 12845056),
    ("rgb_448x448_exact", lambda: _img(448, 448), 3136, 12845056),
    ("rgb_1000x37", lambda: _img(1000, 37), 3136, 12845056),
    ("rgb_23x90_short_side_below_28", lambda: _img(23, 90), 3136, 12845056),
    ("rgb_57x11000_aspect_193", lambda: _img(57, 11000), 3136, 12845056),
    ("rgb_1200x1600_max_branch", lambda: _img(1200, 1600), 3136, 200_000),
    ("rgb_30x40_min_branch", lambda: _img(30, 40), 3136, 12845056),
    ("rgb_200x250_min_branch_mini_o3", lambda: _img(200, 250), MINI_O3_MIN_PIXELS, MINI_O3_MAX_PIXELS),
    ("L", lambda: _img(150, 211).convert("L"), 3136, 12845056),
    ("1", lambda: _img(97, 130).convert("1"), 3136, 12845056),
    ("RGBA_transparent", lambda: _rgba(170, 123), 3136, 12845056),
    ("LA", lambda: _la(88, 141), 3136, 12845056),
    ("P_opaque", lambda: _palette(120, 99, transparent=False), 3136, 12845056),
    ("P_transparent", lambda: _palette(120, 99, transparent=True), 3136, 12845056),
    ("PA", lambda: _rgba(64, 90).convert("PA"), 3136, 12845056),
    ("RGB_colour_key", lambda: _rgb_colorkey(77, 133), 3136, 12845056),
    ("I;16", lambda: _i16(66, 180), 3136, 12845056),
    ("CMYK", lambda: _img(140, 100).convert("CMYK"), 3136, 12845056),
]


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_processors():
    cache: dict[tuple[int, int], object] = {}

    def get(min_pixels: int, max_pixels: int):
        key = (min_pixels, max_pixels)
        if key not in cache:
            cache[key] = hf_image_processor(min_pixels=min_pixels, max_pixels=max_pixels)
        return cache[key]

    return get


# --------------------------------------------------------------------------------------------------
# Parity with HF
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,min_pixels,max_pixels", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_hf_pil_processor(hf_processors, make, min_pixels, max_pixels):
    image = make()
    ref = hf_processors(min_pixels, max_pixels)(images=[image], return_tensors="np")
    ours = ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)(image)

    assert ours.pixel_values.dtype == np.float32
    assert ours.grid_thw.dtype == np.int64
    np.testing.assert_array_equal(ours.grid_thw, np.asarray(ref["image_grid_thw"]))
    assert ours.pixel_values.shape == ref["pixel_values"].shape
    assert ours.pixel_values.shape[1] == 1176
    assert int(ours.grid_thw.prod()) == ours.pixel_values.shape[0]
    diff = np.abs(ours.pixel_values - ref["pixel_values"]).max()
    assert diff <= ATOL, f"max abs diff {diff}"


def test_batch_of_images_concatenates_like_hf(hf_processors):
    images = [_img(300, 400), _rgba(90, 61), _img(23, 90).convert("L"), _img(448, 448, seed=9)]
    ref = hf_processors(3136, 12845056)(images=images, return_tensors="np")
    ours = ImageProcessor()(images)
    np.testing.assert_array_equal(ours.grid_thw, ref["image_grid_thw"])
    assert ours.pixel_values.shape == ref["pixel_values"].shape
    assert np.abs(ours.pixel_values - ref["pixel_values"]).max() <= ATOL

    # preprocess_one gives the per-image slices.
    start = 0
    for image, grid in zip(images, ours.grid_thw):
        rows, thw = ImageProcessor().preprocess_one(image)
        assert thw == tuple(int(v) for v in grid)
        np.testing.assert_array_equal(rows, ours.pixel_values[start : start + len(rows)])
        start += len(rows)


@pytest.mark.parametrize("make", [c[1] for c in CASES if c[0][0].isupper() or c[0] == "1"])
def test_to_rgb_array_matches_hf_convert_to_rgb(make):
    from transformers.image_transforms import convert_to_rgb

    image = make()
    ours = to_rgb_array(image)
    ref = convert_to_rgb(image, return_numpy=True)
    assert ours.dtype == np.uint8 and ours.shape == (*image.size[::-1], 3)
    np.testing.assert_array_equal(ours, ref)


def test_rgba_is_composited_on_white():
    image = Image.fromarray(
        np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [200, 0, 100, 128]]], dtype=np.uint8), "RGBA"
    )
    out = to_rgb_array(image)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 1], [10, 20, 30])  # opaque -> unchanged
    assert 200 <= out[0, 2, 0] <= 255 and 100 <= out[0, 2, 1] <= 140  # half -> blended toward white


def test_known_grid_sizes():
    ip = ImageProcessor()
    assert ip(_img(300, 400)).grid_thw.tolist() == [[1, 22, 28]]
    assert num_image_tokens((1, 22, 28)) == 154
    out = ip(_img(448, 448))
    assert out.pixel_values.shape == (1024, 1176)
    assert num_image_tokens(out.grid_thw[0]) == 256
    empty = ip([])
    assert empty.pixel_values.shape == (0, 1176) and empty.grid_thw.shape == (0, 3)


def test_patch_row_layout():
    """A row is (C, T, py, px) with both frames equal; rows go 2x2 merge block by merge block."""
    image = _img(56, 84)  # resized size equals the input: grid 4 x 6
    ip = ImageProcessor()
    rows, thw = ip.preprocess_one(image)
    assert thw == (1, 4, 6)
    x = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(ip.image_mean)) / np.float32(ip.image_std)
    r = rows.reshape(-1, 3, 2, 14, 14)
    np.testing.assert_array_equal(r[:, :, 0], r[:, :, 1])
    # Row 1 is block (0, 0), in-block (row 0, col 1): pixels [0:14, 14:28].
    np.testing.assert_array_equal(r[1, :, 0], x[0:14, 14:28].transpose(2, 0, 1))
    # Row 2 is in-block (row 1, col 0): pixels [14:28, 0:14]; row 4 starts block (0, 1): [0:14, 28:42].
    np.testing.assert_array_equal(r[2, :, 0], x[14:28, 0:14].transpose(2, 0, 1))
    np.testing.assert_array_equal(r[4, :, 0], x[0:14, 28:42].transpose(2, 0, 1))


# --------------------------------------------------------------------------------------------------
# smart_resize
# --------------------------------------------------------------------------------------------------


def test_smart_resize_matches_hf_on_random_sizes():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    rnd = random.Random(1234)
    pairs = [(rnd.randint(1, 5000), rnd.randint(1, 5000)) for _ in range(3000)]
    # Exact .5 cases for half-to-even rounding: 14 -> 0, 42 -> 56, 70 -> 56, 98 -> 112, 126 -> 112.
    halves = [28 * k + 14 for k in range(0, 40)]
    pairs += [(h, w) for h in halves for w in halves[::3]]
    pairs += [(57, 11000), (11000, 57), (1, 200), (200, 1), (3, 600), (28, 28), (1, 1)]
    budgets = [(3136, 12845056), (3136, 1003520), (40_000, 2_000_000), (3136, 200_000), (100_000, 200_000)]
    checked = 0
    for h, w in pairs:
        if max(h, w) / min(h, w) > 200:
            continue
        for min_pixels, max_pixels in budgets:
            assert smart_resize(h, w, 28, min_pixels, max_pixels) == hf_smart_resize(
                h, w, 28, min_pixels, max_pixels
            ), (h, w, min_pixels, max_pixels)
            checked += 1
    assert checked > 10_000
    # Half-to-even spot checks (no branch taken for these budgets).
    assert smart_resize(42, 42 * 10, min_pixels=1, max_pixels=10**9) == (56, 420)
    assert smart_resize(70, 70 * 10, min_pixels=1, max_pixels=10**9) == (56, 700)


def test_smart_resize_rejects_extreme_aspect():
    assert smart_resize(10, 2000) == (28, 812)  # exactly 200 is allowed, as in HF
    with pytest.raises(ImageError, match="201x1"):
        smart_resize(201, 1)
    with pytest.raises(ImageError, match="aspect ratio"):
        smart_resize(10, 2011)
    with pytest.raises(ImageError):
        smart_resize(0, 10)


# --------------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_load_image_applies_exif_orientation_like_hf_when_asked(tmp_path, orientation):
    from transformers.image_utils import load_image as hf_load_image

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated_{orientation}.jpg"
    _img(60, 100).save(path, "JPEG", exif=exif, quality=90)

    ours = load_image(path, exif_transpose=True)
    ref = hf_load_image(str(path))
    with Image.open(path) as raw:
        expected_size = raw.size if orientation == 3 else raw.size[::-1]
        stored = np.asarray(raw.convert("RGB"))
    assert ours.size == ref.size == expected_size
    np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(ref))
    # Same pixels from bytes and from an already-open PIL image.
    np.testing.assert_array_equal(np.asarray(load_image(path.read_bytes(), exif_transpose=True)), np.asarray(ours))
    with Image.open(path) as opened:
        np.testing.assert_array_equal(np.asarray(load_image(opened, exif_transpose=True)), np.asarray(ours))
    # The default is the released pipeline's: the file as stored, no rotation (spec §2).
    for source in (path, path.read_bytes()):
        plain = load_image(source)
        assert plain.size == (100, 60) != ours.size or orientation == 3
        np.testing.assert_array_equal(np.asarray(plain), stored)
    assert not np.array_equal(np.asarray(load_rgb(path)), np.asarray(ours.convert("RGB")))


def test_load_image_keeps_mode_and_decodes(tmp_path):
    path = tmp_path / "rgba.png"
    _rgba(40, 50).save(path)
    image = load_image(str(path))
    assert image.mode == "RGBA" and image.size == (50, 40)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(_rgba(40, 50)))


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png.*does not exist"):
        load_image(path)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_load_image_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="notes.png.*not a recognised image"):
        load_image(path)
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(b"\x89PNG but not really")
    with pytest.raises(ImageError, match="<bytes> is empty"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_image_truncated(tmp_path, fmt):
    data = _encode(_img(64, 80), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt.lower()}.*truncated"):
        load_image(path)
    with pytest.raises(ImageError, match="<bytes>.*truncated"):
        load_image(data[: len(data) // 2])


def test_load_image_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn_zone = tmp_path / "warn_zone.png"  # 1600 px: PIL only warns (1x..2x), we refuse
    _img(40, 40).save(warn_zone)
    with pytest.raises(ImageError, match=r"warn_zone\.png.*1600 pixels.*MAX_IMAGE_PIXELS = 1000"):
        load_image(warn_zone)
    error_zone = tmp_path / "error_zone.png"  # 10000 px: PIL raises itself
    _img(100, 100).save(error_zone)
    with pytest.raises(ImageError, match=r"error_zone\.png.*MAX_IMAGE_PIXELS = 1000.*10000 pixels"):
        load_image(error_zone)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(error_zone).size == (100, 100)


# --------------------------------------------------------------------------------------------------
# ImageProcessor config
# --------------------------------------------------------------------------------------------------


def test_from_pretrained_layouts(tmp_path):
    assert ImageProcessor.from_pretrained(tmp_path) == ImageProcessor()  # no file -> published defaults

    published = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(published))
    assert ImageProcessor.from_pretrained(tmp_path) == ImageProcessor()

    v5 = tmp_path / "v5"
    v5.mkdir()
    (v5 / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 40_000, "longest_edge": 2_000_000}, "resample": 3})
    )
    ip = ImageProcessor.from_pretrained(v5)
    assert (ip.min_pixels, ip.max_pixels) == (40_000, 2_000_000)

    both = tmp_path / "both.json"  # top-level keys win over size, as in HF's __init__
    both.write_text(json.dumps({"size": {"shortest_edge": 1, "longest_edge": 2}, "max_pixels": 500_000}))
    ip = ImageProcessor.from_pretrained(both)
    assert (ip.min_pixels, ip.max_pixels) == (1, 500_000)


def test_from_pretrained_rejects_unsupported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resample": 2}))
    with pytest.raises(ConfigError, match="resample"):
        ImageProcessor.from_pretrained(bad)
    bad.write_text(json.dumps({"do_normalize": False}))
    with pytest.raises(ConfigError, match="do_normalize"):
        ImageProcessor.from_pretrained(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        ImageProcessor.from_pretrained(bad)
    with pytest.raises(ConfigError, match="min_pixels"):
        ImageProcessor(min_pixels=10, max_pixels=5)


def test_custom_budget_matches_hf_from_config(hf_processors, tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 40_000, "max_pixels": 250_000})
    )
    image = _img(700, 900)
    ours = ImageProcessor.from_pretrained(tmp_path)(image)
    ref = hf_processors(40_000, 250_000)(images=[image], return_tensors="np")
    np.testing.assert_array_equal(ours.grid_thw, ref["image_grid_thw"])
    assert np.abs(ours.pixel_values - ref["pixel_values"]).max() <= ATOL


# --------------------------------------------------------------------------------------------------
# Mini-o3 pre-resize rules
# --------------------------------------------------------------------------------------------------


def test_resize_original_downscales_big_image():
    image = Image.new("RGB", (4000, 3000), (10, 200, 30))
    out = resize_original(image)
    # f = sqrt(2e6 / 12e6) = 0.40825; 4000 f = 1632.99 -> 1632, 3000 f = 1224.74 -> 1224.
    assert out.size == (1632, 1224)
    assert 1632 * 1224 == 1_997_568 <= MINI_O3_MAX_PIXELS


def test_resize_original_uses_lanczos_and_plain_rgb_convert():
    image = _rgba(300, 400)  # 120k px, inside the budget: only the mode changes
    out = resize_original(image)
    assert out.size == (400, 300) and out.mode == "RGB"
    # Alpha is dropped, not composited (plain PIL convert, as in the released code).
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image)[..., :3])

    big = _img(1500, 1500)
    out = resize_original(big, max_pixels=1_000_000)
    expected = big.resize((1000, 1000), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_resize_original_upscales_small_image():
    image = _img(100, 100)
    out = resize_original(image)
    assert out.size == (200, 200)  # sqrt(40000 / 10000) = 2
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(image.resize((200, 200), Image.Resampling.LANCZOS))
    )


def test_resize_original_rejects_thin_image():
    with pytest.raises(ImageError, match="20x2000"):
        resize_original(_img(2000, 20))  # 40k px: no rescale, short side 20 < 28


def test_resize_crop_small_crop_via_min_pixels():
    crop = _img(500, 10)  # W x H = 10 x 500, 5000 px
    out = resize_crop(crop)
    # f = sqrt(8) = 2.8284: 10 f = 28.28 -> 28, 500 f = 1414.2 -> 1414; short side 28 is enough.
    assert out.size == (28, 1414)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(crop.resize((28, 1414), Image.Resampling.NEAREST))
    )


def test_resize_crop_short_side_becomes_29():
    crop = _img(500, 10)
    out = resize_crop(crop, min_pixels=1)  # pixel budget off: the 28-px rule fires
    # int(10 * 28 / 10) + 1 = 29, int(500 * 28 / 10) + 1 = 1401.
    assert out.size == (29, 1401)
    out = resize_crop(_img(40, 5), min_pixels=1)
    assert out.size == (int(5 * 28 / 5) + 1, int(40 * 28 / 5) + 1) == (29, 225)


def test_resize_crop_extreme_aspect():
    crop = _img(900, 3)  # W x H = 3 x 900, 2700 px
    out = resize_crop(crop)
    # Budget: f = sqrt(40000 / 2700) = 3.849 -> 11 x 3464 (NEAREST).
    # Short side 11 < 28: 29 x int(3464 * 28 / 11) + 1 = 29 x 8818.
    # Aspect 8818 / 29 = 304 >= 200: short side int(8818 / 190) + 1 = 47.
    assert out.size == (47, 8818)
    h, w = smart_resize(out.size[1], out.size[0], min_pixels=3136, max_pixels=12845056)
    assert (h, w) == (8820, 56)  # now acceptable to HF's processor


def test_resize_crop_downscales_with_nearest_and_converts():
    crop = _img(2000, 3000).convert("L")
    out = resize_crop(crop)
    f = math.sqrt(MINI_O3_MAX_PIXELS / 6_000_000)
    assert out.size == (int(3000 * f), int(2000 * f)) == (1732, 1154)
    assert out.mode == "RGB"
    expected = crop.resize((1732, 1154), Image.Resampling.NEAREST).convert("RGB")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    assert resize_crop(_img(300, 400)).size == (400, 300)  # inside every bound: unchanged


def test_mini_o3_pipeline_matches_hf(hf_processors):
    """resize_original then the processor gives the same rows as HF on the pre-resized image."""
    image = resize_original(_img(2100, 1300))
    ours = ImageProcessor()(image)
    ref = hf_processors(3136, 12845056)(images=[image], return_tensors="np")
    np.testing.assert_array_equal(ours.grid_thw, ref["image_grid_thw"])
    assert np.abs(ours.pixel_values - ref["pixel_values"]).max() <= ATOL
    assert num_image_tokens(ours.grid_thw[0]) <= 2_600


# --------------------------------------------------------------------------------------------------
# Loading order on the Mini-o3 path: decode -> convert("RGB") -> pre-resize -> processor (spec §2)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_tok():
    from mini_o3_jax.processing.chat import Tokenizer
    from tests.hf_reference import qwen_tokenizer_dir

    return Tokenizer.from_pretrained(qwen_tokenizer_dir())


def _env(path, tok, **cfg):
    from mini_o3_jax.agent.environment import EnvConfig, VisualSearchEnv

    return VisualSearchEnv(str(path), "<image>\nWhat is it?", tok, ImageProcessor(),
                           EnvConfig(min_pixels=3136, max_pixels=60_000, **cfg))


@pytest.mark.parametrize("kind", ["palette", "rgba"])
def test_environment_converts_to_rgb_before_the_lanczos_pre_resize(tmp_path, qwen_tok, kind):
    path = tmp_path / f"{kind}.png"
    (_img(300, 400, 5).quantize(colors=64) if kind == "palette" else _rgba(300, 400)).save(path)
    env = _env(path, qwen_tok)
    # the released `Image.open(p).convert("RGB")`, then the 60k-px budget: sqrt(0.5) -> 282 x 212, LANCZOS
    with Image.open(path) as im:
        assert im.mode == ("P" if kind == "palette" else "RGBA")
        rgb = im.convert("RGB")
        old_order = np.asarray(im.resize((282, 212), Image.Resampling.LANCZOS).convert("RGB"), np.int16)
    expected = np.asarray(rgb.resize((282, 212), Image.Resampling.LANCZOS))
    assert env.images[0].mode == "RGB" and env.images[0].size == (282, 212)
    np.testing.assert_array_equal(np.asarray(env.images[0]), expected)
    np.testing.assert_array_equal(np.asarray(env.observations[0]), np.asarray(rgb))  # crops come from RGB
    # resizing first (PIL: NEAREST for a palette, premultiplied alpha for RGBA) gives other pixels
    assert np.abs(old_order - expected).mean() > 1.0
    # the model's input is the processor on exactly that image
    np.testing.assert_array_equal(env.prompt_pixels.pixel_values, ImageProcessor()(Image.fromarray(expected)).pixel_values)


def test_environment_sees_an_exif_rotated_photo_as_stored_unless_asked(tmp_path, qwen_tok):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    _img(300, 400).save(path, "JPEG", exif=exif, quality=95)
    with Image.open(path) as im:
        stored = im.convert("RGB")
    env = _env(path, qwen_tok)
    assert env.observations[0].size == (400, 300)
    np.testing.assert_array_equal(np.asarray(env.observations[0]), np.asarray(stored))
    upright = _env(path, qwen_tok, exif_transpose=True)
    assert upright.observations[0].size == (300, 400)
    np.testing.assert_array_equal(np.asarray(upright.observations[0]),
                                  np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))
    assert upright.images[0].size == (212, 282) and env.images[0].size == (282, 212)
    from mini_o3_jax.agent.environment import EnvConfig

    with pytest.raises(ConfigError, match="exif_transpose"):
        EnvConfig(exif_transpose="yes")


def test_exif_option_is_off_in_the_rl_and_eval_configs_and_reaches_the_environment():
    import dataclasses
    import os

    from mini_o3_jax.agent.environment import EnvConfig
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.eval.run import EvalConfig

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rl = load_config(os.path.join(repo, "configs", "rl_grpo.py"))
    assert rl.env.exif_transpose is False and EnvConfig(**dict(rl.env)).exif_transpose is False
    rl.env.exif_transpose = True
    assert EnvConfig(**dict(rl.env)).exif_transpose is True
    assert EvalConfig().env.exif_transpose is False and "exif_transpose" not in EvalConfig().fingerprint()
    on = EvalConfig(env=dataclasses.replace(EvalConfig().env, exif_transpose=True))
    assert on.rollout.env.exif_transpose is True and on.fingerprint()["exif_transpose"] is True


def test_sft_images_follow_llamafactory_order():
    """LLaMA-Factory's `_preprocess_image` (written out): resize with PIL's default filter, then convert."""
    from mini_o3_jax.processing.resize import resize_llamafactory

    def reference(image, max_pixels, min_pixels):
        if image.width * image.height > max_pixels:
            f = math.sqrt(max_pixels / (image.width * image.height))
            image = image.resize((int(image.width * f), int(image.height * f)))
        if image.width * image.height < min_pixels:
            f = math.sqrt(min_pixels / (image.width * image.height))
            image = image.resize((int(image.width * f), int(image.height * f)))
        return image if image.mode == "RGB" else image.convert("RGB")

    for image in (_img(300, 400, 5).quantize(colors=64), _rgba(300, 400), _img(30, 40)):
        ours = resize_llamafactory(image, min_pixels=3136 if image.width > 100 else 40_000, max_pixels=60_000)
        ref = reference(image, 60_000, 3136 if image.width > 100 else 40_000)
        assert ours.mode == "RGB" and ours.size == ref.size
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
