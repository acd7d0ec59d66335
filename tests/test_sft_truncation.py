"""Over-long SFT samples are truncated as LLaMA-Factory does, not dropped (spec §3, `cutoff_len`).

The reference below is LLaMA-Factory's supervised processor written out loop by loop
(`processor_utils.infer_seqlen`, `SupervisedDatasetProcessor._encode_data_example`, qwen2_vl
template: no efficient EOS, labels IGNORE on sources). It runs on the (source, target) pieces of the
untruncated trajectory; our rule for images is then applied on top of it: an image whose
`<|image_pad|>` run the cut splits (where LLaMA-Factory would fail with "Image features and image
tokens do not match") is dropped with its partial tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from mini_o3_jax.data.direct import read_sharegpt
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.sft.data import (
    conversation_trajectory,
    infer_seqlen,
    sharegpt_trajectories,
    truncate_pairs,
)
from tests.helpers import write_sharegpt
from tests.hf_reference import qwen_tokenizer_dir

IGNORE_INDEX = -100
PIXELS = {"min_pixels": 3136, "max_pixels": 60_000}


def lf_infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    if target_len * 2 < cutoff_len:  # truncate source
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # truncate target
        max_target_len = cutoff_len - source_len
    else:  # truncate both
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def lf_encode(encoded_pairs, cutoff_len, mask_history=False):
    """`_encode_data_example` after `encode_multiturn`; elements are (token, image index or -1) tuples."""
    input_ids, labels = [], []
    total_length = 0
    if mask_history:
        encoded_pairs = encoded_pairs[::-1]
    for turn_idx, (source_ids, target_ids) in enumerate(encoded_pairs):
        if total_length >= cutoff_len:
            break
        source_len, target_len = lf_infer_seqlen(len(source_ids), len(target_ids), cutoff_len - total_length)
        source_ids = source_ids[:source_len]
        target_ids = target_ids[:target_len]
        total_length += source_len + target_len
        source_label = [IGNORE_INDEX] * source_len
        target_label = [IGNORE_INDEX] * target_len if mask_history and turn_idx != 0 else [t for t, _ in target_ids]
        if mask_history:
            input_ids = source_ids + target_ids + input_ids
            labels = source_label + target_label + labels
        else:
            input_ids += source_ids + target_ids
            labels += source_label + target_label
    return input_ids, labels


def reference(full, tok, cutoff_len, mask_history=False):
    """(ids, mask, kept image indices) for `full`, an untruncated trajectory without mask_history."""
    ids, mask = full.token_ids.tolist(), full.loss_mask.tolist()
    image = [-1] * len(ids)
    starts = [i for i, t in enumerate(ids) if t == tok.vision_start_id]
    n_pads = [int(g.prod()) // 4 for g in full.grids]
    for k, s in enumerate(starts):
        for j in range(s, s + n_pads[k] + 2):  # <|vision_start|>, the pads, <|vision_end|>
            image[j] = k
    cuts = [0] + [i for i in range(1, len(ids)) if mask[i] != mask[i - 1]] + [len(ids)]
    runs = [list(zip(ids[a:b], image[a:b])) for a, b in zip(cuts, cuts[1:])]
    pairs = list(zip(runs[0::2], runs[1::2]))
    out, labels = lf_encode(pairs, cutoff_len, mask_history)
    kept = []
    for k in range(len(starts)):
        pads = sum(1 for t, i in out if i == k and t == tok.image_pad_id)
        if pads == n_pads[k]:
            kept.append(k)
        else:  # split by the cut: drop the image and its partial tokens
            keep = [i != k for _, i in out]
            out = [x for x, y in zip(out, keep) if y]
            labels = [x for x, y in zip(labels, keep) if y]
    return np.array([t for t, _ in out]), np.array([int(x != IGNORE_INDEX) for x in labels]), kept


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = Tokenizer.from_pretrained(qwen_tokenizer_dir())
    proc = ImageProcessor(**PIXELS)
    records = read_sharegpt(write_sharegpt(str(tmp_path_factory.mktemp("sft")), 2))
    return tok, proc, records


def trajectory(setup, record=0, **kw):
    tok, proc, records = setup
    r = records[record]
    return conversation_trajectory(r.conversations, r.images, tok, proc, **PIXELS, **kw)


def test_infer_seqlen_is_llamafactorys():
    for s in range(0, 40, 3):
        for t in range(0, 40, 3):
            for c in range(1, 90, 4):
                assert infer_seqlen(s, t, c) == lf_infer_seqlen(s, t, c), (s, t, c)
    assert infer_seqlen(254, 46, 240) == (194, 46)  # short target: the source is cut
    assert infer_seqlen(20, 300, 100) == (20, 80)  # short source: the target is cut
    assert infer_seqlen(300, 200, 100) == (60, 40)  # both long: split 3:2
    assert truncate_pairs([(254, 46), (48, 13)], 353) == [(254, 46), (40, 13)]
    assert truncate_pairs([(254, 46), (48, 13)], 353, mask_history=True) == [(246, 46), (48, 13)]  # last pair first
    assert truncate_pairs([(254, 46), (48, 13)], 300) == [(254, 46), (0, 0)]  # budget used: pair 2 not added
    with pytest.raises(ValueError, match="cutoff_len"):
        truncate_pairs([(1, 1)], 0)


def test_a_long_sample_is_kept_and_cut_exactly_as_llamafactory(setup):
    tok, _, _ = setup
    full = trajectory(setup)
    assert len(full) == 361 and len(full.images) == 2 and not full.truncated
    # pieces: source 254 (system, question, image 1), target 46, source 48 (observation, image 2), target 13
    cut = trajectory(setup, cutoff_len=353)
    # last pair: budget 53, short target kept whole (13), the observation cut to 40 tokens (after its image)
    assert cut.truncated and len(cut) == 353 and len(cut.images) == 2
    np.testing.assert_array_equal(cut.token_ids, np.concatenate([full.token_ids[:340], full.token_ids[348:]]))
    np.testing.assert_array_equal(cut.loss_mask, np.concatenate([full.loss_mask[:340], full.loss_mask[348:]]))
    assert cut.answer == "A" and cut.prompt_length == full.prompt_length == 254
    ref_ids, ref_mask, kept = reference(full, tok, 353)
    np.testing.assert_array_equal(cut.token_ids, ref_ids)
    np.testing.assert_array_equal(cut.loss_mask, ref_mask)
    assert kept == [0, 1]


def test_a_cut_through_an_image_drops_that_image(setup):
    tok, _, _ = setup
    full = trajectory(setup)
    cut = trajectory(setup, cutoff_len=240)
    # LLaMA-Factory keeps source[:194] + the whole target: 6 of image 1's 42 pads. We end the source
    # before that image's <|vision_start|> (position 188) and drop it; the budget is used, so no pair 2.
    assert cut.truncated and len(cut) == 188 + 46 and len(cut.images) == 0 and cut.grids.shape == (0, 3)
    assert tok.vision_start_id not in cut.token_ids and tok.image_pad_id not in cut.token_ids
    np.testing.assert_array_equal(cut.token_ids, np.concatenate([full.token_ids[:188], full.token_ids[254:300]]))
    assert cut.loss_mask.sum() == 46 and cut.prompt_length == 188 and cut.num_turns == 1
    # the second image: cut inside its 6 pads (source 2 spans 300..348, image tokens 323..330)
    cut = trajectory(setup, cutoff_len=300 + 26)  # budget 26 < 2 x 13: target whole, source cut to 13
    assert len(cut.images) == 1 and cut.grids.tolist() == full.grids[:1].tolist()
    ref_ids, ref_mask, kept = reference(full, tok, 326)
    assert kept == [0]
    np.testing.assert_array_equal(cut.token_ids, ref_ids)


@pytest.mark.parametrize("mask_history", [False, True])
def test_every_cutoff_matches_the_reference(setup, mask_history):
    tok, _, _ = setup
    full = trajectory(setup)
    for cutoff in list(range(1, 370, 7)) + [187, 188, 189, 190, 231, 232, 233, 322, 323, 329, 330, 331]:
        t = trajectory(setup, cutoff_len=cutoff, mask_history=mask_history)
        ref_ids, ref_mask, kept = reference(full, tok, cutoff, mask_history)
        np.testing.assert_array_equal(t.token_ids, ref_ids, err_msg=f"cutoff {cutoff}")
        np.testing.assert_array_equal(t.loss_mask, ref_mask, err_msg=f"cutoff {cutoff}")
        assert t.grids.tolist() == full.grids[kept].tolist() and len(t.images) == len(kept), cutoff
        assert len(t) <= cutoff and t.truncated is (cutoff < len(full))
        # every kept image has all its tokens
        assert (t.token_ids == tok.image_pad_id).sum() == sum(int(g.prod()) // 4 for g in t.grids)


def test_sharegpt_samples_are_truncated_not_dropped_and_named(setup):
    tok, proc, records = setup
    names: list[str] = []
    trajs = list(sharegpt_trajectories(records, tok, proc, max_length=300, truncated=names, **PIXELS))
    assert len(trajs) == 2 and all(len(t) <= 300 for t in trajs)
    long = [r.doc_id for r, t in zip(records, trajs) if t.truncated]
    assert long == [records[0].doc_id] and names == [f"{records[0].doc_id} (300 of its tokens kept)"]
    assert not trajs[1].truncated
