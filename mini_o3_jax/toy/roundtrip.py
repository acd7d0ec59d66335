"""The checkpoint round trip, offline and CPU-only (the backbone tour notebook starts from it):

train a tokenizer -> build a tiny random Qwen2.5-VL -> write it as a HF checkpoint -> convert to
Orbax -> reload both -> run a Mini-o3 first-turn prompt on a generated high-resolution image ->
print the next-token distribution -> run the multi-turn visual-search rollout and write its HTML
report. The weights are random, so the tokens are meaningless; the point is that every format and
path runs and the two checkpoint formats give identical outputs.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw
from tqdm import tqdm

from mini_o3_jax.infer import infer
from mini_o3_jax.model.presets import fit_to_tokenizer, model_config
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.model.weights import load_hf, save_hf, save_orbax
from mini_o3_jax.pipeline import Pipeline
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.toy.tokenizer import protocol_corpus, train_bpe_tokenizer

QUESTION = "What number is written on the small red sign? Answer with the number."


def scene(seed: int = 0, size: tuple[int, int] = (2400, 1600)) -> Image.Image:
    """A high-resolution clutter scene with one small red sign: the kind of image Mini-o3 zooms into."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([90 + 60 * x / w, 120 + 40 * y / h, 140 - 50 * x / w], axis=-1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(150):
        cx, cy, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, 80))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle([cx, cy, cx + s, cy + s // 2], fill=color)
    sx, sy = int(w * 0.71), int(h * 0.23)
    draw.rectangle([sx, sy, sx + 36, sy + 24], fill=(220, 20, 20))
    draw.text((sx + 8, sy + 6), "42", fill=(255, 255, 255))
    return img


def run_roundtrip(out: str = "runs/roundtrip", seed: int = 0) -> dict[str, Any]:
    os.makedirs(out, exist_ok=True)
    hf_dir, orbax_dir = os.path.join(out, "hf"), os.path.join(out, "orbax")
    report: dict[str, Any] = {"note": "random weights: the tokens are meaningless; the pipeline is what runs"}
    timings: dict[str, float] = {}
    stages = tqdm(total=7, desc="roundtrip", unit="stage")

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 3)
        stages.set_postfix_str(name)
        stages.update()

    t0 = time.time()
    tokenizer = train_bpe_tokenizer(protocol_corpus(), vocab_size=512)
    stage("train_tokenizer", t0)

    t0 = time.time()
    cfg = fit_to_tokenizer(model_config("tiny"), tokenizer)
    model = Qwen25VL(cfg, dtype="float32", rngs=nnx.Rngs(seed))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    stage("build_model", t0)

    t0 = time.time()
    save_hf(model, hf_dir, dtype="float32")
    tokenizer.save_pretrained(hf_dir)
    ImageProcessor().save_pretrained(hf_dir)
    stage("write_hf_checkpoint", t0)

    t0 = time.time()
    save_orbax(load_hf(hf_dir), orbax_dir, side_files_from=hf_dir)
    stage("convert_to_orbax", t0)

    t0 = time.time()
    image = scene(seed)
    image_path = os.path.join(out, "scene.png")
    image.save(image_path)
    pipe = Pipeline.from_pretrained(orbax_dir)
    batch = pipe.prepare([image_path], QUESTION)
    logprobs = pipe.next_token_logprobs(batch)[0]
    stage("run_orbax", t0)

    t0 = time.time()
    pipe_hf = Pipeline.from_pretrained(hf_dir)
    diff = float(np.abs(pipe_hf.next_token_logprobs(pipe_hf.prepare([image_path], QUESTION))[0] - logprobs).max())
    stage("run_hf_and_compare", t0)

    t0 = time.time()  # the full visual-search loop: KV-cached sampler, zoom tool, HTML report
    trajs = infer(orbax_dir, image_path, QUESTION, max_turns=3, samples=2, seed=seed, max_context=4096,
                  max_turn_tokens=24, decode_chunk=8, out_dir=os.path.join(out, "infer"))
    stage("rollout", t0)
    stages.close()

    top = np.argsort(-logprobs)[:5]
    n_image_tokens = int((np.asarray(batch.text.input_ids[0]) == cfg.image_token_id).sum())
    report.update({
        "checkpoints": {"hf": hf_dir, "orbax": orbax_dir},
        "image": {"path": image_path, "size": list(image.size), "llm_image_tokens": n_image_tokens},
        "prompt_tokens": int(batch.lengths[0]),
        "model_params": n_params,
        "top_next_tokens": [[tokenizer.decode([int(i)]), round(float(np.exp(logprobs[i])), 5)] for i in top],
        "hf_vs_orbax_max_abs_logprob_diff": diff,
        "rollout": {
            "report": os.path.join(out, "infer", "report.html"),
            "samples": [{"turns": [t.outcome for t in tr.turns], "tokens": len(tr), "answer": tr.answer,
                         "void": tr.void, "exceed": tr.exceed} for tr in trajs],
        },
        "seconds": timings,
    })
    if diff != 0.0:
        raise RuntimeError(f"HF and Orbax checkpoints disagree (max |diff| {diff}); conversion is broken")
    return report
