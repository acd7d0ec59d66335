"""Host-side index work for Qwen2.5-VL: window layout, vision rotary positions, M-RoPE positions.

Everything data-dependent lives here, in numpy, so the jitted model only ever sees arrays padded
to a few bucket sizes (no recompiles per image size, no dynamic shapes on device).

Vision layout ("padded windows"): HF permutes patches into windows of `ws x ws` merged tokens
(ragged at the bottom/right image edges) and runs block-diagonal attention over them. We place
every window in a fixed slot of `window_patches` rows (64 for the released models), padding the
ragged ones. Window attention then is a batched [num_windows, 64] attention with no wasted
cross-window work, full attention is segment-masked over the flat rows, and the patch merger still
sees each 2x2 block as 4 consecutive rows. One gather at the end (`image_rows`) maps merged rows
back to the LLM's raster order, fused with the embedding merge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mini_o3_jax.errors import ChatFormatError


def bucket(n: int, minimum: int = 1, steps_per_octave: int = 4) -> int:
    """Round `n` up to the next size of the form m * 2**k with m in [steps, 2*steps).

    With 4 steps per octave padding waste is below 25% while the number of distinct compiled
    shapes grows only logarithmically with the largest input.
    """
    n = max(int(n), int(minimum), 1)
    if n <= 2 * steps_per_octave:
        return n
    shift = n.bit_length() - 1 - (steps_per_octave.bit_length() - 1)
    step = 1 << shift
    return -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Index arrays that place packed images into the padded-window layout.

    Attributes (P = num_windows * window_patches rows, P/4 merged rows):
      patch_src:   (P,) row in the processor-order pixel_values feeding each slot; -1 for padding.
      pos_hw:      (P, 2) patch (row, col) inside its image, for the 2-D vision rotary; 0 on padding.
      window_seg:  (P,) 1 for real patches, 0 for padding (window attention runs per window).
      image_seg:   (P,) 1 + image/frame index for real patches, 0 for padding (full attention).
      merged_rows: (sum_i t*h*w/4,) for each LLM image token in order, its row in the merged output.
      num_windows: W, the number of real windows (the arrays may be padded beyond it).
      frame_windows: the most windows one image (or video frame) spans; its windows are consecutive,
                     so a full-attention block reads at most frame_windows windows from its image's first.
      window_first: (rows, P / window_patches / rows) for each window slot, the first window of its image,
                    counted from its row's first window (a padding window: itself). One row unless the layout
                    was built per sequence (`row_layouts`).
    """

    patch_src: np.ndarray
    pos_hw: np.ndarray
    window_seg: np.ndarray
    image_seg: np.ndarray
    merged_rows: np.ndarray
    num_windows: int
    frame_windows: int = 1
    window_first: np.ndarray | None = None

    @property
    def num_slots(self) -> int:
        return int(self.patch_src.shape[0])

    def gather_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """Reorder processor-order pixel rows into the padded-window layout (zeros on padding)."""
        out = np.zeros((self.num_slots, pixel_values.shape[1]), dtype=pixel_values.dtype)
        valid = self.patch_src >= 0
        out[valid] = pixel_values[self.patch_src[valid]]
        return out


