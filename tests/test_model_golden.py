"""Golden tests: our JAX Qwen2.5-VL against transformers' on tiny random checkpoints (CPU, fp32).

Every tensor of the HF reference is randomised (biases and norms included) so that a wrong
transpose, a swapped bias or a mis-mapped norm shows up in the logits.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from mini_o3_jax.model.qwen2_5_vl import forward_logits
from mini_o3_jax.model.weights import load_hf, load_orbax, save_hf, save_orbax
from mini_o3_jax.processing.chat import Tokenizer, encode_chat, render_chat
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.processing.inputs import build_inputs
from mini_o3_jax.processing.positions import rope_index, vision_layout
from tests.helpers import make_inputs, rand_image
from tests.hf_reference import hf_logits, hf_processor, qwen_tokenizer_dir, tiny_hf_model

FP32_TOL = 1e-4
# bf16 weights and activations on both sides; measured max |ours - HF| 3.5e-2..4.2e-2 at |logit| <= 3.8
# (HF bf16 vs its own fp32: 5.5e-2). HF eager rounds q@k^T to bf16 before softmax; we keep fp32 scores.
BF16_TOL = 6e-2


@pytest.fixture(scope="module")
def processor():
    return hf_processor()


def our_logits(model, ids, pixel_values=None, grid=None, **kw):
    batch = build_inputs([ids], [pixel_values], [grid], model.config, **kw)
    return np.asarray(forward_logits(model, batch.text, batch.vision)[0, : len(ids)], dtype=np.float64)


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """7B-style: untied lm_head, vocab 152064."""
    hf = tiny_hf_model(tied=False, seed=0)
    d = str(tmp_path_factory.mktemp("untied"))
    hf.save_pretrained(d)
    return hf, d, load_hf(d, dtype="float32")


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """3B-style: lm_head tied to embed_tokens, vocab 151936."""
    hf = tiny_hf_model(tied=True, seed=1)
    d = str(tmp_path_factory.mktemp("tied"))
    hf.save_pretrained(d)
    return hf, d, load_hf(d, dtype="float32")


ONE_IMAGE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
THREE_IMAGES = [
    {"role": "system", "content": "You are a helpful assistant. Zoom in when unsure."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the red sign."}]},
    {"role": "assistant", "content": '<think>Look left.</think><grounding>{"bbox_2d": [0.1, 0.2, 0.5, 0.6], '
     '"source": "original_image"}</grounding>'},
    {"role": "user", "content": [{"type": "text", "text": "Observation 1:"}, {"type": "image"},
                                 {"type": "text", "text": "and 2:"}, {"type": "image"}]},
]


def test_text_only(untied, processor):
    hf, _, model = untied
    msgs = [{"role": "user", "content": "Count the windows of the house, then answer in one word."}]
    ids, _, _ = make_inputs(processor, msgs, [])
    ref = hf_logits(hf, ids)
    diff = np.abs(our_logits(model, ids) - ref).max()
    print(f"[parity] fp32 max|logit diff| {diff:.2e}")
    assert diff <= FP32_TOL, diff


def test_one_image_ragged_windows(untied, processor):
    hf, _, model = untied
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 0)])
    gh, gw = grid[0, 1] // 2, grid[0, 2] // 2
    assert gh % 4 and gw % 4  # 11 x 14 merged tokens: windows are ragged on both edges
    ref = hf_logits(hf, ids, pv, grid)
    diff = np.abs(our_logits(model, ids, pv, grid) - ref).max()
    print(f"[parity] fp32 max|logit diff| {diff:.2e}")
    assert diff <= FP32_TOL, diff


def test_three_images_multiturn(untied, processor):
    hf, _, model = untied
    images = [rand_image(300, 400, 1), rand_image(224, 640, 2), rand_image(476, 168, 3)]
    ids, pv, grid = make_inputs(processor, THREE_IMAGES, images)
    assert len({tuple(g) for g in grid.tolist()}) == 3
    ref = hf_logits(hf, ids, pv, grid)
    diff = np.abs(our_logits(model, ids, pv, grid) - ref).max()
    print(f"[parity] fp32 max|logit diff| {diff:.2e}")
    assert diff <= FP32_TOL, diff


def test_tied_3b_style(tied, processor):
    hf, d, model = tied
    assert hf.config.text_config.vocab_size == 151936 and not hasattr(model.text, "lm_head")
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(196, 252, 4)])
    ref = hf_logits(hf, ids, pv, grid)
    diff = np.abs(our_logits(model, ids, pv, grid) - ref).max()
    print(f"[parity] fp32 max|logit diff| {diff:.2e}")
    assert diff <= FP32_TOL, diff


def test_untied_7b_style_has_own_head(untied):
    hf, _, model = untied
    assert model.text.lm_head.shape == (64, 152064)
    head = np.asarray(model.text.lm_head[...]).T
    np.testing.assert_array_equal(head, hf.lm_head.weight.detach().numpy())
    assert not np.allclose(head, np.asarray(model.text.embed[...]))


def test_bf16_within_documented_tolerance(untied, processor):
    hf, d, _ = untied
    hf16 = type(hf).from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager").eval()
    model16 = load_hf(d, dtype="bfloat16")
    images = [rand_image(300, 400, 1), rand_image(224, 640, 2), rand_image(476, 168, 3)]
    ids, pv, grid = make_inputs(processor, THREE_IMAGES, images)
    ref32 = hf_logits(hf, ids, pv, grid)
    ref16 = hf_logits(hf16, ids, pv, grid)
    ours16 = our_logits(model16, ids, pv, grid)
    diff = np.abs(ours16 - ref16).max()
    print(f"[parity] bf16 ours-vs-HF {diff:.2e}, HF bf16-vs-fp32 {np.abs(ref16 - ref32).max():.2e}, "
          f"ours bf16-vs-HF fp32 {np.abs(ours16 - ref32).max():.2e}, max|logit| {np.abs(ref32).max():.2f}")
    assert diff <= BF16_TOL, diff
    # ours in bf16 is as close to the fp32 truth as HF's bf16 is (same precision class)
    assert np.abs(ours16 - ref32).max() <= 2 * max(np.abs(ref16 - ref32).max(), 1e-2)
    assert (ours16[-1].argmax() == ref32[-1].argmax()) or np.sort(ref32[-1])[-2] > ref32[-1].max() - 0.05


def test_batch_and_bucket_padding_do_not_change_logits(untied, processor):
    """Two sequences in one batch (with their images packed together) equal each alone."""
    _, _, model = untied
    a = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 0)])
    b = make_inputs(processor, THREE_IMAGES, [rand_image(300, 400, 1), rand_image(224, 640, 2), rand_image(476, 168, 3)])
    alone = [our_logits(model, *a), our_logits(model, *b)]
    padded = our_logits(model, *a, length=len(a[0]) + 37, num_windows=64)
    np.testing.assert_allclose(padded, alone[0], atol=1e-5)
    batch = build_inputs([a[0], b[0]], [a[1], b[1]], [a[2], b[2]], model.config)
    both = np.asarray(forward_logits(model, batch.text, batch.vision), dtype=np.float64)
    np.testing.assert_allclose(both[0, : len(a[0])], alone[0], atol=1e-5)
    np.testing.assert_allclose(both[1, : len(b[0])], alone[1], atol=1e-5)


def test_full_attention_band_equals_the_whole_layout(untied, processor):
    """Full-attention blocks read only the windows of each window's image (`VisionInputs.band` from
    `window_first`). With six images of 1-12 windows in a padded layout (banded path: 12 offsets < 64
    windows, 32 windows a call) the tower's output equals reading every window (a band as wide as the layout)."""
    import jax.numpy as jnp

    _, _, model = untied
    sizes = [(300, 400), (56, 56), (224, 640), (112, 112), (476, 168), (84, 140)]
    out = processor.image_processor([rand_image(h, w, i) for i, (h, w) in enumerate(sizes)], return_tensors="np")
    pv, grid = out["pixel_values"], out["image_grid_thw"]
    batch = build_inputs([np.full(int(np.prod(grid, axis=1).sum()) // 4, 151655)], [pv], [grid], model.config,
                         num_windows=64)
    v = batch.vision
    assert v.band.shape[0] == 12 and v.pixels.shape[0] // 64 == 64
    assert np.shape(v.window_first) == (1, 64)  # one layout row: all images packed
    firsts = np.asarray(v.window_first)[0]
    assert firsts[0] == 0 and firsts[-1] == 63 and np.all(np.diff(firsts) >= 0)  # padding windows: themselves
    banded = np.asarray(model.visual(v))
    whole = np.asarray(model.visual(v._replace(band=np.arange(64, dtype=np.int32))))
    # the same sums over 12 or 64 key windows (the masked ones add exact zeros), but the fp32 reductions are
    # blocked differently, and so rounded differently, by CPU model: max 2.1e-5 on one CPU, < 1e-5 on another;
    # a band of 6 offsets instead of 12 (windows left out) is off by 1e-2
    np.testing.assert_allclose(banded, whole, rtol=1e-4, atol=1e-4)
    assert np.abs(banded).max() > 0.1
    # and a band too narrow for the 12-window images changes it (the band is really what is read)
    narrow = np.asarray(model.visual(v._replace(band=jnp.arange(4, dtype=jnp.int32))))
    assert np.abs(narrow - whole).max() > 1e-3


def test_per_row_layout_equals_the_packed_layout(untied, processor):
    """`windows_per_row` gives each sequence a layout row of its own (band and feature gathers batched over
    rows, for rows split over devices); the hidden states equal the packed layout's, which the tests above
    hold against HF. Three rows: two images, none, one image (a banded row and a padding-only row)."""
    _, _, model = untied
    sizes = [[(300, 400), (56, 56)], [], [(476, 168)]]
    seqs, pixels, grids = [], [], []
    for r, row in enumerate(sizes):
        if row:
            out = processor.image_processor([rand_image(h, w, 10 * r + i) for i, (h, w) in enumerate(row)],
                                            return_tensors="np")
            pv, g = out["pixel_values"], out["image_grid_thw"]
        else:
            pv, g = None, None
        ids = [151644, 872, 198]
        for t, h, w in ([] if g is None else g.tolist()):
            ids += [151652] + [151655] * (t * h * w // 4) + [151653]
        seqs.append(np.array(ids + [3838, 374, 419, 30] * (r + 1), np.int32))
        pixels.append(pv)
        grids.append(g)
    packed = build_inputs(seqs, pixels, grids, model.config)
    per_row = build_inputs(seqs, pixels, grids, model.config, windows_per_row=16, band=12)
    v = per_row.vision
    assert np.shape(v.window_first) == (3, 16) and v.pixels.shape[0] == 3 * 16 * 64
    assert np.asarray(v.window_first)[2, 0] == 0 and np.asarray(v.image_seg).max() == 2  # counted per row
    # a row's arrays do not depend on the rows before it: built alone, row 2 is its slice of the micro-batch
    # (what a host that builds only its own rows puts in the global array)
    alone = build_inputs(seqs[2:], pixels[2:], grids[2:], model.config, windows_per_row=16, band=12,
                         length=per_row.text.input_ids.shape[1])
    for name in ("input_ids", "segment_ids", "image_rows"):
        np.testing.assert_array_equal(getattr(alone.text, name), getattr(per_row.text, name)[2:])
    np.testing.assert_array_equal(alone.text.positions, np.asarray(per_row.text.positions)[:, 2:])
    for name in ("pixels", "pos_hw", "window_seg", "image_seg", "window_first"):
        n = len(getattr(alone.vision, name))
        np.testing.assert_array_equal(getattr(alone.vision, name), np.asarray(getattr(v, name))[-n:])
    assert np.array_equal(packed.text.input_ids, per_row.text.input_ids)
    assert not np.array_equal(packed.text.image_rows, per_row.text.image_rows)
    a = np.asarray(model(packed.text, packed.vision))
    b = np.asarray(model(per_row.text, per_row.vision))
    real = np.asarray(packed.text.segment_ids) > 0
    np.testing.assert_allclose(b[real], a[real], rtol=1e-5, atol=1e-5)
    # the features are really read per row: another row's pixels change nothing here
    other = v._replace(pixels=np.asarray(v.pixels).copy())
    other.pixels[2 * 16 * 64:] += 1.0
    c = np.asarray(model(per_row.text, other))
    np.testing.assert_array_equal(c[:2][real[:2]], b[:2][real[:2]])
    assert np.abs(c[2][real[2]] - b[2][real[2]]).max() > 1e-3
    with pytest.raises(ValueError, match="more ViT windows than the 4"):
        build_inputs(seqs, pixels, grids, model.config, windows_per_row=4)


def test_rope_index_and_deltas_match_hf(untied, processor):
    hf, _, _ = untied
    images = [rand_image(300, 400, 1), rand_image(224, 640, 2), rand_image(476, 168, 3)]
    ids, _, grid = make_inputs(processor, THREE_IMAGES, images)
    t = torch.as_tensor(ids)[None]
    ref_pos, ref_delta = hf.model.get_rope_index(t, (t == 151655).long(), image_grid_thw=torch.as_tensor(grid))
    pos, next_start = rope_index(ids, grid, 151655)
    np.testing.assert_array_equal(pos, ref_pos[:, 0].numpy())
    assert next_start - len(ids) == int(ref_delta[0, 0])
    # continuing a sequence from `start` gives the same positions as computing it whole
    cut = int(np.flatnonzero(ids == 151655)[-1]) - 5  # inside the text before the last image's end
    cut = int(np.flatnonzero(np.asarray(ids) == 151652)[-1])  # at the last <|vision_start|>
    head, nxt = rope_index(ids[:cut], grid[:-1], 151655)
    tail, _ = rope_index(ids[cut:], grid[-1:], 151655, start=nxt)
    np.testing.assert_array_equal(np.concatenate([head, tail], axis=1), pos)


@pytest.mark.parametrize("grids", [[[1, 22, 28]], [[1, 4, 4]], [[1, 8, 8], [1, 22, 28], [2, 10, 6]], [[1, 16, 16]], [[1, 2, 90]]])
def test_window_layout_matches_hf(grids):
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    g = torch.tensor(grids)
    window_index, cu = get_vision_window_index(g, 2, 112, 14)
    hf_rows = (window_index.numpy()[:, None] * 4 + np.arange(4)).ravel()
    lay = vision_layout(grids)
    real = lay.patch_src >= 0
    np.testing.assert_array_equal(lay.patch_src[real], hf_rows)
    np.testing.assert_array_equal(lay.pos_hw[real], get_vision_position_ids(g, 2).numpy()[hf_rows])
    per_window = real.reshape(-1, 64).sum(1)
    np.testing.assert_array_equal(per_window[per_window > 0], np.diff(cu.numpy()))
    compact = np.cumsum(real.reshape(-1, 4)[:, 0]) - 1  # merged row -> HF's permuted position
    np.testing.assert_array_equal(compact[lay.merged_rows], np.argsort(window_index.numpy()))


def test_our_preprocessing_end_to_end(untied, processor):
    """Our tokenizer + chat template + image processor feed the model exactly what HF's do."""
    hf, _, model = untied
    images = [rand_image(300, 400, 1), rand_image(224, 640, 2), rand_image(476, 168, 3)]
    ids, pv, grid = make_inputs(processor, THREE_IMAGES, images)
    proc = ImageProcessor()
    mine = proc(images)
    tok = Tokenizer.from_pretrained(qwen_tokenizer_dir())
    my_ids = encode_chat(tok, THREE_IMAGES, mine.grid_thw)
    np.testing.assert_array_equal(my_ids, ids)
    np.testing.assert_array_equal(mine.grid_thw, grid)
    assert np.abs(mine.pixel_values - pv).max() <= 1e-6
    assert render_chat(THREE_IMAGES).count("<|image_pad|>") == 3
    ref = hf_logits(hf, ids, pv, grid)
    assert np.abs(our_logits(model, my_ids, mine.pixel_values, mine.grid_thw) - ref).max() <= FP32_TOL


def test_both_key_layouts_and_sharded_index(untied, tmp_path, processor):
    """transformers 4.52+ in-memory names and a sharded checkpoint load to the same model."""
    from safetensors.torch import load_file, save_file

    hf, d, model = untied
    sd = load_file(os.path.join(d, "model.safetensors"))
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else "model." + k if k.startswith("visual.") else k): v
               for k, v in sd.items()}
    assert any(k.startswith("model.visual.") for k in renamed)
    new_dir = tmp_path / "new_layout"
    new_dir.mkdir()
    save_file(renamed, str(new_dir / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(os.path.join(d, "config.json"), new_dir / "config.json")
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="8MB")
    assert (sharded / "model.safetensors.index.json").exists()
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 0)])
    base = our_logits(model, ids, pv, grid)
    for path in (new_dir, sharded):
        np.testing.assert_array_equal(our_logits(load_hf(path, dtype="float32"), ids, pv, grid), base)


