"""Prefill throughput of our JAX Qwen2.5-VL against transformers on the same CPU, in one run.

A random HF `Qwen2_5_VLForConditionalGeneration` (8-layer / 512-wide decoder with the real 152,064
vocab and an untied head like 7B, an 8-block / 256-wide ViT) is saved to a temp dir and loaded into
our model with `load_hf`; both then run the same input -- one 448x448 image (1,024 patches, 256
image tokens) in a chat prompt padded to ~256 text tokens -- and are timed:

* full prefill: vision tower + embedding merge + decoder + lm_head over every position;
* prefill with last-position logits only (HF `logits_to_keep=1`; ours applies `text.logits` to the
  last hidden state inside the same jitted function);
* the vision tower alone.

Both sides get their inputs prepared beforehand: ours the host-built `TextInputs`/`VisionInputs`
(`build_inputs`), HF the 3-D M-RoPE `position_ids` from `get_rope_index` (so neither pays for
position bookkeeping inside the timed call; both host costs are reported separately). HF still
computes its vision window index inside `visual.forward`, which is part of its design.

    python bench/forward.py [--runs N] [--dtype float32|bfloat16|both] [--write-results]
    python bench/forward.py --gpu-7b      # on a GPU machine: 7B-shaped 8K-token text prefill, TFLOP/s

`--gpu-7b` builds the 7B model directly in JAX (random bf16 weights, no HF) and is never run by
default; it refuses to run on the CPU backend unless `--allow-cpu` is given (for smoke tests with
`--gpu-layers`/`--gpu-tokens` overrides).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # so `tests.hf_reference` and the package import from a plain checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mini_o3_jax.model.config import ModelConfig, TextConfig  # noqa: E402
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
BEGIN, END = "<!-- bench/forward.py:cpu:begin -->", "<!-- bench/forward.py:cpu:end -->"
GPU_BEGIN, GPU_END = "<!-- bench/forward.py:gpu:begin -->", "<!-- bench/forward.py:gpu:end -->"
IMAGE_TOKEN_ID = 151655

# The benchmark shape: real vocab and untied head (7B style), small depth/width.
TEXT = dict(
    vocab_size=152064, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
    num_attention_heads=8, num_key_value_heads=2, mrope_section=[8, 12, 12], rope_theta=1e6,
    rms_norm_eps=1e-6, max_position_embeddings=32768,
)
VISION = dict(
    depth=8, hidden_size=256, intermediate_size=768, num_heads=4, out_hidden_size=512, patch_size=14,
    temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[3, 7],
)

SYSTEM = (
    "You are a visual search agent. Think step by step inside <think></think>. When a detail is too "
    "small to read, call the zoom-in tool with <grounding>{\"bbox_2d\": [x0, y0, x1, y1], \"source\": "
    "\"original_image\"}</grounding> using normalised coordinates; the cropped view comes back as a "
    "new observation. Give the final answer inside <answer></answer>."
)
QUESTION = (
    "The photo shows a busy street market in the late afternoon. Several stalls have handwritten "
    "price boards and there is a shop sign above the entrance on the left. What is the price written "
    "on the board of the fruit stall closest to the camera, and which fruit is it for?"
)
FILLER = (
    " For context, the image was taken from the opposite side of the road, so some boards are partly "
    "hidden behind customers and awnings; look carefully before answering."
)


# ----------------------------------------------------------------------------------------- helpers
def timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> dict:
    """Median/min wall time (s) of `fn()` over `runs` calls after `warmup` untimed calls."""
    return timed_pair({"x": fn}, runs, warmup)["x"]


def timed_pair(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, dict]:
    """Time several callables *interleaved* (order alternating every round), so that a load change on
    a shared machine hits all of them alike; median and min wall time (s) per callable."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        for n in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: {"median": statistics.median(t), "min": min(t), "runs": runs} for n, t in times.items()}


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ram = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        ram = f"{kb / 1024**2:.1f} GiB"
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": ram, "isa": ", ".join(isa) or "n/a"}


