"""One visual-search episode on the host: turn state, limits, the zoom tool, appended messages.

Token in, token out: the environment is handed the ids the sampler produced for a turn, decides what
the turn means (recipe spec §1.4-§1.8), and hands back the ids (and the new image, if any) to append.
History is never re-tokenised, so the trajectory is exactly what the model saw.

    env = VisualSearchEnv(image, question, tokenizer, processor, EnvConfig(max_turns=6))
    ids, images = env.prompt_ids, env.prompt_images      # prefill
    while not env.done:
        step = env.step(sampled_ids, hit_token_limit)    # after each decoded turn
        ...                                              # extend the cache with step.append_ids
    trajectory = env.trajectory()
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

import numpy as np
from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.prompts import ERROR_TEMPLATE, OBSERVATION_TEMPLATE, SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.agent.trajectory import Outcome, Trajectory, Turn, mask_after_last_end
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import (
    DATASET_IMAGE_PLACEHOLDER,
    Tokenizer,
    encode_chat,
    encode_template,
    expand_image_pads,
    num_image_tokens,
    replace_image_placeholders,
)
from mini_o3_jax.processing.image import (
    MINI_O3_MAX_PIXELS,
    MINI_O3_MIN_PIXELS,
    ImageProcessor,
    ImageSource,
    ProcessedImages,
    load_rgb,
)
from mini_o3_jax.processing.resize import resize_crop, resize_original


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Episode limits (recipe spec §1.8, §4.2). Training: 6 turns; the released eval: 12; up to 32+."""

    max_turns: int = 6
    # the original counts; a tool call with this many images is over-turn. 0: as many as turns (the eval's)
    max_images: int = 12
    max_context: int = 32768
    context_guard: int = 2000  # over-length once the context reaches max_context - context_guard
    min_pixels: int = MINI_O3_MIN_PIXELS
    max_pixels: int = MINI_O3_MAX_PIXELS
    # "released": "Observation {turn + 1}", as Mini-o3 was trained (off by one after an error turn).
    # "crops": "Observation {k}" where k is the index observation_k resolves to.
    observation_numbering: Literal["released", "crops"] = "released"
    # Sampled ids above this are dropped: ids the model's padded embedding has but the tokenizer does
    # not. None: the tokenizer's last id (151664 for Qwen2.5-VL, the released filter's constant).
    max_token_id: int | None = None
    # the system turn of every episode; a config spells "no system turn" as "" / False / None (on the command
    # line also `False` or `None`, which stay strings): all read as None
    system_prompt: str | None = SYSTEM_PROMPT_TOOL_CROP
    # Rotate the question image by its EXIF orientation on load. Off, as in the release (spec §2):
    # the model was trained and evaluated on photos as stored; on only for data that needs it.
    exif_transpose: bool = False

    def __post_init__(self) -> None:
        prompt = self.system_prompt
        if prompt is False or (isinstance(prompt, str) and prompt.strip().lower() in ("", "false", "none")):
            object.__setattr__(self, "system_prompt", None)
        elif prompt is not None and not isinstance(prompt, str):
            raise ConfigError(f"env.system_prompt = {prompt!r}: expected the prompt text, or '' / False for none")
        for name in ("max_turns", "max_images", "max_context", "min_pixels", "max_pixels"):
            value, least = getattr(self, name), 0 if name == "max_images" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"EnvConfig.{name} = {value!r}; expected an integer >= {least}")
        if not 0 <= self.context_guard < self.max_context:
            raise ConfigError(
                f"EnvConfig.context_guard = {self.context_guard!r}; expected 0 <= guard < max_context "
                f"({self.max_context})"
            )
        if not isinstance(self.exif_transpose, bool):
            raise ConfigError(f"EnvConfig.exif_transpose = {self.exif_transpose!r}; expected true or false")
        if self.observation_numbering not in ("released", "crops"):
            raise ConfigError(
                f"EnvConfig.observation_numbering = {self.observation_numbering!r}; expected 'released' or 'crops'"
            )

    @property
    def context_limit(self) -> int:
        return self.max_context - self.context_guard

    @property
    def image_limit(self) -> int:
        """`max_images`, 0 read as `max_turns`."""
        return self.max_images or self.max_turns


@dataclasses.dataclass
class StepResult:
    done: bool
    append_ids: np.ndarray  # int32: environment tokens to append (loss mask 0); empty when done
    image: ProcessedImages | None  # the new crop's patch rows and grid, when the turn added one
    turn: Turn


