"""Train a small Qwen-style byte-level BPE in memory (demos, notebooks, tests, the toy recipe), on the
protocol's strings (`protocol_corpus`) and the toy puzzles' texts (`tokenizer_texts`).

Same pipeline as Qwen2's tokenizer (NFC, Qwen's pre-tokenisation regex, byte-level BPE) with the
22 Qwen special tokens appended after the learned vocabulary. Their ids are therefore small; the
model config takes its special token ids from the tokenizer (`ModelConfig.image_token_id` etc.),
so nothing in the code assumes Qwen's real ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from mini_o3_jax.agent.prompts import ERROR_TEMPLATE, OBSERVATION_TEMPLATE, SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.processing.chat import QWEN2_PRETOKENIZE_PATTERN, Tokenizer
from mini_o3_jax.toy.expert import PATTERNS, expert_trajectory
from mini_o3_jax.toy.puzzles import puzzles_for
from mini_o3_jax.toy.scene import SceneConfig

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)


def protocol_corpus() -> list[str]:
    """Texts covering the Mini-o3 protocol, so a tiny vocabulary still encodes it compactly."""
    texts = [SYSTEM_PROMPT_TOOL_CROP, OBSERVATION_TEMPLATE, ERROR_TEMPLATE]
    for i in range(12):
        texts.append(
            f"<think>The target may be in region {i}.</think>"
            f'<grounding>{{"bbox_2d": [0.{i % 10}, 0.{(i + 3) % 10}, 0.{(i + 5) % 10}5, 0.9], '
            f'"source": "observation_{i}"}}</grounding>'
        )
    texts += ["<answer>A</answer>", "<answer>B</answer>", "What color is the small sign? Answer with one word."]
    return texts


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """A Qwen2-style tokenizer with `vocab_size` learned entries (at least the 256 byte symbols)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(list(texts), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return Tokenizer.from_tokenizer_object(tok)


def tokenizer_texts(config: SceneConfig | None = None, n: int = 24, seed: int = 0) -> list[str]:
    """Questions, expert turns and observation texts of `n` puzzles (every level and pattern): a corpus
    for training a small BPE (`train_bpe_tokenizer`) that encodes this data compactly."""
    config = config or SceneConfig.tiny()
    texts: list[str] = []
    for i, p in enumerate(puzzles_for("tokenizer", n, seed, config) if n else []):
        patterns = [q for q in PATTERNS if p.decoys or q != "trial_and_error"]
        traj = expert_trajectory(p, seed=i, pattern=patterns[i % len(patterns)])
        texts += [m["value"] for m in traj.conversations[1:]]
    return texts
