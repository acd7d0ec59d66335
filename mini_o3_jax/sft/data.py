"""Cold-start SFT data (LLaMA-Factory sharegpt, as Mini-o3 released it) -> `Trajectory`s.

`Mini-o3-Coldstart.json` is a list of `{"conversations": [{"from": "system"|"human"|"gpt",
"value": ...}], "images": [paths]}` with `<image>` placeholders in the human turns (the question
image first, then one per observation turn). Tokenisation follows LLaMA-Factory's `qwen2_vl`
template, message by message: the prompt pieces `<|im_start|>system\\n…<|im_end|>\\n` and
`<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n` carry no loss; each assistant piece
`…<|im_end|>\\n` is trained, end token and newline included (spec §3). Images get the SFT rule
(`resize_llamafactory`) before the Qwen processor.

A conversation longer than the cutoff (`cutoff_len`, the config's `train.max_length`) is truncated
as LLaMA-Factory's supervised processor does, not dropped: see `truncate_pairs`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mini_o3_jax.agent.protocol import extract_answer
from mini_o3_jax.agent.trajectory import Trajectory, Turn
from mini_o3_jax.data.formats import (
    ROW_ERRORS,
    SHAREGPT_ROLES,
    check_image_count,
    check_image_header,
    json_image_roots,
    json_rows,
    parse_conversations,
    resolve_image,
)
from mini_o3_jax.data.records import BadRecord, RecordError, SourceError, describe_bad
from mini_o3_jax.errors import ChatFormatError
from mini_o3_jax.processing.chat import (
    DATASET_IMAGE_PLACEHOLDER,
    DEFAULT_SYSTEM_MESSAGE,
    IM_END,
    IM_START,
    Tokenizer,
    expand_image_pads,
    num_image_tokens,
    replace_image_placeholders,
)
from mini_o3_jax.processing.image import (
    MINI_O3_MAX_PIXELS,
    MINI_O3_MIN_PIXELS,
    ImageProcessor,
    ImageSource,
    load_image,
    resize_llamafactory,
)

log = logging.getLogger(__name__)


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's `processor_utils.infer_seqlen`: how much of one (source, target) pair fits.

    A short target is kept whole and the source cut; else a short source is kept whole and the
    target cut; else both are cut in proportion to their lengths (target share floored).
    """
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def truncate_pairs(
    pairs: Sequence[tuple[int, int]], cutoff_len: int, *, mask_history: bool = False
) -> list[tuple[int, int]]:
    """Kept (source, target) prefix lengths of each prompt/response pair under `cutoff_len`.

    LLaMA-Factory's `SupervisedDatasetProcessor._encode_data_example` (qwen2_vl template, no
    efficient EOS): pairs are taken in order (last first with `mask_history`); once the running
    length reaches the cutoff no further pair is added; otherwise `infer_seqlen` splits the budget
    left between the pair's source and target, each cut to a prefix. A pair not reached keeps (0, 0).
    """
    if cutoff_len < 1:
        raise ValueError(f"cutoff_len = {cutoff_len}; expected a positive number of tokens")
    kept = [(0, 0)] * len(pairs)
    total = 0
    order = range(len(pairs) - 1, -1, -1) if mask_history else range(len(pairs))
    for i in order:
        if total >= cutoff_len:
            break
        kept[i] = infer_seqlen(pairs[i][0], pairs[i][1], cutoff_len - total)
        total += sum(kept[i])
    return kept


def _cut_before_partial_images(ids: np.ndarray, keep: int, tokenizer: Tokenizer) -> tuple[int, int]:
    """(new keep, images fully kept) for a source piece cut to `ids[:keep]`.

    An image whose `<|image_pad|>` run is cut short would leave the ViT's features without their
    tokens (LLaMA-Factory then fails with "Image features and image tokens do not match"); such an
    image is dropped and the piece ends before its `<|vision_start|>`.
    """
    starts = np.flatnonzero(ids == tokenizer.vision_start_id)
    pad = ids == tokenizer.image_pad_id
    whole = 0
    for s in starts:
        end = int(s) + 1
        while end < len(ids) and pad[end]:
            end += 1  # one past the image's last pad
        if keep >= end:
            whole += 1
        else:
            return (min(keep, int(s)), whole)
    return keep, whole


