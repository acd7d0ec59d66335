"""SFT train-step throughput of our JAX trainer against transformers + torch on the same CPU, in one run.

For each model config a random HF `Qwen2_5_VLForConditionalGeneration` (every tensor randomised) is saved
to a temp dir and loaded into our model with `load_hf`; both sides then train on the *same* batch of
text-plus-one-image sequences (one 224x224 image = 64 image tokens, padded with assistant text to exactly
`--seq-len` tokens, loss on the second half) with the same optimizer: AdamW (lr 1e-5, no weight decay,
betas 0.9/0.999, eps 1e-8) after global-norm clipping at 1.0, vision tower + merger frozen.

* ours: `Trainer(..., StepConfig(loss="sft", trainable="language_model", logits_chunk=512))`,
  `trainer.train_step(micro_batches)` (grads per micro-batch, summed, one update; returns floats so it
  syncs). Micro-batches are built with `micro_batches` and put on the device before timing.
* torch: HF's own cross-entropy via `labels` (-100 off the mask) scaled by each micro-batch's share of
  the step's loss tokens, `backward()` per micro-batch, `clip_grad_norm_(..., 1.0)`, `AdamW.step()`,
  `zero_grad()`; `torch.set_num_threads(os.cpu_count())`, sdpa attention, 3-row M-RoPE `position_ids`
  precomputed with `get_rope_index` (our positions are built on the host too, outside the timing).

One optimizer step covers `--sequences` sequences, cut into micro-batches of 1 (gradient accumulation)
or of all of them. Each (config, micro-batch) case starts from freshly loaded weights on both sides: the
first step of each side is untimed (ours: includes compilation, reported separately; it is also the
warm-up) and its loss and gradient norm are compared; then JAX and torch steps are timed interleaved
(median of N), and the losses after the same number of updates are compared again.

    python bench/train.py [--runs N] [--configs tiny,small] [--micro 1,2] [--write-results]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # so `tests.hf_reference` and the package import from a plain checkout

import numpy as np  # noqa: E402

from bench.forward import (  # noqa: E402
    bench_image,
    load_average,
    machine_info,
    read_results,
    replace_section,
    timed_pair,
    utc_date,
    versions,
)

RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
BEGIN, END = "<!-- bench/train.py:cpu:begin -->", "<!-- bench/train.py:cpu:end -->"
IMAGE_TOKEN_ID, VISION_START, VISION_END = 151655, 151652, 151653
LR = 1e-5

QUESTION = (
    "The photo shows a busy street market in the late afternoon. What is the price written on the board "
    "of the fruit stall closest to the camera, and which fruit is it for?"
)
ANSWER = (
    "<think>The fruit stall closest to the camera is on the right. Its board is partly hidden behind a "
    "customer, so I look at the visible part first and compare the digits with the other boards.</think> "
)

# `tiny` is tests/hf_reference.py's tiny_hf_config (the golden tests' model): 2 layers, hidden 64, real
# 152,064 vocab with an untied head, so the LM head is almost all of the work. `small` keeps the real
# vocabulary but gives the decoder a more realistic share of the FLOPs.
SMALL_TEXT = dict(
    vocab_size=151936, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
    tie_word_embeddings=False,
)
SMALL_VISION = dict(
    depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256, patch_size=14,
    temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1],
)


def hf_model(name: str, seed: int = 0):
    """Random fp32 HF model (sdpa attention) with every tensor randomised, as the golden tests do."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from tests.hf_reference import randomize_all, tiny_hf_config

    if name == "tiny":
        config, scale = tiny_hf_config(tied=False), 0.08
    elif name == "small":
        config = Qwen2_5_VLConfig(
            text_config=dict(SMALL_TEXT), vision_config=dict(SMALL_VISION), image_token_id=IMAGE_TOKEN_ID,
            video_token_id=151656, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
            tie_word_embeddings=False,
        )
        scale = 0.02
    else:
        raise SystemExit(f"unknown config {name!r}; expected tiny or small")
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return randomize_all(model, seed, bias_scale=0.02, weight_scale=scale)


