"""Rollout throughput of our engine against transformers `generate`, same CPU, same weights, one run.

Model: bench/forward.py's shape (8 layers, hidden 512, the real 152,064 vocab, 8-block ViT), random
weights shared by both sides. Prompt: the Mini-o3 first turn with one 448x448 image (543 tokens).

* **Decode / episode**: S samples of the prompt, N sampled tokens each (temperature 1). Ours: the
  engine with S slots (one shared prefill, decode in chunks on device). transformers: `generate`
  with the prompt batched S times, `min_new_tokens = max_new_tokens = N`. Decode tok/s excludes
  prefill on both sides (ours: time inside decode calls; HF: generate(N) - generate(1)).
* **Host share**: the engine's wall time outside device calls (environments, bookkeeping).
* **Shared prefill**: a group of 16 samples of one prompt: one prefill copied to 16 slots vs 16
  separate prefills.
* **Long context, paged vs dense vs transformers** (`--long 4096`): a group of 16 samples of a prompt
  of ~4K tokens (one large image), N tokens each: the paged engine (16-sample group sharing the
  prompt's pages), the same engine on dense rows (the prefill copied to 16 rows), and `generate` on the
  batch of 16 copies: whole-episode time, decode tokens/s and the KV memory each holds.

    python bench/rollout.py [--slots 8] [--tokens 128] [--long 4096] [--write-results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


from bench.forward import (  # noqa: E402
    bench_image,
    machine_info,
    random_hf_model,
    read_results,
    replace_section,
    utc_date,
    versions,
)

RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
BEGIN, END = "<!-- bench/rollout.py:cpu:begin -->", "<!-- bench/rollout.py:cpu:end -->"
LONG_BEGIN, LONG_END = "<!-- bench/rollout.py:long:begin -->", "<!-- bench/rollout.py:long:end -->"
QUESTION = "What is the price written on the board of the fruit stall closest to the camera?"


def median_time(fn, runs: int) -> float:
    fn()  # warm-up (compiles)
    return statistics.median(_timed(fn) for _ in range(runs))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--long", type=int, default=4096, help="prompt tokens of the long-context case (0: skip it)")
    p.add_argument("--long-tokens", type=int, default=64)
    p.add_argument("--skip-short", action="store_true", help="only the long-context case")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args(argv)

    import torch

    from mini_o3_jax.agent.environment import EnvConfig, VisualSearchEnv
    from mini_o3_jax.data.records import Record
    from mini_o3_jax.model.weights import load_hf
    from mini_o3_jax.processing.chat import Tokenizer
    from mini_o3_jax.processing.image import ImageProcessor
    from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
    from mini_o3_jax.rollout.sampler import Sampling
    from tests.hf_reference import qwen_tokenizer_dir

    torch.set_num_threads(os.cpu_count())
    date, info, vers = utc_date(), machine_info(), versions()
    print(f"{date} | {info['cpu']}, {info['cores']} cores | " + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    hf = random_hf_model()
    tmp = tempfile.TemporaryDirectory(prefix="bench_rollout_")
    hf.save_pretrained(tmp.name)
    model = load_hf(tmp.name, dtype="float32")
    tok, proc = Tokenizer.from_pretrained(qwen_tokenizer_dir()), ImageProcessor()
    image = bench_image()
    env_cfg = EnvConfig(max_turns=2, max_context=4096, context_guard=256)
    env = VisualSearchEnv(image, "<image>\n" + QUESTION, tok, proc, env_cfg)
    ids, pv, grid = env.prompt_ids, env.prompt_pixels.pixel_values, env.prompt_pixels.grid_thw
    s, n = args.slots, args.tokens
    sections = []
    if args.long:
        sections.append((LONG_BEGIN, LONG_END, long_context(args, model, hf, tok, proc, date, info, vers, argv)))
    if args.skip_short:
        return finish(args, sections, tmp)
    print(f"prompt {len(ids)} tokens, grid {grid.tolist()}; {s} samples x {n} tokens", flush=True)

    def engine(slots: int, tokens: int) -> RolloutEngine:
        cfg = EngineConfig(slots=slots, max_len=len(ids) + tokens + 64, decode_chunk=32, max_turn_tokens=tokens,
                           sampling=Sampling(temperature=1.0), env=env_cfg)
        return RolloutEngine(model, tok, proc, cfg)

    # ---- ours: S samples of one prompt
    eng = engine(s, n)
    questions = [Record(benchmark="", doc_id="", image=image, problem="<image>\n" + QUESTION, solution="",
                        data_source="")]
    walls, decodes, hosts, toks = [], [], [], []
    eng.run(questions, samples=s, seed=99)  # compile
    for r in range(args.runs):
        eng.run(questions, samples=s, seed=r)
        st = eng.stats
        walls.append(st.wall_s)
        decodes.append(st.decode_s)
        hosts.append(st.host_s / st.wall_s)
        toks.append(st.sampled_tokens)
    eng.close()
    ours_wall, ours_decode = statistics.median(walls), statistics.median(decodes)
    ours_tok = statistics.median(toks)  # tokens sampled inside decode calls (first tokens come from extend)

    # ---- transformers generate, same batch, same number of tokens
    gen = hf_generate(hf, ids, pv, grid, s)
    hf_full = median_time(lambda: gen(n), args.runs)
    hf_prefill = median_time(lambda: gen(1), args.runs)
    hf_decode = hf_full - hf_prefill

    # ---- shared prefill for a group
    g = args.group
    eng = engine(g, 8)
    eng.run(questions, samples=g, seed=0)
    shared = statistics.median(_timed(lambda r=r: eng.run(questions, samples=g, seed=r)) for r in range(args.runs))
    shared_extend = eng.stats.extend_s
    eng.run(questions * g, samples=1, seed=0)
    separate = statistics.median(_timed(lambda r=r: eng.run(questions * g, samples=1, seed=r)) for r in range(args.runs))
    separate_extend = eng.stats.extend_s
    eng.close()

    rows = [
        ("whole episode batch (prefill + decode), s", ours_wall, hf_full, hf_full / ours_wall),
        ("decode tokens/s", ours_tok / ours_decode, s * (n - 1) / hf_decode, (ours_tok / ours_decode) / (s * (n - 1) / hf_decode)),
    ]
    table = ["| measure | ours (JAX engine) | transformers generate | ours/HF (speed) |", "|---|---:|---:|---:|"]
    for name, a, b, ratio in rows:
        table.append(f"| {name} | {a:,.2f} | {b:,.2f} | **{ratio:.2f}x** |")
    lines = [
        BEGIN,
        "## CPU: rollout, JAX engine vs transformers generate (`bench/rollout.py`)",
        "",
        f"- Date: {date}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- Model: bench/forward.py's config, random fp32 weights shared by both; prompt {len(ids)} tokens "
        f"(one 448x448 image); {s} samples x {n} sampled tokens at temperature 1; median of {args.runs} runs "
        "after a compile/warm-up run.",
        f"- Reproduce: `python bench/rollout.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        *table,
        "",
        f"- Host share of the engine's wall time (environments, Python, bookkeeping): "
        f"{100 * statistics.median(hosts):.1f}% (target < 15%)",
        f"- Shared prefill, group of {g} (8 tokens each): one prefill shared by {g} slots (their prompt pages by reference) {shared:.2f} s "
        f"(prefill/extend time {shared_extend:.2f} s) vs {g} separate prefills {separate:.2f} s "
        f"({separate_extend:.2f} s): **{separate / shared:.2f}x** faster",
        "- Ours samples a turn's first token at the end of the prefill; decode tokens/s counts the tokens "
        "sampled inside decode calls over their time; HF's decode time is generate(N) - generate(1). "
        "The whole-episode row includes prefill: ours prefills the prompt once and shares its pages with the S "
        "slots, `generate` prefills the batch of S copies.",
        "- GPU (7B-shaped, 64 slots, 4K context, HBM roofline): not run, no GPU is lent to this task.",
        END,
    ]
    sections.append((BEGIN, END, "\n".join(lines)))
    finish(args, sections, tmp)


def hf_generate(hf, ids, pv, grid, batch: int):
    """`gen(k)`: transformers `generate` of exactly k tokens at temperature 1 for `batch` copies of the prompt."""
    import torch

    t_ids = torch.as_tensor(ids).long()[None].repeat(batch, 1)
    kw = dict(input_ids=t_ids, attention_mask=torch.ones_like(t_ids),
              pixel_values=torch.as_tensor(pv).repeat(batch, 1),
              image_grid_thw=torch.as_tensor(grid).long().repeat(batch, 1), mm_token_type_ids=(t_ids == 151655).long(),
              do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=None, pad_token_id=0)

    def gen(k: int):
        with torch.inference_mode():
            return hf.generate(**kw, max_new_tokens=k, min_new_tokens=k)

    return gen


def finish(args, sections, tmp) -> None:
    text = read_results() or "# Benchmark results\n"
    for begin, end, section in sections:
        print(section)
        text = replace_section(text, begin, end, section)
    if args.write_results:
        with open(RESULTS, "w") as f:
            f.write(text.rstrip() + "\n")
        print(f"wrote {RESULTS}")
    tmp.cleanup()


def long_context(args, model, hf, tok, proc, date, info, vers, argv) -> str:
    """16 samples of a ~`args.long`-token prompt: paged engine vs dense engine vs transformers generate."""

    from mini_o3_jax.agent.environment import EnvConfig, VisualSearchEnv
    from mini_o3_jax.data.records import Record
    from mini_o3_jax.rollout.cache import page_bytes
    from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
    from mini_o3_jax.rollout.sampler import Sampling

    side = 28 * max(1, round((args.long - 40) ** 0.5))  # one merged token per 28x28 pixels
    image = bench_image(side)
    env_cfg = EnvConfig(max_turns=1, max_context=args.long + 1024, context_guard=256, max_pixels=side * side + 1)
    env = VisualSearchEnv(image, "<image>\n" + QUESTION, tok, proc, env_cfg)
    ids, pv, grid = env.prompt_ids, env.prompt_pixels.pixel_values, env.prompt_pixels.grid_thw
    g, n, page = 16, args.long_tokens, 64
    max_len = -(-(len(ids) + n + 64) // page) * page
    print(f"long context: prompt {len(ids)} tokens (image {side}x{side}, grid {grid.tolist()}); {g} samples x {n} "
          f"tokens", flush=True)
    questions = [Record(benchmark="", doc_id="", image=image, problem="<image>\n" + QUESTION, solution="",
                        data_source="")]
    per_token = page_bytes(model.config.text, 1, model.dtype)
    results = {}
    for name, page_size in (("paged", page), ("dense", 0)):
        cfg = EngineConfig(slots=g, max_len=max_len, decode_chunk=32, max_turn_tokens=n, page_size=page_size,
                           sampling=Sampling(temperature=1.0), env=env_cfg)
        eng = RolloutEngine(model, tok, proc, cfg)
        eng.run(questions, samples=g, seed=99)  # compile
        runs = []
        for r in range(args.runs):
            eng.run(questions, samples=g, seed=r)
            st = eng.stats
            runs.append((st.wall_s, st.decode_s, st.sampled_tokens, st.peak_pages))
        eng.close()
        wall, dec, toks, peak = (statistics.median(x[i] for x in runs) for i in range(4))
        kv = peak * page * per_token if page_size else g * max_len * per_token
        results[name] = (wall, toks / dec, kv)
        print(f"  {name}: episode {wall:.2f} s, decode {toks / dec:.1f} tok/s, KV {kv / 2**20:.1f} MiB", flush=True)

    gen = hf_generate(hf, ids, pv, grid, g)
    # transformers runs eagerly (nothing to compile): timed once each, no warm-up (at 16 x 4K tokens a call takes
    # minutes on a laptop CPU)
    hf_full = _timed(lambda: gen(n))
    hf_decode = hf_full - _timed(lambda: gen(1))
    hf_kv = g * (len(ids) + n) * per_token
    results["transformers generate"] = (hf_full, g * (n - 1) / hf_decode, hf_kv)
    print(f"  transformers: episode {hf_full:.2f} s, decode {g * (n - 1) / hf_decode:.1f} tok/s", flush=True)

    paged = results["paged"]
    table = ["| engine | whole episode, s | decode tokens/s | KV cache held, MiB | paged speed-up (episode / decode) |",
             "|---|---:|---:|---:|---:|"]
    for name, (wall, rate, kv) in results.items():
        table.append(f"| {name} | {wall:,.2f} | {rate:,.1f} | {kv / 2**20:,.1f} | "
                     f"**{wall / paged[0]:.2f}x** / **{paged[1] / rate:.2f}x** |")
    return "\n".join([
        LONG_BEGIN,
        "## CPU: long-context rollout, paged vs dense engine vs transformers (`bench/rollout.py --long`)",
        "",
        f"- Date: {date}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- Case: one GRPO group, {g} samples of a {len(ids)}-token prompt (one {side}x{side} image), {n} sampled "
        f"tokens each at temperature 1; bench/forward.py's model (random fp32 weights shared by all three); ours: "
        f"median of {args.runs} runs after a compile/warm-up run; transformers: one run each of generate(N) and "
        f"generate(1). Paged: {page}-token pages; dense: {max_len}-token rows.",
        f"- Reproduce: `python bench/rollout.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        *table,
        "",
        "- KV held: paged = the most pages in use at once (the prompt's pages once for the group, plus each "
        "sample's own); dense = a row per slot; transformers = the batch's 16 copies of the prompt plus the new "
        "tokens. Random weights never call the zoom tool, so each episode is one turn: the image turns of a trained "
        "model (extends batched across slots, crops through one ViT call) are not in this figure.",
        LONG_END,
    ])


if __name__ == "__main__":
    main()
