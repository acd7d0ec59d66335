"""Cold-start SFT data (LLaMA-Factory sharegpt, as Mini-o3 released it) -> `Trajectory`s.

`Mini-o3-Coldstart.json` is a list of `{"conversations": [{"from": "system"|"human"|"gpt",
"value": ...}], "images": [paths]}` with `<image>` placeholders in the human turns (the question
image first, then one per observation turn). Tokenisation follows LLaMA-Factory's `qwen2_vl`
template, message by message: the prompt pieces `<|im_start|>system\\n…<|im_end|>\\n` and
`<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n` carry no loss; each assistant piece
`…<|im_end|>\\n` is trained, end token and newline included (spec §3). Images get the SFT rule
(`resize_llamafactory`) before the Qwen processor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mini_o3_jax.agent.protocol import extract_answer
from mini_o3_jax.agent.trajectory import Trajectory, Turn
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

ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


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
) -> Trajectory:
    """One sharegpt conversation with its images -> a trajectory with assistant-token loss mask.

    `mask_history` (LLaMA-Factory's option of that name): train on the last assistant turn only, the
    earlier ones are context."""
    msgs = [_message(m, i, name) for i, m in enumerate(conversations)]
    system = DEFAULT_SYSTEM_MESSAGE
    if msgs and msgs[0][0] == "system":
        system = msgs.pop(0)[1]
    if not msgs or msgs[0][0] != "user" or msgs[-1][0] != "assistant":
        raise ChatFormatError(f"{name}: expected human/gpt turns starting with human and ending with gpt, "
                              f"got roles {[r for r, _ in msgs]}")
    for i, (role, _) in enumerate(msgs):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ChatFormatError(f"{name}: turn {i} is {role!r}; expected human and gpt turns to alternate")
    n_placeholders = sum(v.count(DATASET_IMAGE_PLACEHOLDER) for r, v in msgs if r == "user")
    if n_placeholders != len(images):
        raise ChatFormatError(f"{name}: {n_placeholders} <image> placeholder(s) in the human turns but "
                              f"{len(images)} image(s)")
    pil = [resize_llamafactory(i if isinstance(i, Image.Image) else load_image(i), min_pixels, max_pixels)
           for i in images]
    grids = np.asarray(processor(pil).grid_thw, np.int64).reshape(-1, 3) if pil else np.zeros((0, 3), np.int64)
    counts = list(num_image_tokens(grids, processor.merge_size)) if len(grids) else []

    ids: list[np.ndarray] = []
    mask: list[np.ndarray] = []
    turns: list[Turn] = []
    prompt_length = 0
    for i, (role, value) in enumerate(msgs):
        if role == "user":
            text = (f"{IM_START}system\n{system}{IM_END}\n" if i == 0 else "")
            text += f"{IM_START}user\n{replace_image_placeholders(value)}{IM_END}\n{IM_START}assistant\n"
            n_img = value.count(DATASET_IMAGE_PLACEHOLDER)
            piece = expand_image_pads(tokenizer.encode(text), counts[:n_img], tokenizer.image_pad_id)
            counts = counts[n_img:]
            ids.append(piece)
            mask.append(np.zeros(piece.shape, np.int8))
            if i == 0:
                prompt_length = int(piece.shape[0])
        else:
            piece = np.asarray(tokenizer.encode(f"{value}{IM_END}\n"), np.int32)
            ids.append(piece)
            trained = not mask_history or i == len(msgs) - 1
            mask.append(np.full(piece.shape, int(trained), np.int8))
            outcome = "final" if i == len(msgs) - 1 else "crop"
            turns.append(Turn(text=value, num_tokens=int(piece.shape[0]), outcome=outcome))
    return Trajectory(
        token_ids=np.concatenate(ids).astype(np.int32),
        loss_mask=np.concatenate(mask).astype(np.int8),
        images=pil,
        grids=grids,
        prompt_length=prompt_length,
        turns=turns,
        answer=extract_answer([t.text for t in turns]),
    )


def _message(m: Any, index: int, name: str) -> tuple[str, str]:
    if not isinstance(m, Mapping) or "from" not in m or "value" not in m:
        raise ChatFormatError(f"{name}: message {index} must be a dict with 'from' and 'value', got {m!r:.120}")
    role = ROLES.get(m["from"])
    if role is None or not isinstance(m["value"], str):
        raise ChatFormatError(f"{name}: message {index} has from={m['from']!r}; expected one of {sorted(ROLES)} "
                              "with a string value")
    return role, m["value"]


def read_sharegpt(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Read a LLaMA-Factory sharegpt JSON/JSONL file; relative image paths are joined to
    `image_root` (default: the file's folder). `conversations` may be a list or its string form."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: SFT data file not found")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    if not isinstance(records, list):
        raise ChatFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    root = os.fspath(image_root) if image_root is not None else os.path.dirname(os.path.abspath(path))
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, Mapping) or "conversations" not in r:
            raise ChatFormatError(f"{path}: record {i} has no 'conversations'")
        conv = r["conversations"]
        if isinstance(conv, str):
            conv = json.loads(conv)
        imgs = [p if os.path.isabs(p) else os.path.join(root, p) for p in r.get("images") or []]
        out.append({"conversations": conv, "images": imgs, "name": f"{path}[{i}]"})
    return out


def sharegpt_trajectories(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    *,
    max_length: int = 32768,
    min_pixels: int = MINI_O3_MIN_PIXELS,
    max_pixels: int = MINI_O3_MAX_PIXELS,
    skipped: list[str] | None = None,
) -> Iterator[Trajectory]:
    """Trajectories of `read_sharegpt` records; those longer than `max_length` (LLaMA-Factory's
    cutoff_len) are skipped and named in `skipped` rather than cut through an image."""
    for r in records:
        t = conversation_trajectory(r["conversations"], r["images"], tokenizer, processor,
                                    min_pixels=min_pixels, max_pixels=max_pixels, name=r.get("name", "record"))
        if len(t) > max_length:
            if skipped is not None:
                skipped.append(f"{r.get('name', 'record')} ({len(t)} tokens)")
            continue
        yield t
