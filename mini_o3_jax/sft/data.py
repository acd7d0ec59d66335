"""Cold-start SFT conversations (LLaMA-Factory sharegpt, as Mini-o3 released it) -> `Trajectory`s.

A conversation is sharegpt turns (`{"from": "system"|"human"|"gpt", "value": ...}`) with `<image>`
placeholders in the human turns (the question image first, then one per observation turn), as a
`ConversationRecord` from either path (`data.direct.read_sharegpt` on the JSON, or the prepared set).
Tokenisation follows LLaMA-Factory's `qwen2_vl` template, message by message, with the chat template's
own pieces (`processing.chat.render_message`): the prompt pieces `<|im_start|>system\\n…<|im_end|>\\n`
and `<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n` carry no loss; each assistant piece
`…<|im_end|>\\n` is trained, end token and newline included (spec §3). Images get the SFT rule
(`resize_llamafactory`) before the Qwen processor.

A conversation longer than the cutoff (`cutoff_len`, the config's `train.max_length`) is truncated
as LLaMA-Factory's supervised processor does, not dropped: see `truncate_pairs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mini_o3_jax.agent.protocol import extract_answer
from mini_o3_jax.agent.trajectory import Trajectory, Turn
from mini_o3_jax.data.conversations import SHAREGPT_ROLES, check_image_count, parse_conversations
from mini_o3_jax.data.records import ConversationRecord, RecordError
from mini_o3_jax.errors import ChatFormatError
from mini_o3_jax.processing.chat import (
    DATASET_IMAGE_PLACEHOLDER,
    DEFAULT_SYSTEM_MESSAGE,
    GENERATION_PROMPT,
    MESSAGE_END,
    Tokenizer,
    expand_image_pads,
    num_image_tokens,
    render_message,
    replace_image_placeholders,
)
from mini_o3_jax.processing.image import (
    MINI_O3_MAX_PIXELS,
    MINI_O3_MIN_PIXELS,
    ImageProcessor,
    ImageSource,
    load_image,
)
from mini_o3_jax.processing.resize import resize_llamafactory


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
    try:  # the rules every reader applies, so a row one of them kept never fails here
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
            text = render_message("system", system) if i == 0 else ""
            text += render_message("user", replace_image_placeholders(value)) + GENERATION_PROMPT
            n_img = value.count(DATASET_IMAGE_PLACEHOLDER)
            pieces.append(expand_image_pads(tokenizer.encode(text), counts[:n_img], tokenizer.image_pad_id))
            counts = counts[n_img:]
            image_counts.append(n_img)
        else:
            pieces.append(np.asarray(tokenizer.encode(value + MESSAGE_END), np.int32))  # the prompt opened it
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


def sharegpt_trajectories(
    records: Sequence[ConversationRecord],
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    *,
    max_length: int = 32768,
    min_pixels: int = MINI_O3_MIN_PIXELS,
    max_pixels: int = MINI_O3_MAX_PIXELS,
    truncated: list[str] | None = None,
) -> Iterator[Trajectory]:
    """Trajectories of cold-start records (either path), each cut to `max_length` (LLaMA-Factory's
    cutoff_len) as LLaMA-Factory does (`conversation_trajectory`); the doc_ids of those cut go to `truncated`."""
    for r in records:
        t = conversation_trajectory(r.conversations, r.images, tokenizer, processor, min_pixels=min_pixels,
                                    max_pixels=max_pixels, name=r.doc_id, cutoff_len=max_length)
        if t.truncated and truncated is not None:
            truncated.append(f"{r.doc_id} ({len(t)} of its tokens kept)")
        yield t