def conversation_trajectory(
    conversations: Sequence[Mapping[str, Any]],
    images: Sequence[ImageSource],
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    *,
    min_pixels: int = MINI_O3_MIN_PIXELS,
    max_pixels: int = MINI_O3_MAX_PIXELS,
    name: str = "conversation",
    mask_history: bool = False,
    cutoff_len: int | None = None,
) -> Trajectory:
    """One sharegpt conversation with its images -> a trajectory with assistant-token loss mask.

    `mask_history` (LLaMA-Factory's option of that name): train on the last assistant turn only, the
    earlier ones are context. `cutoff_len` (LLaMA-Factory's): a longer conversation is truncated as
    `truncate_pairs` says, pair by pair, each (user piece, assistant piece) cut to a prefix; an image
    whose tokens the cut would split is dropped with its partial tokens (`Trajectory.truncated` is
    then set). None: no limit."""
    try:  # the rules `data prepare` and `read_sharegpt` apply, so a row they kept never fails here
        turns = parse_conversations(list(conversations))
        check_image_count(turns, len(images))
    except RecordError as e:
        raise ChatFormatError(f"{name}: {e}") from None
    msgs = [(SHAREGPT_ROLES[t["from"]], t["value"]) for t in turns]
    system = DEFAULT_SYSTEM_MESSAGE
    if msgs[0][0] == "system":
        system = msgs.pop(0)[1]
    pil = [resize_llamafactory(i if isinstance(i, Image.Image) else load_image(i), min_pixels, max_pixels)
           for i in images]
    grids = np.asarray(processor(pil).grid_thw, np.int64).reshape(-1, 3) if pil else np.zeros((0, 3), np.int64)
    counts = list(num_image_tokens(grids, processor.merge_size)) if len(grids) else []

    pieces: list[np.ndarray] = []  # user, assistant, user, ... : the (source, target) pairs in order
    image_counts: list[int] = []  # images in each user piece
    for i, (role, value) in enumerate(msgs):
        if role == "user":
            text = (f"{IM_START}system\n{system}{IM_END}\n" if i == 0 else "")
            text += f"{IM_START}user\n{replace_image_placeholders(value)}{IM_END}\n{IM_START}assistant\n"
            n_img = value.count(DATASET_IMAGE_PLACEHOLDER)
            pieces.append(expand_image_pads(tokenizer.encode(text), counts[:n_img], tokenizer.image_pad_id))
            counts = counts[n_img:]
            image_counts.append(n_img)
        else:
            pieces.append(np.asarray(tokenizer.encode(f"{value}{IM_END}\n"), np.int32))
    keep = [len(p) for p in pieces]
    if cutoff_len is not None:
        kept_pairs = truncate_pairs([(keep[k], keep[k + 1]) for k in range(0, len(keep), 2)], cutoff_len,
                                    mask_history=mask_history)
        keep = [n for pair in kept_pairs for n in pair]
    truncated = keep != [len(p) for p in pieces]

    ids: list[np.ndarray] = []
    mask: list[np.ndarray] = []
    turns: list[Turn] = []
    kept_images: list[int] = []
    for i, ((role, value), piece, n) in enumerate(zip(msgs, pieces, keep)):
        if role == "user":
            first_image = sum(image_counts[: i // 2])
            n, whole = _cut_before_partial_images(piece, n, tokenizer) if n < len(piece) else (n, image_counts[i // 2])
            kept_images.extend(range(first_image, first_image + whole))
            ids.append(piece[:n])
            mask.append(np.zeros(n, np.int8))
        elif n:
            ids.append(piece[:n])
            trained = not mask_history or i == len(msgs) - 1
            mask.append(np.full(n, int(trained), np.int8))
            outcome = "final" if i == len(msgs) - 1 else "crop"
            text = value if n == len(piece) else tokenizer.decode(piece[:n], skip_special_tokens=True)
            turns.append(Turn(text=text, num_tokens=n, outcome=outcome))
    return Trajectory(
        token_ids=np.concatenate(ids).astype(np.int32),
        loss_mask=np.concatenate(mask).astype(np.int8),
        images=[pil[k] for k in kept_images],
        grids=grids[kept_images] if len(grids) else grids,
        prompt_length=len(ids[0]),
        turns=turns,
        answer=extract_answer([t.text for t in turns]),
        truncated=truncated,
    )


def _sharegpt_row(row: Any, roots: Sequence[Path], allow_absolute: bool) -> dict[str, Any]:
    """One file row as `conversation_trajectory`'s inputs: turns by `formats.parse_conversations`, image
    paths resolved inside `roots`; RecordError says why the row cannot be trained on."""
    if not isinstance(row, Mapping) or "conversations" not in row:
        raise RecordError(f"expected an object with 'conversations', got {type(row).__name__}")
    turns = parse_conversations(row["conversations"])
    refs = row.get("images") or []
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise RecordError(f"field 'images' must be a list of image paths, got {type(refs).__name__}")
    check_image_count(turns, len(refs))
    paths = [resolve_image(r, roots, allow_absolute) for r in refs]
    for found in paths:
        check_image_header(found)
    return {"conversations": turns, "images": [str(found) for found in paths]}


def read_sharegpt(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                  allow_absolute_images: bool = False, bad: list[BadRecord] | None = None) -> list[dict[str, Any]]:
    """Read a LLaMA-Factory sharegpt JSON/JSONL file with `data prepare`'s row reader and conversation
    parser. Image paths are found inside `image_root` (default, as `data prepare`: the file's folder, then
    its parent), absolute paths elsewhere only with `allow_absolute_images`. A row that cannot be trained
    on is skipped, not fatal: it goes to `bad` (file, row, reason), or to the log when no list is given."""
    path = os.path.expanduser(os.fspath(path))
    if not path:
        raise ChatFormatError("no SFT data file given: set data.path to a LLaMA-Factory sharegpt JSON "
                              "(e.g. Mini-o3-Coldstart.json)")
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise SourceError(f"{path}: SFT data file {what}; expected a sharegpt JSON (conversations + images)")
    file = Path(path)
    roots = [Path(os.path.expanduser(os.fspath(image_root)))] if image_root is not None else json_image_roots(file)
    out, skipped = [], []
    for i, row in json_rows(file):
        try:
            if isinstance(row, Exception):
                raise row
            out.append({**_sharegpt_row(row, roots, allow_absolute_images), "name": f"{path}[{i}]"})
        except ROW_ERRORS as e:
            reason = str(e) if isinstance(e, RecordError) else f"cannot be read: {type(e).__name__}: {e}"
            skipped.append(BadRecord(path, i, "", reason))
    if not out and skipped:
        raise RecordError(f"{path}: no usable SFT rows; {len(skipped)} unusable:\n{describe_bad(skipped)}")
    if bad is not None:
        bad.extend(skipped)
    elif skipped:
        log.warning("%s: %d unusable row(s) skipped:\n%s", path, len(skipped), describe_bad(skipped))
    return out


def sharegpt_trajectories(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    *,
    max_length: int = 32768,
    min_pixels: int = MINI_O3_MIN_PIXELS,
    max_pixels: int = MINI_O3_MAX_PIXELS,
    truncated: list[str] | None = None,
) -> Iterator[Trajectory]:
    """Trajectories of `read_sharegpt` records, each cut to `max_length` (LLaMA-Factory's cutoff_len)
    as LLaMA-Factory does (`conversation_trajectory`); the names of those cut go to `truncated`."""
    for r in records:
        name = r.get("name", "record")
        t = conversation_trajectory(r["conversations"], r["images"], tokenizer, processor,
                                    min_pixels=min_pixels, max_pixels=max_pixels, name=name, cutoff_len=max_length)
        if t.truncated and truncated is not None:
            truncated.append(f"{name} ({len(t)} of its tokens kept)")
        yield t
