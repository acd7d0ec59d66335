"""Token sequences + preprocessed images -> fixed-shape model inputs (numpy, host side).

All images of a batch are packed into one padded-window vision layout; every sequence's
`<|image_pad|>` tokens point at their merged feature rows. Lengths are rounded up to buckets so a
new image size or prompt length rarely means a new compilation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.qwen2_5_vl import TextInputs
from mini_o3_jax.model.vision import VisionInputs
from mini_o3_jax.processing.positions import (
    bucket,
    count_windows,
    image_token_rows,
    rope_index,
    row_layouts,
    vision_layout,
    window_band,
)

PAD_ID = 151643  # <|endoftext|>, HF's pad token for Qwen2.5-VL


@dataclasses.dataclass(frozen=True)
class Batch:
    """Model inputs plus what the host needs to read the outputs back."""

    text: TextInputs
    vision: VisionInputs | None
    lengths: np.ndarray  # (B,) real tokens per sequence
    rope_deltas: np.ndarray  # (B,) HF's mrope delta: next position = length + delta


def build_inputs(
    sequences: Sequence[np.ndarray],
    pixel_values: Sequence[np.ndarray] | None = None,
    grids_thw: Sequence[np.ndarray] | None = None,
    config: ModelConfig | None = None,
    *,
    length: int | None = None,
    num_windows: int | None = None,
    band: int | None = None,
    windows_per_row: int | None = None,
    min_length: int = 16,
    pad_id: int = PAD_ID,
    starts: Sequence[int] | None = None,
) -> Batch:
    """Pack B token sequences and their images.

    `pixel_values[b]` (N_b, patch_dim) and `grids_thw[b]` (n_b, 3) are the processor outputs for
    the images of sequence b, in order (use an empty array / None for text-only sequences).
    `length`/`num_windows`/`band` (windows a full-attention block reads, >= the widest image's) force sizes;
    by default they are bucketed. `windows_per_row` lays each sequence's images out in a row of its own
    (`positions.row_layouts`, for rows split over devices) instead of packing all images. `starts[b]` continues
    sequence b at M-RoPE position `starts[b]` (a chunk appended to a KV cache; default 0); the
    returned `rope_deltas` are then `next_position - len(chunk)`.
    """
    config = config or ModelConfig()
    v = config.vision
    b = len(sequences)
    pixel_values = list(pixel_values) if pixel_values is not None else [None] * b
    grids_thw = list(grids_thw) if grids_thw is not None else [None] * b
    if not (len(pixel_values) == len(grids_thw) == b):
        raise ValueError(f"{b} sequences but {len(pixel_values)} pixel arrays and {len(grids_thw)} grid arrays")
    grids = [np.zeros((0, 3), np.int64) if g is None else np.asarray(g, np.int64).reshape(-1, 3) for g in grids_thw]
    lens = np.array([len(s) for s in sequences], dtype=np.int64)
    seq_len = length if length is not None else bucket(int(lens.max()), min_length)
    if seq_len < lens.max():
        raise ValueError(f"length={seq_len} is shorter than the longest sequence ({lens.max()})")

    all_grids = np.concatenate(grids, axis=0)
    vision = None
    merged_rows = np.zeros((0,), np.int32)
    if len(all_grids) or windows_per_row is not None:  # per-row: a layout even for rows without images
        if windows_per_row is not None:
            if num_windows is not None:
                raise ValueError("num_windows and windows_per_row are exclusive")
            layout = row_layouts(grids, windows_per_row, v.spatial_merge_size, v.window_merged)
        else:
            windows = count_windows(all_grids, v.spatial_merge_size, v.window_merged)
            layout = vision_layout(
                all_grids, v.spatial_merge_size, v.window_merged,
                num_windows=num_windows if num_windows is not None else bucket(windows, 4),
            )
        # kept in their dtype (bf16 patches from a rollout stay bf16 up to the model's cast)
        given = [np.asarray(p) for p in pixel_values if p is not None and len(p)]
        dtype = given[0].dtype if given and all(p.dtype == given[0].dtype for p in given) else np.float32
        pixels = np.concatenate([p.astype(dtype, copy=False) for p in given] or [np.zeros((0, v.patch_dim), dtype)], 0)
        expected = int(np.prod(all_grids, axis=1).sum())
        if pixels.shape != (expected, v.patch_dim):
            raise ValueError(f"pixel_values have shape {pixels.shape}, the grids need ({expected}, {v.patch_dim})")
        vision = VisionInputs(
            pixels=layout.gather_pixels(pixels),
            pos_hw=layout.pos_hw,
            window_seg=layout.window_seg,
            image_seg=layout.image_seg,
            band=window_band(layout.frame_windows) if band is None else _fixed_band(band, layout.frame_windows),
            window_first=layout.window_first,
        )
        merged_rows = layout.merged_rows

    ids = np.full((b, seq_len), pad_id, np.int32)
    positions = np.zeros((3, b, seq_len), np.int32)
    segment_ids = np.zeros((b, seq_len), np.int32)
    image_rows = np.full((b, seq_len), -1, np.int32)
    deltas = np.zeros((b,), np.int64)
    row_offset = 0
    for i, (seq, g) in enumerate(zip(sequences, grids)):
        seq = np.asarray(seq, np.int64)
        n = len(seq)
        start = 0 if starts is None else int(starts[i])
        pos, next_start = rope_index(seq, g, config.image_token_id, v.spatial_merge_size, start=start)
        n_img = int(np.sum(g[:, 0] * (g[:, 1] // v.spatial_merge_size) * (g[:, 2] // v.spatial_merge_size)))
        rows = merged_rows[row_offset:row_offset + n_img]
        row_offset += n_img
        ids[i, :n] = seq
        positions[:, i, :n] = pos
        segment_ids[i, :n] = 1
        image_rows[i, :n] = image_token_rows(seq, config.image_token_id, rows)
        deltas[i] = next_start - n
    text = TextInputs(input_ids=ids, positions=positions, segment_ids=segment_ids, image_rows=image_rows)
    return Batch(text=text, vision=vision, lengths=lens, rope_deltas=deltas)


def _fixed_band(band: int, frame_windows: int) -> np.ndarray:
    if band < frame_windows:
        raise ValueError(f"band={band} is narrower than an image of {frame_windows} windows")
    return np.arange(band, dtype=np.int32)
