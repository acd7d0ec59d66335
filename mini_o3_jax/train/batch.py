"""Trajectories -> padded device batches: the one batching path of SFT, RL and the old-log-prob pass.

A trajectory's `loss_mask[t]` says whether token t was sampled by the model; training predicts
token t from position t-1, so the batch stores next-token `targets` and per-position `weights`
shifted by one. The weights already carry the loss normalisation (global token count or global
sequence count, spec §4.3), so a loss is a plain weighted sum: summing it over micro-batches and
data-parallel shards gives the same number whatever the micro-batch size.

Sequences are sorted by length and grouped into micro-batches of a fixed number of rows, each
padded to a bucketed length (processing.positions.bucket), so a run compiles a handful of shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import jax
import numpy as np

from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.qwen2_5_vl import TextInputs
from mini_o3_jax.model.vision import VisionInputs
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.processing.inputs import PAD_ID, build_inputs
from mini_o3_jax.processing.positions import bucket, count_windows

# How per-token losses become one number (names as in verl / Tunix):
#   token-mean           sum over all trained tokens / their global count (SFT default)
#   seq-mean-token-mean  each sequence's token mean, averaged over the global number of sequences
#                        (Mini-o3's RL objective; a fully masked sequence adds 0 but still counts)
#   seq-mean-token-sum   each sequence's token sum, averaged over the global number of sequences
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


class TrainBatch(NamedTuple):
    """One micro-batch on device. Row b, position t predicts `targets[b, t]` with weight `weights[b, t]`."""

    text: TextInputs  # (B, L) inputs, (3, B, L) positions
    vision: VisionInputs | None
    targets: jax.Array  # (B, L) int32: the token at t+1 (pad where there is none)
    mask: jax.Array  # (B, L) float32: 1 where targets[b, t] is a trained (model-sampled) token
    weights: jax.Array  # (B, L) float32: mask times the global normalisation
    advantages: jax.Array  # (B,) float32 (zeros for SFT and padding rows)
    old_logprobs: jax.Array  # (B, L) float32: behaviour-policy log-probs (RL); zeros until filled
    ref_logprobs: jax.Array  # (B, L) float32: reference-policy log-probs (optional KL); zeros if unused


@dataclasses.dataclass
class Example:
    """One sequence on the host, before padding."""

    token_ids: np.ndarray  # (L,) int32
    loss_mask: np.ndarray  # (L,) float32 in {0, 1}: after over-turn masking
    weights: np.ndarray  # (L,) float32: normalised per-token weight of predicting token t
    pixel_values: np.ndarray | None  # (N, patch_dim) float32, all images in order
    grids: np.ndarray  # (n_images, 3) int64
    advantage: float = 0.0
    index: int = 0  # position in the input list (micro-batches are length-sorted)


def token_weights(
    masks: Sequence[np.ndarray],
    agg: LossAgg,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> list[np.ndarray]:
    """Per-token weights whose weighted sum of per-token losses is the aggregated loss.

    `num_sequences` / `num_tokens` are the global counts over the whole optimizer step (all
    micro-batches, all hosts); by default they are counted over `masks`. Sequences whose mask is
    all zero (over-turn masking) count in `num_sequences`, as in the released code.
    """
    if agg not in LOSS_AGGS:
        raise ConfigError(f"loss aggregation {agg!r}: expected one of {LOSS_AGGS}")
    masks = [np.asarray(m, np.float32) for m in masks]
    n_seq = len(masks) if num_sequences is None else num_sequences
    n_tok = sum(float(m.sum()) for m in masks) if num_tokens is None else num_tokens
    out = []
    for m in masks:
        if agg == "token-mean":
            w = m / max(n_tok, 1.0)
        elif agg == "seq-mean-token-mean":
            w = m / max(float(m.sum()), 1.0) / max(n_seq, 1)
        else:
            w = m / max(n_seq, 1)
        out.append(w.astype(np.float32))
    return out


def trajectory_pixels(traj: Trajectory, processor: ImageProcessor) -> np.ndarray | None:
    """Patch rows of a trajectory's model-input images: those the rollout kept (`Trajectory.patches`), else
    the images (already pre-resized by the environment) through the processor again."""
    if not traj.images:
        return None
    if traj.patches is not None:
        return np.concatenate(traj.patches, axis=0)
    processed = processor(list(traj.images))
    if not np.array_equal(np.asarray(processed.grid_thw, np.int64), np.asarray(traj.grids, np.int64)):
        raise ValueError(
            f"trajectory images give grids {np.asarray(processed.grid_thw).tolist()} but the trajectory "
            f"recorded {np.asarray(traj.grids).tolist()}; expected the images the rollout saw"
        )
    return processed.pixel_values


def examples_from_trajectories(
    trajectories: Sequence[Trajectory],
    processor: ImageProcessor,
    *,
    agg: LossAgg,
    advantages: Sequence[float] | None = None,
    mask_exceeded: bool = False,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> list[Example]:
    """Host-side examples with normalised weights.

    `mask_exceeded`: Mini-o3's over-turn masking (`actor.ignore_exceed`): every token of an
    over-turn or over-length trajectory gets loss weight 0, while it still counts as a sequence.
    """
    masks = []
    for t in trajectories:
        m = np.asarray(t.loss_mask, np.float32)
        if mask_exceeded and t.exceed:
            m = np.zeros_like(m)
        masks.append(m)
    weights = token_weights(masks, agg, num_sequences, num_tokens)
    adv = np.zeros(len(trajectories), np.float32) if advantages is None else np.asarray(advantages, np.float32)
    if adv.shape != (len(trajectories),):
        raise ValueError(f"{len(trajectories)} trajectories but advantages of shape {adv.shape}")
    return [
        Example(
            token_ids=np.asarray(t.token_ids, np.int32),
            loss_mask=m,
            weights=w,
            pixel_values=trajectory_pixels(t, processor),
            grids=np.asarray(t.grids, np.int64).reshape(-1, 3),
            advantage=float(a),
            index=i,
        )
        for i, (t, m, w, a) in enumerate(zip(trajectories, masks, weights, adv))
    ]


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """How examples are cut into micro-batches."""

    micro_batch: int = 1  # sequences per micro-batch (padded with empty rows)
    min_length: int = 64  # smallest length bucket
    max_length: int = 32768 + 8192  # longer sequences are an error, not silently truncated
    pad_id: int = PAD_ID
    # Smallest bucket of vision attention windows per micro-batch. Small-image runs (many images, one
    # window each) otherwise see a new window count, hence a new compile, every few steps.
    min_windows: int = 0
    # Fixed shape sets (shape discipline at scale, issue 19): a micro-batch takes the smallest entry that
    # holds it. Empty: `bucket` sizes (4 per octave: fine at toy scale, ~180 programs an RL step at 7B).
    lengths: tuple[int, ...] = ()  # token lengths, e.g. (8192, 16384, 32768)
    windows: tuple[int, ...] = ()  # ViT windows (64 patches each) per row: the micro-batch holds rows x this
    bands: tuple[int, ...] = ()  # windows a full-attention block reads: >= the widest image's windows


def micro_batches(
    examples: Sequence[Example], config: ModelConfig, spec: BatchSpec = BatchSpec(),
    agree: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[TrainBatch], list[list[int]]]:
    """Sort by length, group `spec.micro_batch` at a time, pad each group to a bucketed length.

    Returns the numpy micro-batches and, for each, the `Example.index` of its rows (padding rows
    are -1) so per-sequence results can be mapped back.

    Multi-host: each host passes its own examples and its own rows per micro-batch, and `agree` (the
    elementwise max over hosts, `parallel.hosts.agree_max`). Every host then pads the same number of
    micro-batches (empty ones where it has run out) to the same sizes, with images laid out per row
    (`positions.row_layouts`), so each host's arrays are exactly its rows' slice of the global ones.
    """
    if spec.micro_batch < 1:
        raise ConfigError(f"micro_batch = {spec.micro_batch}; expected >= 1")
    too_long = [(e.index, len(e.token_ids)) for e in examples if len(e.token_ids) > spec.max_length]
    if too_long:
        raise ValueError(f"sequences longer than max_length={spec.max_length}: (index, length) {too_long[:5]}")
    order = sorted(examples, key=lambda e: len(e.token_ids))
    groups = [list(order[i:i + spec.micro_batch]) for i in range(0, len(order), spec.micro_batch)]
    per_row = bool(spec.windows) or agree is not None
    sizes = np.array([_sizes(g, spec, config, per_row) for g in groups], np.int64).reshape(-1, len(_SIZES))
    if agree is not None:
        count = int(agree(np.array([len(groups)], np.int64))[0])
        groups += [[] for _ in range(count - len(groups))]
        sizes = agree(np.concatenate([sizes, np.zeros((count - len(sizes), len(_SIZES)), np.int64)]))
    batches, rows = [], []
    for group, size in zip(groups, sizes):
        rows.append([e.index for e in group] + [-1] * (spec.micro_batch - len(group)))
        batches.append(_pad_group(group, spec, config, dict(zip(_SIZES, (int(x) for x in size)))))
    return batches, rows


_SIZES = ("length", "windows_per_row", "num_windows", "band")  # what a micro-batch is padded to (0: none)


def _sizes(group: list[Example], spec: BatchSpec, config: ModelConfig, per_row: bool) -> tuple[int, ...]:
    """The sizes `group` pads to (see `_SIZES`): bucketed or the smallest fixed size that holds it."""
    longest = max(len(e.token_ids) for e in group)
    length = _fixed(spec.lengths, longest, "lengths", "tokens") if spec.lengths else bucket(longest, spec.min_length)
    v = config.vision
    grids = [np.asarray(e.grids, np.int64).reshape(-1, 3) for e in group if e.grids is not None and len(e.grids)]
    windows_per_row = num_windows = band = 0
    if grids:
        widest_row = max(count_windows(g, v.spatial_merge_size, v.window_merged) for g in grids)
        stacked = np.concatenate(grids)
        if spec.windows:  # each row's images in a row of windows of its own (positions.row_layouts)
            windows_per_row = _fixed(spec.windows, widest_row, "windows", "ViT windows a row")
        elif per_row:
            windows_per_row = bucket(max(widest_row, spec.min_windows), 4)
        elif spec.min_windows:
            windows = count_windows(stacked, v.spatial_merge_size, v.window_merged)
            num_windows = bucket(max(windows, spec.min_windows), 4)
        if spec.bands or per_row:
            widest = max(count_windows(g[None], v.spatial_merge_size, v.window_merged) for g in stacked)
            band = _fixed(spec.bands, widest, "bands", "windows in one image") if spec.bands else bucket(widest)
    return length, windows_per_row, num_windows, band


def _pad_group(group: list[Example], spec: BatchSpec, config: ModelConfig, sizes: dict[str, int]) -> TrainBatch:
    n_rows = spec.micro_batch
    length = sizes["length"]
    seqs = [e.token_ids for e in group] + [np.zeros((0,), np.int32)] * (n_rows - len(group))
    pixels = [e.pixel_values for e in group] + [None] * (n_rows - len(group))
    grids = [e.grids for e in group] + [None] * (n_rows - len(group))
    inputs = build_inputs(seqs, pixels, grids, config, length=length, pad_id=spec.pad_id,
                          num_windows=sizes["num_windows"] or None, windows_per_row=sizes["windows_per_row"] or None,
                          band=sizes["band"] or None)
    targets = np.full((n_rows, length), spec.pad_id, np.int32)
    mask = np.zeros((n_rows, length), np.float32)
    weights = np.zeros((n_rows, length), np.float32)
    adv = np.zeros((n_rows,), np.float32)
    for b, e in enumerate(group):
        n = len(e.token_ids)
        targets[b, : n - 1] = e.token_ids[1:]
        mask[b, : n - 1] = e.loss_mask[1:]
        weights[b, : n - 1] = e.weights[1:]
        adv[b] = e.advantage
    zeros = np.zeros((n_rows, length), np.float32)
    return TrainBatch(inputs.text, inputs.vision, targets, mask, weights, adv, zeros, zeros)


def _fixed(sizes: Sequence[int], need: int, name: str, what: str) -> int:
    """The smallest of `sizes` >= `need`; beyond the largest, a ConfigError naming `train.<name>`."""
    fits = [s for s in sizes if s >= need]
    if not fits:
        raise ConfigError(f"a micro-batch needs {need} {what}, more than the largest of train.{name} = "
                          f"{list(sizes)}: add a larger size (or lower the data's limits)")
    return min(fits)


def batch_tokens(batch: TrainBatch) -> int:
    """Real (non-padding) tokens of a micro-batch, for tokens/s."""
    return int(np.asarray(batch.text.segment_ids).astype(bool).sum())