def versions() -> dict:
    out = {}
    for pkg in ("jax", "jaxlib", "flax", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is just reported
            out[pkg] = "n/a"
    return out


def utc_date() -> str:
    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")


def bench_image(size: int = 448, seed: int = 0):
    """A deterministic smooth-but-textured RGB test image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.int64)
    img = img + rng.integers(-16, 17, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def build_prompt(processor, image, text_tokens: int):
    """Chat prompt with one image, padded with filler sentences to >= `text_tokens` text tokens."""
    question = QUESTION
    while True:
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out = processor(text=[text], images=[image], return_tensors="np")
        ids = out["input_ids"][0]
        n_text = int((ids != IMAGE_TOKEN_ID).sum())
        if n_text >= text_tokens:
            return ids, out["pixel_values"], out["image_grid_thw"]
        question += FILLER


def hf_config():
    from transformers import Qwen2_5_VLConfig

    text = dict(TEXT)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                               "mrope_section": text.pop("mrope_section")}
    return Qwen2_5_VLConfig(
        text_config=dict(text, tie_word_embeddings=False),
        vision_config=dict(VISION),
        image_token_id=IMAGE_TOKEN_ID, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False,
    )


def random_hf_model(seed: int = 0):
    """Random fp32 HF model; norms and biases randomised too so a mis-mapped one would show."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tests.hf_reference import randomize_all

    torch.manual_seed(seed)
    config = hf_config()
    config._attn_implementation = "sdpa"
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return randomize_all(model, seed, bias_scale=0.02, weight_scale=0.02)


# ------------------------------------------------------------------------------------ CPU benchmark
def run_cpu(args) -> dict:
    import torch

    from mini_o3_jax.model.weights import load_hf
    from mini_o3_jax.processing.inputs import build_inputs
    from tests.hf_reference import hf_processor

    torch.set_num_threads(os.cpu_count())
    processor = hf_processor()
    ids, pv, grid = build_prompt(processor, bench_image(), args.text_tokens)
    seq_len = len(ids)
    n_img = int((ids == IMAGE_TOKEN_ID).sum())
    n_patches = int(np.prod(grid, axis=1).sum())
    print(f"input: {seq_len} tokens ({n_img} image + {seq_len - n_img} text), grid {grid.tolist()}, "
          f"{n_patches} patches", flush=True)

    t0 = time.perf_counter()
    hf = random_hf_model()
    tmp = tempfile.TemporaryDirectory(prefix="bench_forward_")
    hf.save_pretrained(tmp.name)
    print(f"built + saved random HF model in {time.perf_counter() - t0:.1f}s", flush=True)

    t_ids = torch.as_tensor(ids).long()[None]
    t_pv = torch.as_tensor(pv)
    t_grid = torch.as_tensor(grid).long()
    mm = (t_ids == IMAGE_TOKEN_ID).long()
    hf.model.rope_deltas = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        position_ids, _ = hf.model.get_rope_index(t_ids, mm, image_grid_thw=t_grid)
    hf_host_s = time.perf_counter() - t0

    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    result = {"seq_len": seq_len, "n_img": n_img, "n_patches": n_patches, "grid": grid.tolist(),
              "rows": [], "notes": [], "hf_host_s": hf_host_s, "load_start": load_average()}
    for dt in dtypes:
        tdt = torch.float32 if dt == "float32" else torch.bfloat16
        hf.to(tdt)
        model = load_hf(tmp.name, dtype=dt)
        t0 = time.perf_counter()
        batch = build_inputs([ids], [pv], [grid], model.config, length=seq_len)
        result["our_host_s"] = time.perf_counter() - t0
        assert batch.vision.pixels.shape[0] == n_patches, "padded vision layout: timing would not be equal work"
        text = TextInputs(*(jnp.asarray(a) for a in batch.text))
        vision = jax.tree.map(jnp.asarray, batch.vision)
        jdt = jnp.float32 if dt == "float32" else jnp.bfloat16
        graphdef, state = nnx.split(model)
        vgraph, vstate = nnx.split(model.visual)

        def full(state, text, vision, graphdef=graphdef, jdt=jdt):
            m = nnx.merge(graphdef, state)
            return m.text.logits(m(text, vision), jdt)

        def last(state, text, vision, graphdef=graphdef, jdt=jdt):
            m = nnx.merge(graphdef, state)
            return m.text.logits(m(text, vision)[:, -1:], jdt)

        def visual(vstate, vision, vgraph=vgraph):
            return nnx.merge(vgraph, vstate)(vision)

        compiled, compile_s = {}, {}
        for name, fn, fargs in (("full", full, (state, text, vision)), ("last", last, (state, text, vision)),
                                ("vision", visual, (vstate, vision))):
            t0 = time.perf_counter()
            compiled[name] = jax.jit(fn).lower(*fargs).compile()
            compile_s[name] = time.perf_counter() - t0
        result.setdefault("compile_s", {})[dt] = compile_s

        hf_kw = dict(input_ids=t_ids, pixel_values=t_pv.to(tdt), image_grid_thw=t_grid,
                     position_ids=position_ids, use_cache=False)

        def hf_call(keep=0, kw=hf_kw):
            hf.model.rope_deltas = None
            with torch.inference_mode():
                return hf(**kw, logits_to_keep=keep).logits

        def hf_visual(px=hf_kw["pixel_values"]):
            with torch.inference_mode():
                return hf.model.visual(px, grid_thw=t_grid).pooler_output

        # ---- equal work check
        ours = np.asarray(compiled["full"](state, text, vision)[0], np.float64)
        ref = hf_call().float()[0].double().numpy()
        diff = float(np.abs(ours - ref).max())
        ours_last = np.asarray(compiled["last"](state, text, vision)[0, -1], np.float64)
        diff_last = float(np.abs(ours_last - hf_call(1).float()[0, -1].double().numpy()).max())
        feats = np.asarray(compiled["vision"](vstate, vision), np.float64)
        rows = np.asarray(batch.text.image_rows[0])
        feats = feats[rows[rows >= 0]]
        vdiff = float(np.abs(feats - hf_visual().float().double().numpy()).max())
        scale = float(np.abs(ref).max())
        tol = 1e-3 if dt == "float32" else 1e-1
        print(f"[{dt}] max|logit diff| full {diff:.2e}  last {diff_last:.2e}  vision-features {vdiff:.2e}"
              f"  (max|logit| {scale:.2f}, tol {tol:g})", flush=True)
        if max(diff, diff_last) > tol:
            raise SystemExit(f"[{dt}] JAX and HF disagree ({diff:.3e} > {tol}); timings would not compare")
        result.setdefault("diffs", {})[dt] = {"full": diff, "last": diff_last, "vision": vdiff, "max_logit": scale}

        jax_calls = {
            "full": lambda c=compiled, a=(state, text, vision): jax.block_until_ready(c["full"](*a)),
            "last": lambda c=compiled, a=(state, text, vision): jax.block_until_ready(c["last"](*a)),
            "vision": lambda c=compiled, a=(vstate, vision): jax.block_until_ready(c["vision"](*a)),
        }
        cases = [
            ("prefill, logits at all positions", "full", lambda: hf_call(0), seq_len),
            ("prefill, last-position logits", "last", lambda: hf_call(1), seq_len),
            ("vision tower only", "vision", hf_visual, n_patches),
        ]
        attns = ["sdpa"] + (["eager"] if dt == "float32" and not args.no_eager else [])
        for attn in attns:
            hf.set_attn_implementation(attn)
            for label, name, tfn, tokens in cases:
                if attn == "eager" and name == "last":
                    continue
                t = timed_pair({"jax": jax_calls[name], "torch": tfn}, args.runs)
                row = dict(case=label, dtype=dt, attn=attn, tokens=tokens, **t)
                result["rows"].append(row)
                print(fmt_row(row), flush=True)
        hf.set_attn_implementation("sdpa")
        del model, state, vstate, compiled
    tmp.cleanup()
    result["load_end"] = load_average()
    return result


def fmt_row(r: dict) -> str:
    j, t = r["jax"]["median"], r["torch"]["median"]
    ratio_min = r["torch"]["min"] / r["jax"]["min"]
    return (f"| {r['case']} | {r['dtype']} | {r['attn']} | {r['tokens']} | {j * 1e3:.1f} | {t * 1e3:.1f} | "
            f"{r['tokens'] / j:,.0f} | {r['tokens'] / t:,.0f} | **{t / j:.2f}x** | {ratio_min:.2f}x |")


def table(result: dict) -> str:
    head = ("| case | dtype | HF attention | tokens | JAX ms (median) | torch ms (median) | JAX tok/s | "
            "torch tok/s | JAX/torch throughput | same, from min times |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    return "\n".join([head] + [fmt_row(r) for r in result["rows"]])


def extras(result: dict) -> str:
    lines = []
    for dt, c in result.get("compile_s", {}).items():
        lines.append(f"- JAX compile time ({dt}): full prefill {c['full']:.1f} s, last-position prefill "
                     f"{c['last']:.1f} s, vision tower {c['vision']:.1f} s (lower + compile, each from scratch)")
    for dt, d in result.get("diffs", {}).items():
        lines.append(f"- Equal-work check ({dt}, sdpa): max |logit diff| all positions {d['full']:.2e}, last "
                     f"position {d['last']:.2e} (max |logit| {d['max_logit']:.2f}); merged vision features "
                     f"{d['vision']:.2e}")
    if "our_host_s" in result:
        lines.append(f"- Host-side input prep, not in the timings: ours `build_inputs` {result['our_host_s'] * 1e3:.1f} ms, "
                     f"HF `get_rope_index` {result['hf_host_s'] * 1e3:.1f} ms")
    lines.append(f"- Load average (1/5/15 min) at start: {result.get('load_start', 'n/a')}, at end: "
                 f"{result.get('load_end', 'n/a')} (the machine may be shared; JAX and torch calls are "
                 "interleaved so both see the same background load)")
    lines.extend(f"- {n}" for n in result.get("notes", []))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ GPU benchmark
def run_gpu_7b(args) -> dict:
    """Text-only 7B-shaped prefill in bf16 with random weights; model TFLOP/s vs a measured matmul peak."""
    backend = jax.default_backend()
    if backend == "cpu" and not args.allow_cpu:
        raise SystemExit("--gpu-7b needs an accelerator (jax.default_backend() is 'cpu'); "
                         "pass --allow-cpu with small --gpu-layers/--gpu-tokens for a smoke test")
    base = ModelConfig()
    text_cfg = base.text if args.gpu_layers is None else TextConfig(num_hidden_layers=args.gpu_layers)
    cfg = base.replace(text=text_cfg)
    t, length = cfg.text, args.gpu_tokens
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({backend}); 7B-shaped decoder with {t.num_hidden_layers} layers, "
          f"{length} tokens", flush=True)

    t0 = time.perf_counter()
    model = nnx.jit(lambda: Qwen25VL(cfg, dtype="bfloat16", rngs=nnx.Rngs(0)))()
    graphdef, state = nnx.split(model)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 150000, (1, length), dtype=np.int32)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), (3, 1, length)).copy()  # text-only M-RoPE
    text = TextInputs(jnp.asarray(ids), jnp.asarray(pos), jnp.ones((1, length), jnp.int32),
                      jnp.full((1, length), -1, jnp.int32))

    def last(state, text):
        m = nnx.merge(graphdef, state)
        return m.text.logits(m(text)[:, -1:], jnp.bfloat16)

    def full(state, text):
        m = nnx.merge(graphdef, state)
        return m.text.logits(m(text), jnp.bfloat16)

    d, f, h, kv, hd, v, n = (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads,
                             t.head_dim, t.vocab_size, t.num_hidden_layers)
    layer_params = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f  # q, k, v, o, gate, up, down
    # Model FLOPs (forward): 2 * matmul params * tokens, plus causal attention: QK^T and PV are
    # 2 * L^2 * H * hd each for the full square, half of it under the causal mask -> 2 * L^2 * D per layer.
    dense_flops = 2 * n * layer_params * length
    attn_causal = 2 * n * length**2 * h * hd
    attn_square = 2 * attn_causal  # what a kernel that does not skip masked blocks executes
    head_last, head_all = 2 * d * v, 2 * d * v * length
    out = {"device": f"{device.device_kind} ({backend})", "layers": n, "tokens": length, "init_s": init_s,
           "layer_params": layer_params, "rows": []}

    for name, fn, head in (("last-position logits", last, head_last), ("logits at all positions", full, head_all)):
        t0 = time.perf_counter()
        exe = jax.jit(fn).lower(state, text).compile()
        comp = time.perf_counter() - t0
        tm = timed(lambda exe=exe: jax.block_until_ready(exe(state, text)), args.runs)
        model_flops = dense_flops + attn_causal + head
        out["rows"].append({"case": name, "compile_s": comp, "time": tm, "model_flops": model_flops,
                            "hw_flops": dense_flops + attn_square + head})
        print(f"{name}: {tm['median'] * 1e3:.1f} ms, {model_flops / tm['median'] / 1e12:.1f} model TFLOP/s "
              f"(compile {comp:.1f}s)", flush=True)

    size = args.peak_size
    a = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (size, size), jnp.bfloat16)
    mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    tm = timed(lambda: jax.block_until_ready(mm(a, b)), max(args.runs, 10), warmup=2)
    out["peak"] = {"size": size, "time": tm, "tflops": 2 * size**3 / tm["min"] / 1e12}
    print(f"bf16 matmul {size}^3: {out['peak']['tflops']:.1f} TFLOP/s (best of {tm['runs']})", flush=True)
    return out