def vision_layout(
    grids_thw: Sequence[Sequence[int]] | np.ndarray,
    merge_size: int = 2,
    window_merged: int = 4,
    num_windows: int | None = None,
) -> VisionLayout:
    """Build the padded-window layout for images with patch grids `(t, h, w)` (processor order).

    `num_windows` pads the layout to a bucket size (default: exactly the windows needed).
    """
    grids = np.asarray(grids_thw, dtype=np.int64).reshape(-1, 3)
    m, ws = merge_size, window_merged
    unit = m * m
    win_rows = ws * ws * unit
    src_chunks, hw_chunks, img_chunks, merged_chunks, first_chunks = [], [], [], [], []
    patch_offset = 0
    window_offset = 0
    segment = 0
    most = 1
    for t, h, w in grids.tolist():
        if h % m or w % m:
            raise ChatFormatError(f"image grid {(t, h, w)} is not a multiple of merge size {m}")
        gh, gw = h // m, w // m
        nwh, nww = -(-gh // ws), -(-gw // ws)
        # Per merged token (frame, gi, gj) in raster order: its window and slot inside the window.
        gi, gj = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        gi, gj = gi.ravel(), gj.ravel()
        win_in_frame = (gi // ws) * nww + (gj // ws)
        # Within a window, real tokens are listed in row order and packed to the front (HF drops
        # the -100 padding), so the slot is the rank of the token among its window's tokens.
        local_r, local_c = gi % ws, gj % ws
        cols_in_win = np.minimum(ws, gw - (gj // ws) * ws)
        slot = local_r * cols_in_win + local_c
        frame_windows = nwh * nww
        most = max(most, frame_windows)
        for f in range(t):
            windows = window_offset + f * frame_windows + win_in_frame
            merged_slot = windows * (ws * ws) + slot  # row in the merged (P/4) output
            merged_chunks.append(merged_slot)
            # Patch rows of merged token k are 4k..4k+3 in processor order (merge-block-major).
            merged_id = f * gh * gw + np.arange(gh * gw)
            rows = merged_slot[:, None] * unit + np.arange(unit)[None, :]
            src = patch_offset + merged_id[:, None] * unit + np.arange(unit)[None, :]
            ph = gi[:, None] * m + (np.arange(unit) // m)[None, :]
            pw = gj[:, None] * m + (np.arange(unit) % m)[None, :]
            src_chunks.append((rows.ravel(), src.ravel()))
            hw_chunks.append((rows.ravel(), np.stack([ph.ravel(), pw.ravel()], axis=-1)))
            segment += 1
            img_chunks.append((rows.ravel(), segment))
            first = window_offset + f * frame_windows
            first_chunks.append((np.arange(first, first + frame_windows), first))
        window_offset += t * frame_windows
        patch_offset += t * h * w
    total_windows = window_offset
    if num_windows is None:
        num_windows = total_windows
    if num_windows < total_windows:
        raise ValueError(f"num_windows={num_windows} is smaller than the {total_windows} windows needed")
    p = num_windows * win_rows
    patch_src = np.full((p,), -1, dtype=np.int32)
    pos_hw = np.zeros((p, 2), dtype=np.int32)
    image_seg = np.zeros((p,), dtype=np.int32)
    for rows, src in src_chunks:
        patch_src[rows] = src
    for rows, hw in hw_chunks:
        pos_hw[rows] = hw
    for rows, seg in img_chunks:
        image_seg[rows] = seg
    window_first = np.arange(num_windows, dtype=np.int32)
    for windows, first in first_chunks:
        window_first[windows] = first
    window_first = window_first[None]
    merged_rows = (np.concatenate(merged_chunks) if merged_chunks else np.zeros((0,), np.int64)).astype(np.int32)
    return VisionLayout(
        patch_src=patch_src,
        pos_hw=pos_hw,
        window_seg=(patch_src >= 0).astype(np.int32),
        image_seg=image_seg,
        merged_rows=merged_rows,
        num_windows=total_windows,
        frame_windows=most,
        window_first=window_first,
    )


def row_layouts(
    grids_per_row: Sequence[np.ndarray],
    windows_per_row: int,
    merge_size: int = 2,
    window_merged: int = 4,
) -> VisionLayout:
    """One padded-window layout whose rows are the sequences of a micro-batch: row b's images fill windows
    [b * windows_per_row, (b + 1) * windows_per_row) and `window_first` counts from the row's first window.

    Why: with rows split over data-parallel devices the ViT's full-attention band and the image-feature gather
    then index only their own row's windows (gathers batched over rows), which the partitioner keeps on the
    row's device; indices into one global packed layout made XLA gather every window's keys onto every chip.
    `patch_src` stays global (processor rows of all sequences in order: it only gathers pixels on the host);
    `image_seg` and `merged_rows` count from the row's own start, so a row's arrays do not depend on the rows
    before it: a host that builds only its own rows of a micro-batch (multi-host) builds exactly their slice."""
    layouts, patch_offset, too_wide = [], 0, []
    for b, g in enumerate(grids_per_row):
        g = np.asarray(g, np.int64).reshape(-1, 3)
        need = count_windows(g, merge_size, window_merged)
        if need > windows_per_row:
            too_wide.append((b, need))
            continue
        lay = vision_layout(g, merge_size, window_merged, num_windows=windows_per_row)
        real = lay.patch_src >= 0
        layouts.append(dataclasses.replace(
            lay,
            patch_src=np.where(real, lay.patch_src + patch_offset, -1).astype(np.int32),
        ))
        patch_offset += int(np.prod(g, axis=1).sum())
    if too_wide:
        raise ValueError(f"(row, windows) {too_wide[:5]}: more ViT windows than the {windows_per_row} a row holds")
    return VisionLayout(
        patch_src=np.concatenate([lay.patch_src for lay in layouts]),
        pos_hw=np.concatenate([lay.pos_hw for lay in layouts]),
        window_seg=np.concatenate([lay.window_seg for lay in layouts]),
        image_seg=np.concatenate([lay.image_seg for lay in layouts]),
        merged_rows=np.concatenate([lay.merged_rows for lay in layouts]),
        num_windows=sum(lay.num_windows for lay in layouts),
        frame_windows=max(lay.frame_windows for lay in layouts),
        window_first=np.concatenate([lay.window_first for lay in layouts]),
    )


def window_band(frame_windows: int) -> np.ndarray:
    """Window offsets a full-attention block reads from the first window of each window's image: 0..R-1,
    R = `frame_windows` rounded up to a `bucket` size (< 25 % over, a few shapes). See `VisionInputs.band`.

    A 2-Mpx image spans 170 windows: R = 192 (the former -(R-1)..R-1 power-of-two band read 511)."""
    return np.arange(bucket(int(frame_windows)), dtype=np.int32)


def count_windows(grids_thw: Sequence[Sequence[int]] | np.ndarray, merge_size: int = 2, window_merged: int = 4) -> int:
    grids = np.asarray(grids_thw, dtype=np.int64).reshape(-1, 3)
    gh = grids[:, 1] // merge_size
    gw = grids[:, 2] // merge_size
    return int(np.sum(grids[:, 0] * (-(-gh // window_merged)) * (-(-gw // window_merged))))


def rope_index(
    input_ids: np.ndarray,
    grids_thw: Sequence[Sequence[int]] | np.ndarray,
    image_token_id: int,
    merge_size: int = 2,
    start: int = 0,
) -> tuple[np.ndarray, int]:
    """M-RoPE positions (3, L) for one unpadded sequence, as HF's `get_rope_index` computes them.

    Text tokens advance all three rows together; an image with merged grid (t, gh, gw) gets
    t/h/w offsets from the current position, after which the position advances by max(gh, gw).
    `start` continues a sequence whose earlier part ended at next-position `start` (for appending
    an observation turn to a KV cache). Returns (positions, next_start); HF's rope delta of the
    whole sequence is `next_start - total_length`.
    """
    ids = np.asarray(input_ids).reshape(-1)
    grids = np.asarray(grids_thw, dtype=np.int64).reshape(-1, 3)
    n_tokens = grids[:, 0] * (grids[:, 1] // merge_size) * (grids[:, 2] // merge_size)
    image_pos = np.flatnonzero(ids == image_token_id)
    if image_pos.size != int(n_tokens.sum()):
        raise ChatFormatError(
            f"{image_pos.size} <|image_pad|> tokens in the sequence but the {len(grids)} image grid(s) "
            f"need {int(n_tokens.sum())}"
        )
    pos = np.empty((3, ids.size), dtype=np.int64)
    cur = int(start)
    cursor = 0
    offset = 0
    for (t, h, w), n in zip(grids.tolist(), n_tokens.tolist()):
        first = int(image_pos[offset])
        if image_pos[offset + n - 1] != first + n - 1:
            raise ChatFormatError(f"the <|image_pad|> tokens of image {offset} are not contiguous")
        if first > cursor:
            pos[:, cursor:first] = cur + np.arange(first - cursor)
            cur += first - cursor
        gh, gw = h // merge_size, w // merge_size
        ti, hi, wi = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pos[0, first:first + n] = cur + ti.ravel()
        pos[1, first:first + n] = cur + hi.ravel()
        pos[2, first:first + n] = cur + wi.ravel()
        cur += max(gh, gw)
        cursor = first + n
        offset += n
    if cursor < ids.size:
        pos[:, cursor:] = cur + np.arange(ids.size - cursor)
    next_start = int(pos.max()) + 1 if ids.size else int(start)
    return pos, next_start


def image_token_rows(input_ids: np.ndarray, image_token_id: int, merged_rows: np.ndarray) -> np.ndarray:
    """For each token, the merged vision row whose features replace it (-1 for ordinary tokens).

    Image tokens are filled in sequence order, exactly like HF's `masked_scatter`.
    """
    ids = np.asarray(input_ids)
    is_image = ids == image_token_id
    n = int(is_image.sum())
    if n != merged_rows.size:
        raise ChatFormatError(f"{n} <|image_pad|> tokens but the images provide {merged_rows.size} feature rows")
    out = np.full(ids.shape, -1, dtype=np.int32)
    out[is_image] = merged_rows
    return out
