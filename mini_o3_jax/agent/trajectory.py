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


def mask_after_last_end(
    token_ids: np.ndarray, loss_mask: np.ndarray, prompt_length: int, end_id: int
) -> np.ndarray:
    """The loss mask with every response token after the response's last `end_id` set to 0.

    Recipe spec §4.3 item 5 and §8: the released engine (verl's `get_final_eos_mask`) lets the
    response's loss and attention masks run up to and including the last `<|im_end|>` after the
    prompt, counting the environment-inserted observation/error messages (which hold `<|im_end|>`).
    A final turn cut by the per-turn token limit, or an over-turn / over-length last turn (which
    ends at `</grounding>`), therefore carries no loss; a response without any `end_id` gets an
    all-zero mask. The prompt's own `<|im_end|>`s do not count. Returns a new int8 array.
    """
    ids = np.asarray(token_ids).reshape(-1)
    mask = np.array(loss_mask, dtype=np.int8).reshape(-1)
    if mask.shape != ids.shape:
        raise ValueError(f"loss mask of shape {mask.shape} for token ids of shape {ids.shape}; expected equal")
    if not 0 <= prompt_length <= ids.shape[0]:
        raise ValueError(f"prompt_length = {prompt_length}; expected 0 <= prompt_length <= {ids.shape[0]}")
    ends = np.flatnonzero(ids[prompt_length:] == end_id)
    mask[prompt_length + (int(ends[-1]) + 1 if ends.size else 0):] = 0
    return mask


@dataclasses.dataclass
class Trajectory:
    token_ids: np.ndarray  # int32 (L,): prompt, then alternating model turns and environment turns
    # int8 (L,): 1 on model-sampled tokens up to the response's last <|im_end|> (RL, see
    # `mask_after_last_end`), or on the assistant turns LLaMA-Factory trains (SFT)
    loss_mask: np.ndarray
    images: list[Image.Image]  # model-input images in order: the resized original, then resized crops
    grids: np.ndarray  # int64 (n_images, 3): the (t, h, w) patch grid of each image
    prompt_length: int
    turns: list[Turn]
    answer: str | None  # text of the first <answer>...</answer> across the model's turns
    over_turn: bool = False  # a tool call at the last allowed turn or with the image limit reached
    over_length: bool = False  # the context reached max_context - guard
    void: bool = False  # a final turn cut by the token limit or not ending in an answer
    truncated: bool = False  # SFT: cut to the cutoff length as LLaMA-Factory does (sft.data)
    # int8 (L,): 1 exactly on model-sampled tokens, trained or not (rollouts; None for SFT data)
    sampled_mask: np.ndarray | None = None
    # per image, the patch rows the rollout fed the model (`EngineConfig.keep_patches`, in the model's dtype):
    # training reuses them instead of running the image processor again (~230 ms per 2-Mpx image)
    patches: list[np.ndarray] | None = None

    @property
    def exceed(self) -> bool:
        """Over-turn or over-length: reward 0, kept in group statistics, removed from the loss."""
        return self.over_turn or self.over_length

    @property
    def answered(self) -> bool:
        return self.answer is not None

    @property
    def sampled_tokens(self) -> int:
        """Tokens of the model's turns (sampled, in a rollout), whether they carry loss or not."""
        return sum(t.num_tokens for t in self.turns)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])