def gpu_table(g: dict) -> str:
    peak = g["peak"]["tflops"]
    lines = [f"Device: {g['device']}; {g['layers']} layers, {g['tokens']} tokens, bf16, random weights. "
             f"Measured bf16 matmul peak ({g['peak']['size']}^3 jnp.dot, best of {g['peak']['time']['runs']}): "
             f"{peak:.1f} TFLOP/s.", "",
             "| case | median ms | tok/s | model TFLOP | model TFLOP/s | % of measured peak | executed TFLOP/s "
             "(full attention square) | compile s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in g["rows"]:
        s = r["time"]["median"]
        lines.append(f"| {r['case']} | {s * 1e3:.1f} | {g['tokens'] / s:,.0f} | {r['model_flops'] / 1e12:.2f} | "
                     f"{r['model_flops'] / s / 1e12:.1f} | {100 * r['model_flops'] / s / 1e12 / peak:.1f}% | "
                     f"{r['hw_flops'] / s / 1e12:.1f} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- results
def config_text() -> str:
    t, v = TEXT, VISION
    return (f"text: {t['num_hidden_layers']} layers, hidden {t['hidden_size']}, vocab {t['vocab_size']} (untied head), "
            f"{t['num_attention_heads']} heads / {t['num_key_value_heads']} kv heads (head_dim "
            f"{t['hidden_size'] // t['num_attention_heads']}), mrope_section {t['mrope_section']}, intermediate "
            f"{t['intermediate_size']}; vision: depth {v['depth']} (full attention at {v['fullatt_block_indexes']}), "
            f"hidden {v['hidden_size']}, {v['num_heads']} heads, intermediate {v['intermediate_size']}, out "
            f"{v['out_hidden_size']}, patch {v['patch_size']}, merge {v['spatial_merge_size']}, window {v['window_size']}")


def results_section(result: dict, cmd: str, info: dict, vers: dict, date: str) -> str:
    vtxt = ", ".join(f"{k} {v}" for k, v in vers.items())
    return "\n".join([
        BEGIN,
        "## CPU: prefill throughput, JAX vs transformers (`bench/forward.py`)",
        "",
        f"- Date: {date}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM (ISA: {info['isa']})",
        f"- Versions: {vtxt}, Python {platform.python_version()}",
        f"- Config: {config_text()}",
        f"- Input: one 448x448 image (grid {result['grid']}, {result['n_patches']} patches -> {result['n_img']} "
        f"image tokens) in a chat prompt with {result['seq_len'] - result['n_img']} text tokens: "
        f"{result['seq_len']} tokens in all, batch 1, no padding on either side",
        "- Method: median of N timed calls after warm-up (JAX: AOT-compiled `jax.jit`, `block_until_ready`; "
        "torch: `inference_mode`, `set_num_threads(os.cpu_count())`, `use_cache=False`, precomputed "
        "`position_ids`). tok/s = tokens / median time (vision rows count patches). "
        "JAX/torch throughput > 1 means JAX is faster. JAX logits are produced in the model dtype "
        "(fp32 accumulation), as HF's are.",
        f"- Reproduce: `{cmd}`",
        "",
        table(result),
        "",
        extras(result),
        END,
    ])


def gpu_section(g: dict | None, cmd: str | None = None, date: str | None = None) -> str:
    body = [GPU_BEGIN, "## GPU: 7B-shaped 8K-token prefill (`bench/forward.py --gpu-7b`)", ""]
    if g is None:
        body += [
            "**Not run: no GPU was lent to this issue**, so there is no GPU number here. The mode exists and "
            "was only smoke-tested on CPU with a 1-layer, 256-token override. On a GPU machine run "
            "`python bench/forward.py --gpu-7b --write-results`.",
            "",
            "What it does: builds `Qwen25VL(ModelConfig(), dtype=\"bfloat16\")` (7B defaults: 28 layers, hidden "
            "3584, 28/4 heads, intermediate 18944, vocab 152064) with random weights directly in JAX, runs a "
            "text-only 8,192-token prefill (last-position logits, and logits at all positions), and a "
            "`jnp.dot` bf16 matmul (8192^3, fp32 accumulation) for the measured peak.",
            "",
            "FLOP formula (forward, per sequence of L tokens, D = hidden, n = layers): "
            "`2 * L * n * P_layer + 2 * n * L^2 * D + 2 * D * V * L_head`, with "
            "`P_layer = D*H*hd + 2*D*KV*hd + H*hd*D + 3*D*F` (q, k, v, o, gate, up, down), the causal attention "
            "term counting half of the `4 * L^2 * D` QK^T+PV square, and `L_head` = 1 (last-position) or L. "
            "The table also gives TFLOP/s counting the full attention square, which is what our masked "
            "(non-block-skipping) attention executes.",
        ]
    else:
        body += [f"- Date: {date}", f"- Reproduce: `{cmd}`", "", gpu_table(g)]
    body.append(GPU_END)
    return "\n".join(body)


def replace_section(text: str, begin: str, end: str, section: str) -> str:
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        return pre + section + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + section + "\n"


def read_results() -> str:
    if not os.path.exists(RESULTS):
        return ""
    with open(RESULTS) as f:
        return f.read()


def write_results(sections: list[tuple[str, str, str]]) -> None:
    text = read_results() or "# Benchmark results\n"
    for begin, end, section in sections:
        text = replace_section(text, begin, end, section)
    with open(RESULTS, "w") as f:
        f.write(text.rstrip() + "\n")
    print(f"wrote {RESULTS}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--text-tokens", type=int, default=256, help="pad the prompt to at least this many text tokens")
    p.add_argument("--no-eager", action="store_true", help="skip the HF eager-attention rows (fp32)")
    p.add_argument("--write-results", action="store_true", help=f"update the section in {os.path.relpath(RESULTS)}")
    g = p.add_argument_group("GPU mode (never run by default)")
    g.add_argument("--gpu-7b", action="store_true", help="7B-shaped text-only bf16 prefill on an accelerator")
    g.add_argument("--gpu-tokens", type=int, default=8192)
    g.add_argument("--gpu-layers", type=int, default=None, help="override the 28 decoder layers (smoke tests)")
    g.add_argument("--peak-size", type=int, default=8192, help="square matmul size for the measured peak")
    g.add_argument("--allow-cpu", action="store_true", help="let --gpu-7b run on the CPU backend (smoke test)")
    args = p.parse_args(argv)

    cmd = "python bench/forward.py " + " ".join(sys.argv[1:] if argv is None else argv)
    date, info, vers = utc_date(), machine_info(), versions()
    if args.gpu_7b:
        out = run_gpu_7b(args)
        print(gpu_table(out))
        if args.write_results:
            write_results([(GPU_BEGIN, GPU_END, gpu_section(out, cmd.strip(), date))])
        return

    print(f"{date} | {info['cpu']}, {info['cores']} cores, {info['ram']} | "
          + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    result = run_cpu(args)
    print()
    print(table(result))
    print(extras(result))
    if args.write_results:
        sections = [(BEGIN, END, results_section(result, cmd.strip(), info, vers, date))]
        if GPU_BEGIN not in read_results():
            sections.append((GPU_BEGIN, GPU_END, gpu_section(None)))
        write_results(sections)


if __name__ == "__main__":
    main()
