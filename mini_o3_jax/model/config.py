"""Qwen2.5-VL architecture config: read HF `config.json` in both layouts, write the hub layout back.

Published checkpoints use a *flat* layout (text fields at the top level, `rope_scaling` with
`type: mrope`); transformers 5 saves text fields under `text_config` with `rope_parameters`.
Both map onto the same frozen dataclasses, validated once here so the model code never checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from mini_o3_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The Qwen2.5-VL ViT. Defaults are the released 3B/7B values (not HF's class defaults)."""

    depth: int = 32
    hidden_size: int = 1280
    num_heads: int = 16
    intermediate_size: int = 3420
    out_hidden_size: int = 3584
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tokens_per_second: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one pixel row: C * T * p * p (1176 for the released models)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens (4 for window_size 112)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @property
    def window_patches(self) -> int:
        """Patches in one full window (64 for the released models)."""
        return self.window_merged**2 * self.merge_unit


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder with M-RoPE. Defaults are Qwen2.5-VL-7B."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Full VLM: text + vision + the special token ids the model itself depends on."""

    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645

    def __post_init__(self):
        validate(self)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF json
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
        """Parse a HF Qwen2.5-VL config dict (flat hub layout or transformers-5 nested layout)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type", "qwen2_5_vl")
        if model_type not in ("qwen2_5_vl", "qwen2_5_vl_text"):
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected 'qwen2_5_vl'")
        text_src: Mapping[str, Any] = d.get("text_config") or d
        # Text fields may sit in text_config or (older files) at the top level; prefer text_config.
        def tget(key: str, default: Any = None) -> Any:
            if key in text_src:
                return text_src[key]
            return d.get(key, default)

        def number(kind: type, field: str, value: Any) -> Any:
            try:
                if value is None or isinstance(value, bool):
                    raise TypeError
                return kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {field} must be {kind.__name__}, got {value!r}") from None

        def ti(key: str, default: Any = None) -> int:
            return number(int, f"text field {key}", tget(key, default))

        def tf(key: str, default: Any = None) -> float:
            return number(float, f"text field {key}", tget(key, default))

        rope = tget("rope_parameters") or tget("rope_scaling") or {}
        if not isinstance(rope, Mapping):
            raise ConfigError(f"{source}: rope_scaling/rope_parameters must be an object, got {rope!r}")
        if "mrope_section" not in rope:
            raise ConfigError(
                f"{source}: no mrope_section in rope_scaling/rope_parameters ({dict(rope)}); "
                "Qwen2.5-VL needs e.g. {'type': 'mrope', 'mrope_section': [16, 24, 24]}"
            )
        rope_theta = rope.get("rope_theta", tget("rope_theta", 1_000_000.0))
        required = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"]
        missing = [k for k in required if tget(k) is None]
        if missing:
            raise ConfigError(f"{source}: missing text fields {missing}")
        tie = d.get("tie_word_embeddings", text_src.get("tie_word_embeddings", False))
        text = TextConfig(
            vocab_size=ti("vocab_size"),
            hidden_size=ti("hidden_size"),
            intermediate_size=ti("intermediate_size"),
            num_hidden_layers=ti("num_hidden_layers"),
            num_attention_heads=ti("num_attention_heads"),
            num_key_value_heads=ti("num_key_value_heads", tget("num_attention_heads")),
            rope_theta=number(float, "rope_theta", rope_theta),
            mrope_section=tuple(number(int, "mrope_section", x) for x in rope["mrope_section"]),
            rms_norm_eps=tf("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(tie),
            max_position_embeddings=ti("max_position_embeddings", 128000),
            hidden_act=str(tget("hidden_act", "silu")),
        )
        v = d.get("vision_config")
        if not isinstance(v, Mapping):
            raise ConfigError(f"{source}: missing vision_config object")
        vrope = v.get("rope_parameters") or {}

        def vi(key: str, default: Any = None) -> int:
            return number(int, f"vision_config.{key}", v.get(key, default))

        def vf(key: str, default: Any = None) -> float:
            return number(float, f"vision_config.{key}", v.get(key, default))

        vision = VisionConfig(
            depth=vi("depth", 32),
            hidden_size=vi("hidden_size", 1280),
            num_heads=vi("num_heads", 16),
            intermediate_size=vi("intermediate_size", 3420),
            out_hidden_size=vi("out_hidden_size", text.hidden_size),
            patch_size=vi("patch_size", v.get("spatial_patch_size", 14)),
            temporal_patch_size=vi("temporal_patch_size", 2),
            spatial_merge_size=vi("spatial_merge_size", 2),
            in_channels=vi("in_channels", v.get("in_chans", 3)),
            window_size=vi("window_size", 112),
            fullatt_block_indexes=tuple(int(i) for i in v.get("fullatt_block_indexes", (7, 15, 23, 31))),
            rope_theta=number(float, "vision_config.rope_theta", vrope.get("rope_theta", v.get("rope_theta", 10000.0))),
            rms_norm_eps=vf("rms_norm_eps", 1e-6),
            hidden_act=str(v.get("hidden_act", "silu")),
            tokens_per_second=vi("tokens_per_second", 2),
        )
        ids = {
            k: int(d.get(k, text_src.get(k, default)))
            for k, default in [
                ("image_token_id", 151655),
                ("video_token_id", 151656),
                ("vision_start_token_id", 151652),
                ("vision_end_token_id", 151653),
            ]
        }
        bos = d.get("bos_token_id", text_src.get("bos_token_id", 151643))
        eos = d.get("eos_token_id", text_src.get("eos_token_id", 151645))
        try:
            return cls(text=text, vision=vision, bos_token_id=int(bos if bos is not None else 151643),
                       eos_token_id=int(eos[0] if isinstance(eos, list) else eos), **ids)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"{path}: config.json not found (expected a HF Qwen2.5-VL checkpoint directory)")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=path)

    def to_hf_dict(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """The flat hub layout of the published checkpoints (transformers 4.5x and 5.x load it)."""
        t, v = self.text, self.vision
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": 151654,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "hidden_act": t.hidden_act,
            "hidden_size": t.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "max_window_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "sliding_window": 32768,
            "use_sliding_window": False,
            "tie_word_embeddings": t.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": True,
            "vocab_size": t.vocab_size,
            "vision_config": {
                "depth": v.depth,
                "hidden_act": v.hidden_act,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_chans": v.in_channels,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "tokens_per_second": v.tokens_per_second,
                "torch_dtype": torch_dtype,
            },
        }

    # ------------------------------------------------------------ ml-collections
    @classmethod
    def from_config_dict(cls, cd: Mapping[str, Any]) -> ModelConfig:
        """Build from an ml-collections `model` block: {'text': {...}, 'vision': {...}, ids...}."""
        cd = dict(cd.to_dict() if hasattr(cd, "to_dict") else cd)
        text = dict(cd.pop("text", {}))
        vision = dict(cd.pop("vision", {}))
        for k in ("mrope_section",):
            if k in text:
                text[k] = tuple(text[k])
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = tuple(vision["fullatt_block_indexes"])
        unknown = set(text) - {f.name for f in dataclasses.fields(TextConfig)}
        unknown |= set(vision) - {f.name for f in dataclasses.fields(VisionConfig)}
        unknown |= set(cd) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"model config: unknown fields {sorted(unknown)}")
        return cls(text=TextConfig(**text), vision=VisionConfig(**vision), **cd)

    def to_config_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["text"]["mrope_section"] = list(d["text"]["mrope_section"])
        d["vision"]["fullatt_block_indexes"] = list(d["vision"]["fullatt_block_indexes"])
        return d


def validate(cfg: ModelConfig) -> None:
    """Reject configs the model cannot run, naming the field and what was expected."""
    t, v = cfg.text, cfg.vision
    if t.hidden_size % t.num_attention_heads:
        raise ConfigError(
            f"text hidden_size {t.hidden_size} is not divisible by num_attention_heads {t.num_attention_heads}"
        )
    if t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(
            f"text num_attention_heads {t.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {t.num_key_value_heads}"
        )
    if t.head_dim % 2:
        raise ConfigError(f"text head_dim {t.head_dim} must be even for rotary embeddings")
    if len(t.mrope_section) != 3 or sum(t.mrope_section) != t.head_dim // 2:
        raise ConfigError(
            f"mrope_section {list(t.mrope_section)} must have 3 entries (t, h, w) summing to "
            f"head_dim/2 = {t.head_dim // 2} (head_dim = hidden_size/num_attention_heads = "
            f"{t.hidden_size}/{t.num_attention_heads})"
        )
    if v.hidden_size % v.num_heads:
        raise ConfigError(f"vision hidden_size {v.hidden_size} is not divisible by num_heads {v.num_heads}")
    if v.head_dim % 4:
        raise ConfigError(f"vision head_dim {v.head_dim} must be a multiple of 4 for the 2-D rotary")
    if v.window_size % (v.patch_size * v.spatial_merge_size):
        raise ConfigError(
            f"vision window_size {v.window_size} must be a multiple of patch_size*spatial_merge_size "
            f"= {v.patch_size * v.spatial_merge_size}"
        )
    bad = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
    if bad:
        raise ConfigError(f"vision fullatt_block_indexes {bad} out of range for depth {v.depth}")
    if v.out_hidden_size != t.hidden_size:
        raise ConfigError(
            f"vision out_hidden_size {v.out_hidden_size} must equal text hidden_size {t.hidden_size}"
        )
    for name, act in (("text", t.hidden_act), ("vision", v.hidden_act)):
        if act != "silu":
            raise ConfigError(f"{name} hidden_act {act!r} is not supported (Qwen2.5-VL uses 'silu')")