def describe(hf) -> str:
    t, v = hf.config.text_config, hf.config.vision_config
    n_text = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("model.visual"))
    head = t.vocab_size * t.hidden_size
    d, h, kv, f = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size
    hd = d // h
    layers = t.num_hidden_layers * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f)  # q, k, v, o, MLP
    share = head / (head + layers)  # of the decoder + head matmul FLOPs per token (attention is ~1% here)
    return (f"decoder {t.num_hidden_layers} layers, hidden {t.hidden_size}, intermediate {t.intermediate_size}, "
            f"{t.num_attention_heads}/{t.num_key_value_heads} heads, vocab {t.vocab_size:,} (untied head); "
            f"ViT depth {v.depth}, width {v.hidden_size}; trainable {n_text / 1e6:.1f}M params, of which "
            f"embedding + LM head {2 * head / 1e6:.1f}M; the LM head is {100 * share:.0f}% of the per-token matmul FLOPs")


def make_examples(n: int, seq_len: int):
    """`n` chat sequences of exactly `seq_len` tokens: one 224x224 image, question, long assistant answer.

    Returns (token ids, loss masks, pixel rows, grids); the loss mask is 1 on the second half.
    """
    from mini_o3_jax.processing.chat import Tokenizer, encode_chat
    from mini_o3_jax.processing.image import ImageProcessor
    from tests.hf_reference import qwen_tokenizer_dir

    tok, proc = Tokenizer.from_pretrained(qwen_tokenizer_dir()), ImageProcessor()
    out = []
    for i in range(n):
        processed = proc([bench_image(224, seed=i)])
        grid = np.asarray(processed.grid_thw, np.int64)
        answer = ANSWER
        while True:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{QUESTION} ({i})"}]},
                {"role": "assistant", "content": answer + "<answer>4.50 for mangoes</answer>"},
            ]
            ids = encode_chat(tok, messages, grid, add_generation_prompt=False)
            if len(ids) >= seq_len:
                break
            answer += ANSWER
        ids = ids[:seq_len].astype(np.int32)
        n_img = int((ids == IMAGE_TOKEN_ID).sum())
        assert n_img == int(grid.prod()) // 4, (n_img, grid)
        img_end = int(np.flatnonzero(ids == VISION_END)[0])
        assert ids[int(np.flatnonzero(ids == VISION_START)[0]) + 1 + n_img] == VISION_END
        assert img_end < seq_len // 2, "the image must sit in the un-trained first half"
        mask = np.zeros(seq_len, np.float32)
        mask[seq_len // 2:] = 1.0
        out.append((ids, mask, np.asarray(processed.pixel_values, np.float32), grid))
    return out


# ------------------------------------------------------------------------------------------------ sides
def ours_setup(ckpt: str, data, micro: int):
    from mini_o3_jax.model.weights import load_hf
    from mini_o3_jax.train.batch import BatchSpec, Example, batch_tokens, micro_batches, token_weights
    from mini_o3_jax.train.optim import OptimConfig, make_optimizer
    from mini_o3_jax.train.step import StepConfig, Trainer

    model = load_hf(ckpt, dtype="float32", remat="none")
    weights = token_weights([m for _, m, _, _ in data], "token-mean")
    examples = [Example(token_ids=ids, loss_mask=m, weights=w, pixel_values=px, grids=g, advantage=0.0, index=i)
                for i, ((ids, m, px, g), w) in enumerate(zip(data, weights))]
    batches, _ = micro_batches(examples, model.config, BatchSpec(micro_batch=micro, min_length=64))
    n_patches = sum(int(g.prod()) for _, _, _, g in data)
    for b in batches:  # equal work: no padded positions, no padded vision windows
        assert np.asarray(b.targets).shape == (micro, len(data[0][0])), np.asarray(b.targets).shape
        assert batch_tokens(b) == micro * len(data[0][0])
        assert np.asarray(b.vision.pixels).shape[0] == n_patches // len(batches), "padded vision layout"
    trainer = Trainer(model, make_optimizer(OptimConfig(lr=LR, weight_decay=0.0), total_steps=100),
                      StepConfig(loss="sft", trainable="language_model", logits_chunk=512))
    batches = [trainer.put(b) for b in batches]
    losses: list[float] = []

    def step():
        m = trainer.train_step(batches)
        losses.append(m["loss"])
        return m

    return step, losses


def torch_setup(hf, data, micro: int):
    import torch

    model = copy.deepcopy(hf).train()
    model.model.visual.requires_grad_(False)  # vision tower + patch merger
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    total = sum(float(m[1:].sum()) for _, m, _, _ in data)  # loss tokens (HF shifts labels by one)
    mbs = []
    for start in range(0, len(data), micro):
        group = data[start:start + micro]
        ids = torch.as_tensor(np.stack([d[0] for d in group])).long()
        labels = ids.clone()
        labels[torch.as_tensor(np.stack([d[1] for d in group])) == 0] = -100
        grid = torch.as_tensor(np.concatenate([d[3] for d in group])).long()
        with torch.no_grad():
            pos, _ = model.model.get_rope_index(ids, (ids == IMAGE_TOKEN_ID).long(), image_grid_thw=grid)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos, labels=labels,
                  pixel_values=torch.as_tensor(np.concatenate([d[2] for d in group])), image_grid_thw=grid,
                  use_cache=False)
        share = sum(float(d[1][1:].sum()) for d in group) / total
        mbs.append((kw, share))
    losses: list[float] = []

    def step():
        loss_sum = 0.0
        for kw, share in mbs:
            model.model.rope_deltas = None
            loss = model(**kw).loss * share
            loss.backward()
            loss_sum += float(loss.detach())
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum)
        return {"loss": loss_sum, "grad_norm": norm}

    return step, losses


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def run_case(name: str, hf, ckpt: str, data, micro: int, runs: int) -> dict:
    tokens = sum(len(d[0]) for d in data)
    t0 = time.perf_counter()
    ours, ours_losses = ours_setup(ckpt, data, micro)
    setup_s = time.perf_counter() - t0
    theirs, torch_losses = torch_setup(hf, data, micro)

    t0 = time.perf_counter()
    m_ours = ours()
    first_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    m_torch = theirs()
    first_torch = time.perf_counter() - t0
    loss_rel, gn_rel = rel(m_ours["loss"], m_torch["loss"]), rel(m_ours["grad_norm"], m_torch["grad_norm"])
    print(f"[{name}, micro-batch {micro}] first step: loss ours {m_ours['loss']:.6f} torch {m_torch['loss']:.6f} "
          f"(rel diff {loss_rel:.1e}); grad norm ours {m_ours['grad_norm']:.5f} torch {m_torch['grad_norm']:.5f} "
          f"(rel {gn_rel:.1e}); first-step wall: ours {first_ours:.1f}s (incl. compile), torch {first_torch:.2f}s",
          flush=True)
    if loss_rel > 1e-4:
        raise SystemExit(f"first-step losses disagree by {loss_rel:.2e} relative (> 1e-4): not the same work")

    t = timed_pair({"jax": ours, "torch": theirs}, runs, warmup=0)  # the first step was the warm-up
    final_rel = rel(ours_losses[-1], torch_losses[-1])
    j, tt = t["jax"]["median"], t["torch"]["median"]
    print(f"[{name}, micro-batch {micro}] step median: ours {j:.3f}s torch {tt:.3f}s -> ours/torch "
          f"{tt / j:.2f}x; loss after {len(ours_losses)} updates: ours {ours_losses[-1]:.6f} torch "
          f"{torch_losses[-1]:.6f} (rel {final_rel:.1e})", flush=True)
    return dict(config=name, micro=micro, sequences=len(data), tokens=tokens, jax=t["jax"], torch=t["torch"],
                first_ours=first_ours, first_torch=first_torch, compile_s=first_ours - j, setup_s=setup_s,
                loss_ours=m_ours["loss"], loss_torch=m_torch["loss"], loss_rel=loss_rel,
                gn_ours=m_ours["grad_norm"], gn_torch=m_torch["grad_norm"], gn_rel=gn_rel,
                final_rel=final_rel, updates=len(ours_losses), load=load_average().split(" / ")[0])


