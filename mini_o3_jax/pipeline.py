"""One object that turns an image and a question into model outputs: checkpoint + tokenizer + processor.

    from mini_o3_jax.pipeline import Pipeline
    pipe = Pipeline.from_pretrained("checkpoints/qwen2_5_vl_7b")   # HF dir or `mini-o3 convert` output
    for token, prob in pipe.top_next_tokens("photo.jpg", "What is written on the sign?"):
        print(token, prob)

Multi-turn generation with the zoom tool builds on this in `mini_o3_jax.rollout`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.model.vision import VisionInputs
from mini_o3_jax.model.weights import load_model
from mini_o3_jax.processing.chat import Tokenizer, encode_chat, replace_image_placeholders
from mini_o3_jax.processing.image import ImageProcessor, ImageSource, load_image
from mini_o3_jax.processing.inputs import Batch, build_inputs
from mini_o3_jax.processing.resize import resize_original


@functools.partial(jax.jit, static_argnums=0)
def _forward_last(graphdef, state, text: TextInputs, vision: VisionInputs | None, last: jax.Array) -> jax.Array:
    """Log-softmax over the vocabulary at position `last[b]` of each sequence (LM head on B rows only)."""
    model = nnx.merge(graphdef, state)
    hidden = model(text, vision)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(model.text.logits(h), axis=-1)


@dataclasses.dataclass
class Pipeline:
    model: Qwen25VL
    tokenizer: Tokenizer
    image_processor: ImageProcessor
    mini_o3_resize: bool = True  # apply Mini-o3's 40k..2M-pixel pre-resize to the question image

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: str | None = None, mesh=None, **kwargs) -> Pipeline:
        """Model, tokenizer and image processor of a HF or Orbax checkpoint directory (`~` expanded)."""
        path = os.path.expanduser(os.fspath(path))
        model = load_model(path, dtype=dtype, mesh=mesh)
        return cls(model, Tokenizer.from_pretrained(path), ImageProcessor.from_pretrained(path), **kwargs)

    def prepare(
        self,
        images: Sequence[ImageSource],
        question: str,
        system: str | None = SYSTEM_PROMPT_TOOL_CROP,
    ) -> Batch:
        """Mini-o3's first-turn prompt: system prompt, then one user turn `<image>\\n{question}`."""
        # a path may start with `~`; bytes and PIL images pass through
        sources = [os.path.expanduser(os.fspath(i)) if isinstance(i, str | os.PathLike) else i for i in images]
        pil = [i if isinstance(i, Image.Image) else load_image(i) for i in sources]
        if self.mini_o3_resize:
            pil = [resize_original(i) for i in pil]
        processed = self.image_processor(pil)
        user = replace_image_placeholders("<image>\n" * len(pil) + question)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        ids = encode_chat(self.tokenizer, messages, processed.grid_thw)
        return build_inputs([ids], [processed.pixel_values], [processed.grid_thw], self.model.config,
                            pad_id=self.tokenizer.endoftext_id)

    def next_token_logprobs(self, batch: Batch) -> np.ndarray:
        """Log-probabilities (B, V) of the token following each sequence of `batch`."""
        graphdef, state = nnx.split(self.model)
        out = _forward_last(graphdef, state, batch.text, batch.vision, jnp.asarray(batch.lengths - 1))
        return np.asarray(out)

    def top_next_tokens(
        self, image: ImageSource, question: str, k: int = 5, system: str | None = SYSTEM_PROMPT_TOOL_CROP
    ) -> list[tuple[str, float]]:
        """The `k` most likely next tokens as (text, probability), most likely first."""
        return [(text, p) for _, text, p in self.top_next_token_ids(image, question, k, system)]

    def top_next_token_ids(
        self, image: ImageSource, question: str, k: int = 5, system: str | None = SYSTEM_PROMPT_TOOL_CROP
    ) -> list[tuple[int, str, float]]:
        """The `k` most likely next tokens as (id, text, probability): the id tells apart tokens that
        decode to the same text (e.g. partial UTF-8 bytes, all shown as U+FFFD)."""
        logprobs = self.next_token_logprobs(self.prepare([image], question, system))[0]
        top = np.argsort(-logprobs)[:k]
        return [(int(i), self.tokenizer.decode([int(i)]), float(np.exp(logprobs[i]))) for i in top]


def format_probability(p: float) -> str:
    """A probability as a percentage with three significant digits, however small: a model with a
    150k-token vocabulary puts ~0.0007 % on each token when untrained, which fixed decimals print as 0.

        format_probability(0.5) == "50.0%"; format_probability(6.58e-6) == "0.000658%"
    """
    return f"{100 * p:#.3g}".removesuffix(".") + "%"


def format_next_tokens(top: Sequence[tuple[int, str, float]], vocab_size: int | None = None) -> list[str]:
    """`top_next_token_ids` as aligned lines: rank, probability, token id, token text (quoted, so
    spaces and newlines show). With `vocab_size`, a first line gives the uniform probability to compare."""
    lines = [f"  (uniform over {vocab_size:,} tokens: {format_probability(1 / vocab_size)} each)"] if vocab_size else []
    lines.append(f"  {'rank':>4}  {'prob':>10}  {'id':>7}  token")
    lines += [f"  {r:>4}  {format_probability(p):>10}  {i:>7}  {text!r}" for r, (i, text, p) in enumerate(top, 1)]
    return lines