def test_export_then_transformers_reload_is_identical(untied, tmp_path, processor):
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf, d, model = untied
    out = tmp_path / "exported"
    save_hf(model, out, dtype="float32", max_shard_bytes=16 * 1024**2, side_files_from=qwen_tokenizer_dir())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    ref_sd, new_sd = hf.state_dict(), reloaded.state_dict()
    assert set(ref_sd) == set(new_sd)
    for k in ref_sd:
        assert torch.equal(ref_sd[k], new_sd[k]), k
    images = [rand_image(300, 400, 1), rand_image(224, 640, 2), rand_image(476, 168, 3)]
    ids, pv, grid = make_inputs(processor, THREE_IMAGES, images)
    np.testing.assert_array_equal(hf_logits(reloaded, ids, pv, grid), hf_logits(hf, ids, pv, grid))
    # and our own loader reads the export back to the same parameters
    np.testing.assert_array_equal(our_logits(load_hf(out, dtype="float32"), ids, pv, grid), our_logits(model, ids, pv, grid))


def test_tied_export_omits_lm_head(tied, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf, _, model = tied
    out = save_hf(model, tmp_path / "tied_export", dtype="float32")
    from mini_o3_jax.model.safetensors_io import SafetensorsDir

    assert "lm_head.weight" not in SafetensorsDir(out).keys()
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    assert torch.equal(reloaded.lm_head.weight, hf.lm_head.weight)


def test_orbax_roundtrip(untied, tmp_path, processor):
    _, _, model = untied
    path = save_orbax(model, tmp_path / "orbax", side_files_from=qwen_tokenizer_dir())
    restored = load_orbax(path)
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 0)])
    np.testing.assert_array_equal(our_logits(restored, ids, pv, grid), our_logits(model, ids, pv, grid))
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