# ---------------------------------------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    lines = ["| config | micro-batch x steps | tokens/step | ours s/step | torch s/step | ours tok/s | torch tok/s "
             "| ours/torch | same, min times | ours 1st step (compile) | 1st-step loss ours / torch (rel) | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        j, t = r["jax"]["median"], r["torch"]["median"]
        accum = r["sequences"] // r["micro"]
        lines.append(
            f"| {r['config']} | {r['micro']} x {accum} | {r['tokens']:,} | {j:.3f} | {t:.3f} | {r['tokens'] / j:,.0f} | "
            f"{r['tokens'] / t:,.0f} | **{t / j:.2f}x** | {r['torch']['min'] / r['jax']['min']:.2f}x | "
            f"{r['first_ours']:.1f} s ({r['compile_s']:.1f} s) | {r['loss_ours']:.6f} / {r['loss_torch']:.6f} "
            f"({r['loss_rel']:.1e}) | {r['load']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed steps per side and case (median reported)")
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--micro", default="1,2", help="micro-batch sizes (sequences per micro-batch)")
    p.add_argument("--sequences", type=int, default=2, help="sequences per optimizer step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--write-results", action="store_true", help=f"update the section in {os.path.relpath(RESULTS)}")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(os.cpu_count())
    cmd = "python bench/train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    date, info, vers = utc_date(), machine_info(), versions()
    print(f"{date} | {info['cpu']}, {info['cores']} cores, {info['ram']} | "
          + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    load_start, t_start = load_average(), time.perf_counter()
    data = make_examples(args.sequences, args.seq_len)
    n_img = int((data[0][0] == IMAGE_TOKEN_ID).sum())
    print(f"{args.sequences} sequences x {args.seq_len} tokens ({n_img} image tokens each, grid "
          f"{data[0][3].tolist()}), loss on the last {args.seq_len // 2}", flush=True)

    rows, configs = [], {}
    for name in args.configs.split(","):
        hf = hf_model(name)
        configs[name] = describe(hf)
        print(f"{name}: {configs[name]}", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_train_") as ckpt:
            hf.save_pretrained(ckpt)
            for micro in (int(m) for m in args.micro.split(",")):
                rows.append(run_case(name, hf, ckpt, data, micro, args.runs))
        del hf
    total_s = time.perf_counter() - t_start
    load_end = load_average()

    tab = table(rows)
    worst_final = max(r["final_rel"] for r in rows)
    worst_gn = max(r["gn_rel"] for r in rows)
    lines = [
        BEGIN,
        "## Train step (SFT), CPU",
        "",
        f"- Date: 2026-11-30 ({date}); `bench/train.py`",
        f"- Machine: {info['cpu']} (2-core Xeon), {info['cores']} cores, {info['ram']} RAM (ISA: {info['isa']})",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + f", Python {platform.python_version()}",
        *(f"- Config `{k}`: {v}" for k, v in configs.items()),
        f"- Data: {args.sequences} sequences per optimizer step, each exactly {args.seq_len} tokens (chat: one "
        f"224x224 image = {n_img} image tokens, question, assistant text), loss on the last {args.seq_len // 2} "
        "positions; fp32 throughout; no padding on either side. `micro-batch x steps` = sequences per "
        "forward/backward x micro-batches accumulated per optimizer step.",
        "- Method: both sides load the same random checkpoint and do the same update (vision tower + merger "
        "frozen, token-mean cross-entropy, clip 1.0, AdamW lr 1e-5, wd 0). Ours: `Trainer.train_step` "
        "(jit; LM head in `logits_chunk=512` rematerialised chunks; inputs put on device beforehand). torch: "
        f"HF `labels` loss, `backward`, `clip_grad_norm_`, `AdamW.step`, {torch.get_num_threads()} threads, "
        "sdpa, precomputed M-RoPE `position_ids`. Each case starts from fresh weights; first step untimed; "
        f"then median of {args.runs} further steps, JAX and torch steps interleaved. tok/s = all "
        "sequence tokens (image + text) per optimizer step / step time; ours/torch > 1 means ours is faster. "
        "`ours 1st step (compile)`: wall time of our first step from scratch, and that minus a steady step. "
        "`load`: 1-minute load average at the end of the case (2 cores: above ~2 means other jobs competed).",
        f"- Reproduce: `{cmd.strip()}`",
        "",
        tab,
        "",
        f"- Correctness anchor: first-step loss agrees to <= {max(r['loss_rel'] for r in rows):.1e} relative "
        f"(required <= 1e-4), first-step gradient norm (before clipping) to <= {worst_gn:.1e}; after "
        f"{rows[0]['updates']} identical updates the losses still agree to <= {worst_final:.1e}.",
        f"- Load average (1/5/15 min) at start: {load_start}, at end: {load_end}; whole run {total_s:.0f} s. "
        "The machine may be shared with other jobs; JAX and torch steps are interleaved so both see the "
        "same background load.",
        END,
    ]
    section = "\n".join(lines)
    print()
    print(section)
    if args.write_results:
        text = read_results() or "# Benchmark results\n"
        with open(RESULTS, "w") as f:
            f.write(replace_section(text, BEGIN, END, section).rstrip() + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
