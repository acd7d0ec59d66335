"""One GPU check, sized to finish within 8 minutes on one H200: what the hardware does, then what our
training step does on it.

1. bf16 matmul peak: an 8192^3 matmul, median of 20 (the denominator of every MFU below, measured, not
   the datasheet's);
2. copy bandwidth: a 4 GiB bf16 array read and written (2 x bytes / time);
3. one gradient micro-batch of the real trainer (`Trainer.grads`, bf16 compute on fp32 masters) at
   Qwen2.5-VL-7B widths with fewer layers (`--layers`, default 4 decoder layers and 8 ViT blocks, two of
   them full attention), one 32,768-token row holding a ~2-Mpx image, cuDNN attention (the "auto" backend
   on GPU): time, model TFLOP/s and MFU against (1), peak device memory, and whether cuDNN's fused
   attention is in the compiled program.

4. rollout decode (`--mode rollout`, or `all`): Qwen2.5-VL-7B (all 28 layers, bf16), 64 slots x 4K cached
   tokens in the paged KV cache, `decode_chunk` tokens per call through the engine's jitted `decode`: the
   Pallas paged attention kernel (GPU default) and the XLA gather path; tokens/s and the HBM bytes each step
   must read (the weights once + every slot's filled KV pages) over its time, against the copy bandwidth (2).

    PYTHONPATH=. python bench/gpu.py [--mode train|rollout|all] [--layers 4] [--length 32768] [--write-results]

Run it where a GPU is lent (the device has jax with CUDA, flax, optax, orbax); `--write-results` records
the figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def timed(fn, *args, runs: int = 5, warm: int = 2) -> float:
    for _ in range(warm):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(n: int = 8192) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / timed(f, a, b, runs=20)


def copy_bandwidth(gib: int = 4) -> float:
    x = jnp.ones((max(gib, 1) * (1 << 30) // 2,), jnp.bfloat16)
    f = jax.jit(lambda x: x + jnp.bfloat16(1))
    return 2 * x.nbytes / timed(f, x, runs=10)


def train_micro_batch(layers: int, length: int, preset: str = "qwen2_5_vl_7b") -> dict:
    import optax
    from flax import nnx

    from mini_o3_jax.model.presets import model_config
    from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
    from mini_o3_jax.processing.image import smart_resize
    from mini_o3_jax.processing.inputs import build_inputs
    from mini_o3_jax.train.batch import TrainBatch
    from mini_o3_jax.train.plan import model_flops
    from mini_o3_jax.train.step import StepConfig, Trainer

    base = model_config(preset)
    cfg = dataclasses.replace(base, text=dataclasses.replace(base.text, num_hidden_layers=layers),
                              vision=dataclasses.replace(base.vision, depth=8, fullatt_block_indexes=(3, 7)))
    model = Qwen25VL(cfg, dtype="bfloat16", rngs=nnx.Rngs(0), remat="full")
    trainer = Trainer(model, optax.adamw(1e-6), StepConfig(loss="sft", trainable="all", logits_chunk=1024))
    h, w = smart_resize(1035, 1932)  # a ~2-Mpx original
    grid = np.array([[1, h // 14, w // 14]])
    n_img = int(grid[0, 1] * grid[0, 2] // 4)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 150000, length - 2).astype(np.int32)
    ids[10:10 + n_img] = cfg.image_token_id
    ids = np.concatenate([ids, [cfg.text.vocab_size - 1, 0]])[:length].astype(np.int32)
    pixels = rng.normal(size=(int(grid.prod()), cfg.vision.patch_dim)).astype(np.float32)
    inputs = build_inputs([ids], [pixels], [grid], cfg, length=length)
    ones = np.ones((1, length), np.float32) / length
    batch = TrainBatch(inputs.text, inputs.vision, np.roll(ids, -1)[None], ones * length, ones,
                       np.zeros((1,), np.float32), np.zeros_like(ones), np.zeros_like(ones))
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.grads([batch])[0])
    compile_s = time.perf_counter() - t0
    hlo = trainer._grad_fn.lower(trainer.params, trainer.frozen, trainer.put(batch)).compile().as_text()
    seconds = timed(lambda: trainer.grads([batch])[0], runs=3, warm=0)
    windows = inputs.vision.pixels.shape[0] // cfg.vision.window_patches
    flops = model_flops(cfg, 1, length, windows, "all")
    stats = jax.devices()[0].memory_stats() or {}
    return dict(layers=layers, length=length, seconds=seconds, compile_s=compile_s, flops=flops,
                peak_bytes=stats.get("peak_bytes_in_use"), capacity=stats.get("bytes_limit"),
                cudnn="cudnn" in hlo and "fmha" in hlo, image_tokens=n_img)


def rollout_decode(slots: int, context: int, steps: int, preset: str = "qwen2_5_vl_7b", page: int = 64,
                   backend: str = "auto") -> dict:
    """Decode `steps` tokens for `slots` slots holding `context` cached tokens each (paged)."""
    from flax import nnx

    from mini_o3_jax.model.attention_backends import attention_backend
    from mini_o3_jax.model.presets import model_config
    from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
    from mini_o3_jax.rollout.cache import init_paged_cache, page_bytes
    from mini_o3_jax.rollout.pages import PagePool
    from mini_o3_jax.rollout.sampler import Sampling, decode

    cfg = model_config(preset)
    model = Qwen25VL(cfg, dtype="bfloat16", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    per_slot = -(-(context + steps) // page)
    pool = PagePool(slots * per_slot + 1, page, slots, per_slot)
    for s in range(slots):
        pool.reserve(s, context + steps)
    cache = init_paged_cache(cfg.text, slots, pool.num_pages, page, per_slot, jnp.bfloat16)
    cache = cache._replace(length=jnp.full((slots,), context, jnp.int32), table=jnp.asarray(pool.table))
    keys = jax.random.split(jax.random.key(0), slots)
    sampling = Sampling(max_token_id=cfg.text.vocab_size - 1)
    kv_len = per_slot * page
    args = (jnp.zeros((slots,), jnp.int32), jnp.ones((slots,), bool), jnp.full((slots,), 10 ** 6, jnp.int32),
            jnp.asarray([-1], jnp.int32), keys)

    with attention_backend(backend):
        def run(cache):
            return decode(graphdef, state, cache, *args, sampling, steps, kv_len=kv_len)[0]

        t0 = time.perf_counter()
        cache = jax.block_until_ready(run(cache))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(3):
            cache = cache._replace(length=jnp.full((slots,), context, jnp.int32))
            t = time.perf_counter()
            cache = jax.block_until_ready(run(cache))
            times.append(time.perf_counter() - t)
    seconds = statistics.median(times) / steps
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    embed = cfg.text.vocab_size * cfg.text.hidden_size * 2 * (not cfg.text.tie_word_embeddings)  # gathered, not read
    vit = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model.visual)))
    weights = params - embed - vit
    kv = slots * (context + steps / 2) * page_bytes(cfg.text, 1, jnp.bfloat16)
    return dict(slots=slots, context=context, steps=steps, backend=backend, step_s=seconds, compile_s=compile_s,
                tokens_per_s=slots / seconds, weights_bytes=weights, kv_bytes=kv, bytes_per_s=(weights + kv) / seconds)


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--preset", default="qwen2_5_vl_7b", help="model widths (tiny: a CPU smoke run of the script)")
    ap.add_argument("--matmul", type=int, default=8192, help="matmul size for the peak")
    ap.add_argument("--copy-gib", type=int, default=4)
    ap.add_argument("--mode", choices=("train", "rollout", "all"), default="all")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--decode-chunk", type=int, default=32)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    device = jax.devices()[0]
    peak = matmul_peak(args.matmul)
    bw = copy_bandwidth(args.copy_gib)
    lines = [
        f"- Device: {device.device_kind} ({device.platform}), jax {jax.__version__}; date {time.strftime('%Y-%m-%d')}",
        f"- Measured bf16 matmul peak ({args.matmul}^3, median of 20): {peak / 1e12:.1f} TFLOP/s; copy bandwidth "
        f"({args.copy_gib} GiB read + write): {bw / 1e9:.0f} GB/s",
    ]
    if args.mode in ("rollout", "all"):
        from mini_o3_jax.model.attention_backends import attention_backend, paged_decode_enabled

        for backend in ("auto", "xla"):
            with attention_backend(backend):
                kind = "Pallas paged kernel" if paged_decode_enabled() else "XLA gather"
            if backend == "xla" and kind == "XLA gather" and lines[-1].find("XLA gather") > 0:
                break  # auto already was the XLA path (no GPU)
            d = rollout_decode(args.slots, args.context, args.decode_chunk, args.preset, backend=backend)
            lines.append(
                f"- Rollout decode, {args.preset} (all layers, bf16), {d['slots']} slots x {d['context']:,} cached tokens "
                f"(64-token pages), {d['steps']} tokens per call, attention {kind}: "
                f"{d['step_s'] * 1e3:.1f} ms per step, {d['tokens_per_s']:,.0f} tokens/s; reads "
                f"{d['weights_bytes'] / 1e9:.1f} GB of weights + {d['kv_bytes'] / 1e9:.1f} GB of KV per step = "
                f"{d['bytes_per_s'] / 1e9:.0f} GB/s, **{100 * d['bytes_per_s'] / bw:.0f} % of the copy bandwidth** "
                f"(compile {d['compile_s']:.0f} s)")
            print(lines[-1], flush=True)
    if args.mode == "rollout":
        return _report(args, lines)
    r = train_micro_batch(args.layers, args.length, args.preset)
    achieved = r["flops"] / r["seconds"]
    lines += [
        f"- {args.preset} widths, {r['layers']} decoder layers + 8 ViT blocks (2 full attention), one {r['length']:,}-token "
        f"row with a ~2-Mpx image ({r['image_tokens']} image tokens), bf16 on fp32 masters, remat full: "
        f"forward + backward {r['seconds'] * 1e3:.0f} ms (compile {r['compile_s']:.0f} s), "
        f"{achieved / 1e12:.0f} model TFLOP/s = **{100 * achieved / peak:.0f} % MFU** of the measured peak",
        f"- Peak device memory {_gib(r['peak_bytes'])} of {_gib(r['capacity'])}; cuDNN fused attention in the "
        f"program: {r['cudnn']}",
    ]
    _report(args, lines)


def _report(args, lines: list[str]) -> None:
    print("\n".join(lines))
    if args.write_results:
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        begin, end = "<!-- bench/gpu.py:begin -->", "<!-- bench/gpu.py:end -->"
        body = f"{begin}\n## GPU: hardware and one 7B-width 32K-token training micro-batch (`bench/gpu.py`)\n\n" \
               + "\n".join(lines) + f"\n{end}"
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if begin in text:
            text = text[:text.index(begin)] + body + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + body + "\n"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
