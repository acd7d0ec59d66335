"""Small multi-turn SFT data and RL prompts on disk, in the published formats, for training tests."""

from __future__ import annotations

import json
import os

from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from tests.test_model_golden import rand_image

GROUNDING = '<think>look closer</think> <grounding>{"bbox_2d": [0.1, 0.2, 0.5, 0.6], "source": "original_image"}</grounding>'
OBSERVATION = ("After the above Action 0, here is the the zoom-in image (Observation 1):\n<image>.\n"
               "Continue your reasoning process inside <think> and </think>.")


def write_sharegpt(directory: str, n: int = 4, multi_turn: bool = True) -> str:
    """n conversations (half multi-turn with a zoom unless `multi_turn` is False) + PNGs -> JSON path."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    records = []
    for i in range(n):
        original = f"images/q{i}.png"
        rand_image(160 + 20 * i, 200, i).save(os.path.join(directory, original))
        letter = "AB"[i % 2]
        # the multi-turn records carry Mini-o3's system prompt; the short ones take the template default
        conv = [{"from": "system", "value": SYSTEM_PROMPT_TOOL_CROP}] if multi_turn else []
        conv.append({"from": "human", "value": f"<image>\nWhich letter is shown? (A) or (B). Case {i}."})
        images = [original]
        if multi_turn and i % 2 == 0:
            crop = f"images/q{i}_crop.png"
            rand_image(60, 80, 100 + i).save(os.path.join(directory, crop))
            conv += [{"from": "gpt", "value": GROUNDING}, {"from": "human", "value": OBSERVATION}]
            images.append(crop)
        conv.append({"from": "gpt", "value": f"<think>it is {letter}</think> <answer>{letter}</answer>"
                     if multi_turn else f"<answer>{letter}</answer>"})
        records.append({"conversations": json.dumps(conv), "images": images})
    path = os.path.join(directory, "coldstart.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f)
    return path


def write_prompts(directory: str, n: int = 4) -> str:
    """RL prompts in the released JSON format (images / problem / solution / data_source / doc_id)."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    records = []
    for i in range(n):
        image = f"images/p{i}.png"
        rand_image(180, 220 + 10 * i, 50 + i).save(os.path.join(directory, image))
        records.append({"images": [image], "problem": f"<image>\nWhich letter is shown? (A) or (B). Case {i}.",
                        "solution": "AB"[i % 2], "data_source": "visual_probe_train", "doc_id": str(i)})
    path = os.path.join(directory, "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f)
    return path


def small_tokenizer():
    """A Qwen-style BPE trained on the protocol and these fixtures' texts (~600 ids instead of 152k):
    the LM head over Qwen's full vocabulary would dominate every CPU training test."""
    from mini_o3_jax.processing.tokenizer_train import protocol_corpus, train_bpe_tokenizer

    texts = protocol_corpus() + [GROUNDING, OBSERVATION] + [
        f"Which letter is shown? (A) or (B). Case {i}. <think>it is A</think> <answer>B</answer>" for i in range(8)]
    return train_bpe_tokenizer(texts, vocab_size=512)


def small_model_config(tokenizer):
    from mini_o3_jax.model.presets import fit_to_tokenizer, model_config

    return fit_to_tokenizer(model_config("tiny"), tokenizer)


def write_small_checkpoint(directory: str, seed: int = 0) -> str:
    """An Orbax checkpoint of a random tiny model with the small tokenizer and an image processor
    config beside it: what `mini-o3 sft --config.model_path=...` expects."""
    from flax import nnx

    from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
    from mini_o3_jax.model.weights import save_orbax
    from mini_o3_jax.processing.image import ImageProcessor

    tok = small_tokenizer()
    save_orbax(Qwen25VL(small_model_config(tok), rngs=nnx.Rngs(seed)), directory)
    tok.save_pretrained(directory)
    ImageProcessor(min_pixels=3136, max_pixels=60_000).save_pretrained(directory)
    return directory
