"""Named model sizes: the released Qwen2.5-VL-3B/-7B shapes and a tiny one for tests and demos.

The ml-collections files in `configs/` wrap these, so there is one source of truth per size.
"""

from __future__ import annotations

from typing import Any

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.config import ModelConfig

_VISION = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, patch_size=14,
               temporal_patch_size=2, spatial_merge_size=2, window_size=112,
               fullatt_block_indexes=[7, 15, 23, 31])

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl_7b": dict(
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6, mrope_section=[16, 24, 24],
                  tie_word_embeddings=False),
        vision=dict(_VISION, out_hidden_size=3584),
    ),
    "qwen2_5_vl_3b": dict(
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, rope_theta=1e6, mrope_section=[16, 24, 24],
                  tie_word_embeddings=True),
        vision=dict(_VISION, out_hidden_size=2048),
    ),
    # Same structure as the real models at toy width: window + full-attention vision blocks,
    # GQA, M-RoPE sections, real vocabulary size and token ids. Runs on a laptop CPU in ms.
    "tiny": dict(
        text=dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, mrope_section=[2, 3, 3],
                  tie_word_embeddings=True, max_position_embeddings=32768),
        vision=dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                    fullatt_block_indexes=[1]),
    ),
}


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of a preset's `model` block (ml-collections friendly: plain dicts and lists)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    import copy

    return copy.deepcopy(PRESETS[name])


def model_config(name: str, **overrides: Any) -> ModelConfig:
    return ModelConfig.from_config_dict({**preset(name), **overrides})


def fit_to_tokenizer(cfg: ModelConfig, tokenizer: Any) -> ModelConfig:
    """`cfg` resized to a (small, trained) tokenizer: vocabulary rounded up to 64 rows and special
    token ids taken from it, so toy models need not carry Qwen's 152k-row embedding."""
    import dataclasses

    return cfg.replace(
        text=dataclasses.replace(cfg.text, vocab_size=-(-tokenizer.vocab_size // 64) * 64),
        image_token_id=tokenizer.image_pad_id,
        video_token_id=tokenizer.video_pad_id,
        vision_start_token_id=tokenizer.vision_start_id,
        vision_end_token_id=tokenizer.vision_end_id,
        bos_token_id=tokenizer.endoftext_id,
        eos_token_id=tokenizer.im_end_id,
    )
