"""Conversations -> Qwen2.5-VL token ids, without transformers or torch at run time.

The rollout and SFT pipelines render many long multi-turn conversations, so the chat template is
plain Python (no Jinja) and `<|image_pad|>` expansion is one vectorised `np.repeat`. Everything here
is golden-tested against Hugging Face's `Qwen2_5_VLProcessor` (tests/test_chat.py): the rendered
text must be byte-identical to `apply_chat_template(..., tokenize=False)` and the ids identical to
the processor's `input_ids`.

Text is tokenized with a single `<|image_pad|>` per image and expanded afterwards; the processor
instead expands the text first. Special tokens are split out before BPE runs, so both orders give
the same ids, and ours keeps the tokenizer's work independent of image sizes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from mini_o3_jax.errors import ChatFormatError, CheckpointError

# --- special tokens (qwen2_5_vl.md §1.3); the ids are fixed by the released checkpoints ---------

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
VISION_PAD_ID = 151654
IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656

SPECIAL_TOKEN_IDS: dict[str, int] = {
    ENDOFTEXT: ENDOFTEXT_ID,
    IM_START: IM_START_ID,
    IM_END: IM_END_ID,
    VISION_START: VISION_START_ID,
    VISION_END: VISION_END_ID,
    VISION_PAD: VISION_PAD_ID,
    IMAGE_PAD: IMAGE_PAD_ID,
    VIDEO_PAD: VIDEO_PAD_ID,
}

IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
VIDEO_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END
DATASET_IMAGE_PLACEHOLDER = "<image>"
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
ROLES = ("system", "user", "assistant", "tool")

# Qwen2's pre-tokenization split (the Split step of its tokenizer.json); only needed to rebuild the
# pipeline when a checkpoint ships vocab.json + merges.txt without tokenizer.json.
QWEN2_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2.5-VL chat template as Jinja, written only into saved tokenizer_config.json files so that
# HF's AutoTokenizer renders exactly what `render_chat` renders (tests check the two agree).
QWEN2_5_VL_CHAT_TEMPLATE_JINJA = "\n".join(
    [
        r"{%- set seen = namespace(images=0, videos=0) %}",
        r"{%- for message in messages %}",
        r"  {%- if loop.first and message['role'] != 'system' %}",
        r"    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}",
        r"  {%- endif %}",
        r"  {{- '<|im_start|>' ~ message['role'] ~ '\n' }}",
        r"  {%- if message['content'] is string %}",
        r"    {{- message['content'] ~ '<|im_end|>\n' }}",
        r"  {%- else %}",
        r"    {%- for item in message['content'] %}",
        r"      {%- if item['type'] == 'image' or 'image' in item or 'image_url' in item %}",
        r"        {%- set seen.images = seen.images + 1 %}",
        r"        {%- if add_vision_id %}{{- 'Picture ' ~ seen.images ~ ': ' }}{%- endif %}",
        r"        {{- '<|vision_start|><|image_pad|><|vision_end|>' }}",
        r"      {%- elif item['type'] == 'video' or 'video' in item %}",
        r"        {%- set seen.videos = seen.videos + 1 %}",
        r"        {%- if add_vision_id %}{{- 'Video ' ~ seen.videos ~ ': ' }}{%- endif %}",
        r"        {{- '<|vision_start|><|video_pad|><|vision_end|>' }}",
        r"      {%- elif 'text' in item %}",
        r"        {{- item['text'] }}",
        r"      {%- endif %}",
        r"    {%- endfor %}",
        r"    {{- '<|im_end|>\n' }}",
        r"  {%- endif %}",
        r"{%- endfor %}",
        r"{%- if add_generation_prompt %}",
        r"  {{- '<|im_start|>assistant\n' }}",
        r"{%- endif %}",
    ]
)

_TOKENIZER_JSON = "tokenizer.json"
_VOCAB_JSON = "vocab.json"
_MERGES_TXT = "merges.txt"
_TOKENIZER_CONFIG = "tokenizer_config.json"
_EXPECTED_FILES = f"{_TOKENIZER_JSON} (or {_VOCAB_JSON} + {_MERGES_TXT} + {_TOKENIZER_CONFIG})"


class TokenizerFilesError(CheckpointError, FileNotFoundError):
    """Tokenizer files are missing or unreadable.

    Both a `MiniO3Error` (our bad-input family) and a `FileNotFoundError`, so callers can catch
    whichever they already handle.
    """


# --- tokenizer ------------------------------------------------------------------------------------


class Tokenizer:
    """A thin wrapper over a Rust `tokenizers.Tokenizer` with the Qwen conventions baked in.

    HF's `Qwen2Tokenizer` is this same Rust object plus Python bookkeeping; wrapping it directly
    keeps transformers (and torch) out of the runtime while giving the same ids and strings.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        if not isinstance(tokenizer, tokenizers.Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self._tok = tokenizer

    # construction ---------------------------------------------------------------------------------

    @classmethod
    def from_tokenizer_object(cls, tokenizer: tokenizers.Tokenizer) -> Tokenizer:
        """Wrap a tokenizer built or trained in memory (tests, small experiments)."""
        return cls(tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the tokenizer of a checkpoint directory.

        `tokenizer.json` is preferred because it is the complete, exact pipeline. Older checkpoints
        may only ship `vocab.json` + `merges.txt`; those are rebuilt as a Qwen2 byte-level BPE with the
        added tokens of `tokenizer_config.json` at their recorded ids (as HF's Qwen2Tokenizer does).
        """
        directory = os.fspath(path)
        if not os.path.isdir(directory):
            raise TokenizerFilesError(
                f"tokenizer directory {directory!r} does not exist (expected a directory with {_EXPECTED_FILES})"
            )
        tokenizer_json = os.path.join(directory, _TOKENIZER_JSON)
        if os.path.isfile(tokenizer_json):
            try:
                return cls(tokenizers.Tokenizer.from_file(tokenizer_json))
            except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
                raise TokenizerFilesError(f"cannot read {tokenizer_json!r}: {exc}") from exc
        missing = [
            name
            for name in (_VOCAB_JSON, _MERGES_TXT, _TOKENIZER_CONFIG)
            if not os.path.isfile(os.path.join(directory, name))
        ]
        if missing:
            raise TokenizerFilesError(
                f"tokenizer directory {directory!r} has no {_TOKENIZER_JSON} and lacks {', '.join(missing)} "
                f"(expected {_EXPECTED_FILES})"
            )
        return cls(_build_qwen2_bpe(directory))

    # encoding ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no BOS/EOS; special tokens in the text become single ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` with special-token spellings (`<|im_end|>`, `<|image_pad|>`...) kept as
        ordinary text, for text quoted from the model: it must not inject control tokens."""
        if not isinstance(text, str):
            raise TypeError(f"encode_plain expects a str, got {type(text).__name__}")
        return self._plain_tokenizer().encode(text, add_special_tokens=False).ids

    def _plain_tokenizer(self) -> tokenizers.Tokenizer:
        """A copy of the tokenizer that does not split out special tokens. A copy, not a toggled
        flag on the shared one, so concurrent encodes elsewhere keep their behaviour."""
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = tokenizers.Tokenizer.from_str(self._tok.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return plain

    @property
    def special_tokens(self) -> list[str]:
        """The added tokens flagged special (the ones `decode(..., skip_special_tokens=True)` drops)."""
        return [tok.content for tok in self._tok.get_added_tokens_decoder().values() if tok.special]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; with `skip_special_tokens`, tokens flagged special (not `<think>`) are dropped."""
        return self._tok.decode(np.asarray(ids, dtype=np.int64).reshape(-1).tolist(), skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token (including added tokens), or None when it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None when the id is out of range."""
        return self._tok.id_to_token(int(token_id))

    # properties -------------------------------------------------------------------------------------

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped Rust tokenizer, for batch encoding or training."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included (HF's `len(tokenizer)`)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _special_id(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ChatFormatError(f"tokenizer has no {token!r} token; Qwen2.5-VL chats need it")
        return token_id

    @property
    def endoftext_id(self) -> int:
        return self._special_id(ENDOFTEXT)

    @property
    def im_start_id(self) -> int:
        return self._special_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self._special_id(IM_END)

    @property
    def vision_start_id(self) -> int:
        return self._special_id(VISION_START)

    @property
    def vision_end_id(self) -> int:
        return self._special_id(VISION_END)

    @property
    def image_pad_id(self) -> int:
        return self._special_id(IMAGE_PAD)

    @property
    def video_pad_id(self) -> int:
        return self._special_id(VIDEO_PAD)

    # saving -----------------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint-style tokenizer directory that HF's AutoTokenizer also loads.

        Writes tokenizer.json, tokenizer_config.json (Qwen2Tokenizer, eos `<|im_end|>`, pad
        `<|endoftext|>`, the Qwen2.5-VL chat template) and, for BPE models, vocab.json + merges.txt
        like the released checkpoints.
        """
        directory = os.fspath(path)
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, _TOKENIZER_JSON))
        if isinstance(self._tok.model, BPE):
            self._tok.model.save(directory)
        added = self._tok.get_added_tokens_decoder()
        has = {tok.content for tok in added.values()}
        config: dict[str, Any] = {
            "tokenizer_class": "Qwen2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "bos_token": None,
            "eos_token": IM_END if IM_END in has else None,
            "pad_token": ENDOFTEXT if ENDOFTEXT in has else None,
            "unk_token": None,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "split_special_tokens": False,
            "model_max_length": 131072,
            "added_tokens_decoder": {
                str(token_id): {
                    "content": tok.content,
                    "lstrip": tok.lstrip,
                    "normalized": tok.normalized,
                    "rstrip": tok.rstrip,
                    "single_word": tok.single_word,
                    "special": tok.special,
                }
                for token_id, tok in sorted(added.items())
            },
            "chat_template": QWEN2_5_VL_CHAT_TEMPLATE_JINJA,
        }
        with open(os.path.join(directory, _TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")


def _build_qwen2_bpe(directory: str) -> tokenizers.Tokenizer:
    """Rebuild a Qwen2 byte-level BPE from vocab.json + merges.txt + tokenizer_config.json."""
    try:
        with open(os.path.join(directory, _VOCAB_JSON), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(directory, _TOKENIZER_CONFIG), encoding="utf-8") as f:
            config = json.load(f)
        merges: list[tuple[str, str]] = []
        with open(os.path.join(directory, _MERGES_TXT), encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line or (lineno == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise TokenizerFilesError(
                        f"{os.path.join(directory, _MERGES_TXT)!r} line {lineno}: expected 'left right', got {line!r}"
                    )
                merges.append((parts[0], parts[1]))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerFilesError(f"cannot read tokenizer files in {directory!r}: {exc}") from exc

    tok = tokenizers.Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()

    # Added tokens are appended in id order; the library numbers them consecutively after the vocab,
    # so verify every one landed on the id the config recorded rather than trust the layout.
    added = config.get("added_tokens_decoder", {})
    for key in sorted(added, key=int):
        spec = added[key]
        token = AddedToken(
            spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", False),
            special=spec.get("special", False),
        )
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        got = tok.token_to_id(spec["content"])
        if got != int(key):
            raise TokenizerFilesError(
                f"added token {spec['content']!r} in {os.path.join(directory, _TOKENIZER_CONFIG)!r} wants id "
                f"{key} but rebuilding from {_VOCAB_JSON} + {_MERGES_TXT} gives {got}; ship {_TOKENIZER_JSON}"
            )
    return tok


# --- chat rendering -------------------------------------------------------------------------------


MESSAGE_END = f"{IM_END}\n"
GENERATION_PROMPT = f"{IM_START}assistant\n"  # opens the assistant message the model writes


def message_start(role: str) -> str:
    """What opens a message in the template: `<|im_start|>role\\n`."""
    return f"{IM_START}{role}\n"


def render_message(role: str, text: str) -> str:
    """One message with text content as the template renders it. `render_chat` is built from these
    pieces, and SFT tokenises a conversation message by message with them (as LLaMA-Factory does)."""
    return message_start(role) + text + MESSAGE_END


def replace_image_placeholders(text: str, placeholder: str = DATASET_IMAGE_PLACEHOLDER) -> str:
    """Turn each dataset `<image>` marker into the model's vision placeholder.

    Mini-o3 problems are plain strings with `<image>` where the picture goes (recipe §1.2); the
    chat template passes string content through untouched, so the swap can happen before rendering.
    """
    if not placeholder:
        raise ChatFormatError("image placeholder must be a non-empty string")
    return text.replace(placeholder, IMAGE_PLACEHOLDER)


def _content_item_kind(item: Any, index: int, item_index: int) -> str:
    """Classify a list-content item in the template's order: image, then video, then text."""
    where = f"message {index} content item {item_index}"
    if not isinstance(item, Mapping):
        raise ChatFormatError(f"{where} must be a dict, got {type(item).__name__}: {item!r}")
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind == "video" or "video" in item:
        return "video"
    if "text" in item:
        if not isinstance(item["text"], str):
            raise ChatFormatError(f"{where} has non-string 'text' ({type(item['text']).__name__})")
        return "text"
    raise ChatFormatError(
        f"{where} is neither an image, a video nor text (type={kind!r}, keys={sorted(map(str, item))})"
    )


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    add_vision_id: bool = False,
) -> str:
    """Render a conversation exactly as Qwen2.5-VL's chat template does.

    Plain Python instead of Jinja: it is faster, has no template dependency, and lets us reject
    malformed messages (which Jinja would silently render as empty strings) with the message index.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatFormatError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ChatFormatError("messages is empty; a conversation needs at least one message")
    parts: list[str] = []
    images = videos = 0
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"message {index} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ChatFormatError(f"message {index} has role {role!r}; expected one of {', '.join(ROLES)}")
        if "content" not in message:
            raise ChatFormatError(f"message {index} ({role}) has no 'content'")
        content = message["content"]
        if index == 0 and role != "system":
            parts.append(render_message("system", DEFAULT_SYSTEM_MESSAGE))
        parts.append(message_start(role))
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence) and not isinstance(content, bytes):
            for item_index, item in enumerate(content):
                kind = _content_item_kind(item, index, item_index)
                if kind == "image":
                    images += 1
                    if add_vision_id:
                        parts.append(f"Picture {images}: ")
                    parts.append(IMAGE_PLACEHOLDER)
                elif kind == "video":
                    videos += 1
                    if add_vision_id:
                        parts.append(f"Video {videos}: ")
                    parts.append(VIDEO_PLACEHOLDER)
                else:
                    parts.append(item["text"])
        else:
            raise ChatFormatError(
                f"message {index} ({role}) content must be a string or a list of items, got {type(content).__name__}"
            )
        parts.append(MESSAGE_END)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


# --- ids ------------------------------------------------------------------------------------------


def num_image_tokens(image_grids_thw: Any, merge_size: int = 2) -> np.ndarray:
    """LLM tokens per image, t*h*w / merge_size**2, from the image processor's (N, 3) patch grids."""
    grids = np.asarray(image_grids_thw if image_grids_thw is not None else [], dtype=np.int64)
    if grids.size == 0:
        return np.zeros((0,), dtype=np.int64)
    if grids.ndim == 1:
        grids = grids[None]
    if grids.ndim != 2 or grids.shape[1] != 3:
        raise ChatFormatError(f"image_grids_thw must have shape (num_images, 3), got {grids.shape}")
    patches = grids.prod(axis=1)
    unit = merge_size * merge_size
    if (grids <= 0).any() or (patches % unit).any():
        raise ChatFormatError(
            f"image_grids_thw {grids.tolist()} must be positive with t*h*w divisible by merge_size**2={unit}"
        )
    return patches // unit


def expand_image_pads(
    ids: Sequence[int] | np.ndarray, image_token_counts: Any, image_pad_id: int
) -> np.ndarray:
    """Repeat the k-th `<|image_pad|>` id `image_token_counts[k]` times (one np.repeat, no Python loop)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ChatFormatError(f"ids must be 1-D, got shape {ids.shape}")
    counts = np.asarray(image_token_counts, dtype=np.int64).reshape(-1)
    is_pad = ids == image_pad_id
    num_pads = int(is_pad.sum())
    if num_pads != counts.size:
        raise ChatFormatError(
            f"the text has {num_pads} image placeholder(s) (<|image_pad|> id {image_pad_id}) "
            f"but {counts.size} image(s) were given"
        )
    if (counts < 1).any():
        raise ChatFormatError(f"every image needs at least one token, got counts {counts.tolist()}")
    repeats = np.ones(ids.shape, dtype=np.int64)
    repeats[is_pad] = counts
    return np.repeat(ids.astype(np.int32), repeats)


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    image_grids_thw: Any,
    add_generation_prompt: bool = True,
    merge_size: int = 2,
    add_vision_id: bool = False,
) -> np.ndarray:
    """Render, tokenize and expand image pads: the processor's `input_ids` for one conversation.

    Images only (Mini-o3 has no video); `image_grids_thw` lists the (t, h, w) patch grid of each image
    in order of appearance.
    """
    text = render_chat(messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    video_pad_id = tokenizer.token_to_id(VIDEO_PAD)
    if video_pad_id is not None and (ids == video_pad_id).any():
        raise ChatFormatError("encode_chat handles images only, but the conversation contains a video")
    return expand_image_pads(ids, num_image_tokens(image_grids_thw, merge_size), tokenizer.image_pad_id)


def encode_template(tokenizer: Tokenizer, template: str, **fields: object) -> np.ndarray:
    """Ids of `template.format(**fields)` where only the template's own special tokens are special.

    Field values may quote the model (an error message echoing its `source`); their special-token
    spellings stay plain text, so the model cannot put `<|image_pad|>` or `<|im_end|>` into its own
    context. The tokenizer splits text at special tokens before BPE, so for values without such
    spellings the ids equal `tokenizer.encode(template.format(**fields))`.
    """
    specials = sorted(tokenizer.special_tokens, key=len, reverse=True)
    pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", template) if specials else [template]
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2:  # a separator: one of the template's special tokens
            ids.append(tokenizer._special_id(piece))
        elif piece:
            ids.extend(tokenizer.encode_plain(piece.format(**fields)))
    return np.asarray(ids, dtype=np.int32)


def mm_token_type_ids(
    ids: Sequence[int] | np.ndarray, image_pad_id: int, video_pad_id: int | None = None
) -> np.ndarray:
    """Per-token modality: 1 for image tokens, 2 for video tokens, else 0 (HF's `mm_token_type_ids`).

    transformers 5 needs this (or explicit 3-row position ids) to build M-RoPE positions.
    """
    ids = np.asarray(ids)
    types = (ids == image_pad_id).astype(np.int32)
    if video_pad_id is not None:
        types[ids == video_pad_id] = 2
    return types
