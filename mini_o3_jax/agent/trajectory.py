"""The one record every stage shares: a token stream with images, a per-token loss mask, metadata.

A rollout produces it, SFT data is read into it, evaluation scores it, and both trainers batch it
the same way, so sampler and trainer cannot disagree on tokens, images or masks.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from PIL import Image

# What a turn led to: a crop was added, the call failed (error turn), the episode ended with a final
# turn, or it was cut at the turn/image limit or the context limit.
Outcome = Literal["crop", "error", "final", "over_turn", "over_length"]


@dataclasses.dataclass
class Turn:
    text: str  # the model's turn, decoded with special tokens skipped
    num_tokens: int  # sampled tokens kept for this turn (mask 1)
    outcome: Outcome
    source: str | None = None  # the tool call's source as written ("original_image", "observation_2")
    source_index: int | None = None  # 0 = original image, k = k-th crop
    box: tuple[float, float, float, float] | None = None  # relative, as the model wrote it
    pixel_box: tuple[int, int, int, int] | None = None  # on the full-resolution source
    observation: int | None = None  # index of the crop this turn added (1-based, as observation_k)
    error: str | None = None  # the message sent back in the error turn
    message: str = ""  # the text the environment appended after this turn ("" if none)


@dataclasses.dataclass
class Trajectory:
    token_ids: np.ndarray  # int32 (L,): prompt, then alternating model turns and environment turns
    loss_mask: np.ndarray  # int8 (L,): 1 exactly on model-sampled tokens
    images: list[Image.Image]  # model-input images in order: the resized original, then resized crops
    grids: np.ndarray  # int64 (n_images, 3): the (t, h, w) patch grid of each image
    prompt_length: int
    turns: list[Turn]
    answer: str | None  # text of the first <answer>...</answer> across the model's turns
    over_turn: bool = False  # a tool call at the last allowed turn or with the image limit reached
    over_length: bool = False  # the context reached max_context - guard
    void: bool = False  # a final turn cut by the token limit or not ending in an answer

    @property
    def exceed(self) -> bool:
        """Over-turn or over-length: reward 0, kept in group statistics, removed from the loss."""
        return self.over_turn or self.over_length

    @property
    def answered(self) -> bool:
        return self.answer is not None

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])