class VisualSearchEnv:
    def __init__(
        self,
        image: ImageSource,
        question: str,
        tokenizer: Tokenizer,
        processor: ImageProcessor,
        config: EnvConfig | None = None,
        patch_dtype: np.dtype | None = None,
    ):
        """`patch_dtype`: keep each image's patch rows in this dtype for the trajectory (None: not kept)."""
        self.config = config or EnvConfig()
        self.patch_dtype = None if patch_dtype is None else np.dtype(patch_dtype)
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_token_id = self.config.max_token_id
        if self.max_token_id is None:
            self.max_token_id = tokenizer.vocab_size - 1
        # decode -> plain convert("RGB") -> pre-resize -> processor, as the release (spec §2)
        raw = load_rgb(image, exif_transpose=self.config.exif_transpose)
        self.observations: list[Image.Image] = [raw]  # full resolution, RGB: crops are cut from these
        first = resize_original(raw, self.config.min_pixels, self.config.max_pixels)
        processed = processor([first])
        self.images: list[Image.Image] = [first]  # what the model sees
        self.grids: list[np.ndarray] = [processed.grid_thw[0]]
        self.patches: list[np.ndarray] = self._kept(processed.pixel_values)
        self.prompt_pixels = processed
        user = question if DATASET_IMAGE_PLACEHOLDER in question else DATASET_IMAGE_PLACEHOLDER + "\n" + question
        messages = [{"role": "user", "content": replace_image_placeholders(user)}]
        if self.config.system_prompt:
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        ids = encode_chat(tokenizer, messages, processed.grid_thw, merge_size=processor.merge_size)
        self._ids: list[np.ndarray] = [ids]
        self._mask: list[np.ndarray] = [np.zeros(ids.shape, np.int8)]
        self.prompt_length = int(ids.shape[0])
        self.length = self.prompt_length
        self.turns: list[Turn] = []
        self.done = False
        self.over_turn = self.over_length = self.void = False

    def _kept(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        return [] if self.patch_dtype is None else [np.asarray(pixel_values).astype(self.patch_dtype)]

    def copy(self) -> VisualSearchEnv:
        """An independent episode in the same state (n samples of one prompt share its preprocessing)."""
        clone = copy.copy(self)
        clone.observations, clone.images, clone.grids = list(self.observations), list(self.images), list(self.grids)
        clone.patches = list(self.patches)
        clone._ids, clone._mask, clone.turns = list(self._ids), list(self._mask), list(self.turns)
        return clone

    @property
    def prompt_ids(self) -> np.ndarray:
        return self._ids[0]

    def step(self, sampled_ids: np.ndarray | list[int], hit_token_limit: bool = False) -> StepResult:
        """Take the model's ids for one turn (up to and including `</grounding>` or the end token).

        `hit_token_limit`: generation stopped at the per-turn token budget rather than at a stop.
        """
        if self.done:
            raise RuntimeError("step() on a finished episode")
        ids = np.asarray(sampled_ids, dtype=np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids <= self.max_token_id)].astype(np.int32)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        self._ids.append(ids)
        self._mask.append(np.ones(ids.shape, np.int8))
        self.length += int(ids.shape[0])
        index = len(self.turns)  # 0-based index of this assistant turn
        turn = Turn(text=text, num_tokens=int(ids.shape[0]), outcome="final")
        self.turns.append(turn)

        if not protocol.has_tool_call(text):
            self.void = hit_token_limit or not protocol.is_final_answer(text)
            return self._finish(turn, "final")
        if len(self.observations) >= self.config.image_limit or index == self.config.max_turns - 1:
            self.over_turn = True
            return self._finish(turn, "over_turn")
        if self.length >= self.config.context_limit:
            self.over_length = True
            return self._finish(turn, "over_length")

        image: ProcessedImages | None = None
        try:
            call = protocol.parse_tool_call(text, len(self.observations))
            turn.source, turn.source_index, turn.box = call.source, call.index, call.box
            source = self.observations[call.index]
            turn.pixel_box = protocol.pixel_box(call.box, source.size)
        except protocol.ToolCallError as e:
            turn.outcome, turn.error = "error", str(e)
            turn.message = ERROR_TEMPLATE.format(error=e)
            # the error quotes the model: only the template's own special tokens may be special
            append = encode_template(self.tokenizer, ERROR_TEMPLATE, error=e)
        else:
            crop = source.crop(turn.pixel_box)
            resized = resize_crop(crop, self.config.min_pixels, self.config.max_pixels)
            image = self.processor([resized])
            k = len(self.observations)
            number = index + 1 if self.config.observation_numbering == "released" else k
            turn.outcome, turn.observation = "crop", k
            turn.message = OBSERVATION_TEMPLATE.format(action=index, observation=number)
            append = expand_image_pads(
                encode_template(self.tokenizer, OBSERVATION_TEMPLATE, action=index, observation=number),
                num_image_tokens(image.grid_thw, self.processor.merge_size),
                self.tokenizer.image_pad_id,
            )
        if self.length + int(append.shape[0]) >= self.config.context_limit:
            # The released engine appended, re-checked and rolled back; the end state is the same.
            self.over_length = True
            turn.message, turn.observation = "", None
            return self._finish(turn, "over_length")
        if image is not None:
            self.observations.append(crop)
            self.images.append(resized)
            self.grids.append(image.grid_thw[0])
            self.patches += self._kept(image.pixel_values)
        self._ids.append(append)
        self._mask.append(np.zeros(append.shape, np.int8))
        self.length += int(append.shape[0])
        return StepResult(done=False, append_ids=append, image=image, turn=turn)

    def _finish(self, turn: Turn, outcome: Outcome) -> StepResult:
        turn.outcome = outcome
        self.done = True
        return StepResult(done=True, append_ids=np.zeros((0,), np.int32), image=None, turn=turn)

    def trajectory(self) -> Trajectory:
        """The episode so far. Its loss mask is 1 on sampled tokens up to the response's last
        `<|im_end|>` (spec §4.3 item 5): a cut, over-turn or over-length last turn carries no loss."""
        ids = np.concatenate(self._ids).astype(np.int32)
        sampled = np.concatenate(self._mask).astype(np.int8)
        return Trajectory(
            token_ids=ids,
            loss_mask=mask_after_last_end(ids, sampled, self.prompt_length, self.tokenizer.im_end_id),
            images=list(self.images),
            grids=np.stack(self.grids).astype(np.int64),
            prompt_length=self.prompt_length,
            turns=list(self.turns),
            answer=protocol.extract_answer([t.text for t in self.turns]),
            over_turn=self.over_turn,
            over_length=self.over_length,
            void=self.void,
            sampled_mask=sampled,
            patches=list(self.patches) if self.patch_dtype is not None else None,
        )
