"""`mini-o3 <command>`: the project's command line.

  init     write a random-weight Qwen2.5-VL checkpoint of a config (HF layout)
  convert  HF checkpoint directory -> Orbax checkpoint (+ tokenizer/processor files)
  export   any checkpoint -> HF directory loadable by transformers / vLLM
  run      one image + question through the model; print the most likely next tokens
  infer    image + question -> multi-turn visual search with zooms; streams turns, writes report.html
  sft      cold-start SFT (configs/sft_coldstart.py); --config.key=value overrides any field
  rl       GRPO with over-turn masking (configs/rl_grpo.py); resumes from its out_dir
  data     prepare a downloaded benchmark as a TFDS dataset; write synthetic puzzles
  eval     Avg@K over benchmarks (configs/eval.py): metrics.json, results.md, turn curve, HTML; resumes
  demo     the main job: the whole recipe at toy scale on a CPU (configs/demo.py), report with plots
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mini_o3_jax.errors import MiniO3Error


def _mesh(spec: str | None):
    """`fsdp=-1,tensor=2` -> Mesh; None -> no sharding."""
    if not spec:
        return None
    from mini_o3_jax.parallel.mesh import make_mesh

    shape = {}
    for part in spec.split(","):
        k, v = part.split("=")
        shape[k.strip()] = int(v)
    return make_mesh(shape)


def cmd_init(args) -> None:
    from flax import nnx

    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.model.config import ModelConfig
    from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
    from mini_o3_jax.model.weights import save_hf

    cfg = load_config(args.config, args.override)
    model = Qwen25VL(ModelConfig.from_config_dict(cfg.model), dtype=args.dtype or cfg.dtype, rngs=nnx.Rngs(args.seed))
    save_hf(model, args.out, dtype=args.dtype or cfg.dtype, side_files_from=args.tokenizer)
    print(f"wrote random-weight checkpoint to {args.out}")


def cmd_convert(args) -> None:
    from mini_o3_jax.model.weights import load_hf, save_orbax

    t0 = time.time()
    model = load_hf(args.hf, dtype=args.dtype, mesh=_mesh(args.mesh))
    t1 = time.time()
    save_orbax(model, args.out, side_files_from=args.hf)
    print(f"loaded {args.hf} in {t1 - t0:.1f}s, wrote Orbax checkpoint {args.out} in {time.time() - t1:.1f}s")


def cmd_export(args) -> None:
    from tqdm import tqdm

    from mini_o3_jax.model.weights import hf_tensors, load_model, save_hf

    model = load_model(args.model)
    n = sum(1 for _ in hf_tensors(model))
    with tqdm(total=n, desc="export", unit="tensor") as bar:
        save_hf(model, args.out, dtype=args.dtype, max_shard_bytes=int(args.shard_gb * 1024**3),
                side_files_from=args.model, progress=lambda _: bar.update())
    print(f"wrote HF checkpoint {args.out}")


def cmd_run(args) -> None:
    from mini_o3_jax.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model, dtype=args.dtype, mesh=_mesh(args.mesh), mini_o3_resize=not args.no_resize)
    t0 = time.time()
    top = pipe.top_next_tokens(args.image, args.question, k=args.top_k)
    print(f"next-token distribution ({time.time() - t0:.2f}s incl. compile):")
    for tok, p in top:
        print(f"  {p:8.4f}  {tok!r}")


def cmd_infer(args) -> None:
    from tqdm import tqdm

    from mini_o3_jax.infer import DEMO_MODEL, infer, sample_puzzle

    model, image, question = args.model, args.image, args.question
    if image is None:  # the packaged sample: a toy puzzle, for the packaged toy model
        puzzle = sample_puzzle()
        os.makedirs(args.out, exist_ok=True)
        image = os.path.join(args.out, "sample.png")
        puzzle.image.save(image)
        question = question or puzzle.question
        print(f"sample puzzle ({puzzle.level}, {image}): {question}  truth: {puzzle.answer}")
    elif question is None:
        raise SystemExit(f"mini-o3 infer: --image {image} needs --question (what to ask about the image)")
    if model is None:
        model = DEMO_MODEL
        print(f"model: the packaged toy demo model ({model}; docs/demo.md)")
    bar = tqdm(desc="turns", unit="turn")

    def on_turn(sample: int, step) -> None:
        t = step.turn
        bar.update()
        detail = t.error or (f"box {list(t.box)} on {t.source}" if t.box is not None else "")
        tqdm.write(f"[sample {sample}] {t.outcome}{': ' + detail if detail else ''}\n{t.text}\n")

    trajs = infer(model, image, question, max_turns=args.max_turns, samples=args.samples,
                  temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                  max_context=args.max_context, max_turn_tokens=args.max_turn_tokens, dtype=args.dtype,
                  out_dir=args.out, on_turn=on_turn)
    bar.close()
    for s, t in enumerate(trajs):
        flags = [f for f in ("over_turn", "over_length", "void") if getattr(t, f)]
        print(f"sample {s}: answer {t.answer!r} after {t.num_turns} turn(s)" + (f" [{', '.join(flags)}]" if flags else ""))
    print(f"report: {os.path.join(args.out, 'report.html')}")


def _config(args):
    from mini_o3_jax.config_files import load_config

    overrides = []
    for extra in args.overrides:
        if not extra.startswith("--config."):
            raise MiniO3Error(f"unknown argument {extra!r}; expected --config.<field>=<value>")
        overrides.append(extra[len("--config."):])
    return load_config(args.config, overrides)


def _train_parts(args):
    """Config with `--config.key=value` overrides, multi-host init, tokenizer and image processor."""
    from mini_o3_jax.parallel.distributed import initialize
    from mini_o3_jax.processing.chat import Tokenizer
    from mini_o3_jax.processing.image import ImageProcessor

    cfg = _config(args)
    initialize()
    tok_dir = cfg.get("tokenizer_path") or cfg.get("model_path")
    if not tok_dir:
        raise MiniO3Error(f"{args.config}: set model_path (a checkpoint) or tokenizer_path (tokenizer files)")
    proc_dir = cfg.get("model_path") or tok_dir
    has_proc = os.path.exists(os.path.join(proc_dir, "preprocessor_config.json"))
    processor = ImageProcessor.from_pretrained(proc_dir) if has_proc else ImageProcessor()
    return cfg, Tokenizer.from_pretrained(tok_dir), processor, tok_dir


def cmd_sft(args) -> None:
    from mini_o3_jax.sft.loop import sft_from_file

    cfg, tok, proc, side = _train_parts(args)
    metrics = sft_from_file(cfg, tok, proc, side_files_from=side)
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))


def cmd_rl(args) -> None:
    from mini_o3_jax.rl.data import DatasetPrompts, read_prompts
    from mini_o3_jax.rl.loop import run_rl

    cfg, tok, proc, side = _train_parts(args)
    if cfg.data.get("sets"):  # prepared registry sets, e.g. visualprobe_train,deepeyes_train_4k
        prompts = DatasetPrompts([n.strip() for n in cfg.data.sets.split(",") if n.strip()], cfg.data.tfds_dir)
    else:
        prompts = read_prompts(cfg.data.path, cfg.data.get("image_root") or None)
    metrics = run_rl(cfg, prompts, tok, proc, side_files_from=side)
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))


def cmd_eval(args) -> None:
    from mini_o3_jax.data import loader
    from mini_o3_jax.eval.run import EvalConfig, run_eval
    from mini_o3_jax.model.weights import load_model
    from mini_o3_jax.processing.chat import Tokenizer
    from mini_o3_jax.processing.image import ImageProcessor
    from mini_o3_jax.rl.rewards import JudgeConfig

    cfg = _config(args)
    if not cfg.model_path:
        raise MiniO3Error(f"{args.config}: set --config.model_path to a checkpoint directory")
    try:
        ecfg = EvalConfig.from_config(cfg.eval)
    except MiniO3Error as e:
        raise MiniO3Error(f"{args.config}: {e}") from None
    names = [b.strip() for b in str(cfg.benchmarks).split(",") if b.strip()]
    benchmarks, bad = {}, {}
    for name in names:
        source = cfg.sources.get(name) or None
        if source:
            print(loader.prepare(name, source, cfg.data_dir, image_root=cfg.image_root or None).summary())
        benchmarks[name] = loader.load(name, cfg.data_dir)  # lazy: images are read as episodes start
        bad[name] = loader.bad_records(name, cfg.data_dir)
        if bad[name]:
            print(f"{name}: {len(bad[name])} bad record(s) left out, e.g. {bad[name][0]}", file=sys.stderr)
    model = load_model(cfg.model_path, dtype=cfg.dtype or None)
    tok, proc = Tokenizer.from_pretrained(cfg.model_path), ImageProcessor.from_pretrained(cfg.model_path)
    judge = JudgeConfig.from_env(**dict(cfg.judge)) if ecfg.scorer == "judge" else None
    label = cfg.label or os.path.basename(os.path.normpath(cfg.model_path))
    run_eval(model, tok, proc, benchmarks, ecfg, cfg.out_dir, judge=judge, bad_records=bad, label=label)


def cmd_data(args) -> None:
    if args.action == "prepare":
        from mini_o3_jax.data import loader

        report = loader.prepare(args.benchmark, args.source, args.data_dir, image_root=args.image_root,
                                strict=args.strict)
        print(f"{args.benchmark}: {report.num_records} records in {report.path}; {len(report.bad)} bad")
        for bad in report.bad[:20]:
            print(f"  {bad}")
    else:
        from mini_o3_jax.data import synthetic

        for path in synthetic.write_all(args.out, n=args.n, seed=args.seed, preset=args.preset):
            print(f"wrote {path}")


def cmd_demo(args) -> None:
    from mini_o3_jax.recipe import run_recipe

    cfg = _config(args)
    if args.out:
        cfg.out_dir = args.out
    if args.ablation:
        cfg.ablation = True
    summary = run_recipe(cfg)
    print(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-o3", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="random-weight checkpoint of a config, in HF layout")
    s.add_argument("--config", required=True, help="configs/*.py file with get_config()")
    s.add_argument("--override", action="append", default=[], help="key=value, e.g. model.text.num_hidden_layers=4")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    s.add_argument("--tokenizer", default=None, help="directory whose tokenizer files to copy")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("convert", help="HF checkpoint -> Orbax")
    s.add_argument("--hf", required=True, help="HF Qwen2.5-VL directory (config.json + safetensors)")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: the checkpoint's")
    s.add_argument("--mesh", default=None, help="e.g. fsdp=-1,tensor=2 (load sharded over local devices)")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("export", help="any checkpoint -> HF directory (transformers / vLLM)")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    s.add_argument("--shard-gb", type=float, default=4.0)
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("run", help="image + question -> next-token distribution")
    s.add_argument("--model", required=True)
    s.add_argument("--image", required=True)
    s.add_argument("--question", required=True)
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    s.add_argument("--mesh", default=None)
    s.add_argument("--no-resize", action="store_true", help="skip Mini-o3's 40k..2M pixel pre-resize")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("infer", help="image + question -> multi-turn visual search with zooms, HTML report")
    s.add_argument("--model", default=None, help="HF or Orbax checkpoint dir (e.g. a converted Mini-o3-7B); "
                   "default: the packaged toy demo model (4 MB, trained by `mini-o3 demo`)")
    s.add_argument("--image", default=None, help="default: a sample toy puzzle (written to --out)")
    s.add_argument("--question", default=None, help="required with --image; default: the sample's question")
    s.add_argument("--max-turns", type=int, default=None,
                   help="default 12 (the released eval; the model scales to 32+) or the checkpoint's agent.json")
    s.add_argument("--samples", type=int, default=1)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-context", type=int, default=None, help="default 32768 or the checkpoint's agent.json")
    s.add_argument("--max-turn-tokens", type=int, default=None, help="default 8192 or the checkpoint's agent.json")
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    s.add_argument("--out", default="runs/infer", help="directory for report.html and its images")
    s.set_defaults(fn=cmd_infer)

    for name, fn, default, what in (("sft", cmd_sft, "configs/sft_coldstart.py", "cold-start SFT"),
                                    ("rl", cmd_rl, "configs/rl_grpo.py", "GRPO with over-turn masking")):
        s = sub.add_parser(name, help=f"{what}; --config.key=value overrides (e.g. --config.model_path=DIR)")
        s.add_argument("--config", default=default, help=f"ml-collections file (default {default})")
        s.set_defaults(fn=fn, overrides=[])

    s = sub.add_parser("eval", help="Avg@K over benchmarks; --config.key=value overrides (configs/eval.py)")
    s.add_argument("--config", default="configs/eval.py", help="ml-collections file (default configs/eval.py)")
    s.set_defaults(fn=cmd_eval, overrides=[])

    s = sub.add_parser("data", help="prepare a downloaded benchmark (TFDS) or write synthetic puzzles")
    dsub = s.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("prepare", help="read a downloaded benchmark folder, validate, write a TFDS dataset")
    d.add_argument("--benchmark", required=True, help="registry name, e.g. vstar, visualprobe_hard, hrbench_4k")
    d.add_argument("--source", required=True, help="the folder downloaded from the Hugging Face hub")
    d.add_argument("--data-dir", default="data/tfds")
    d.add_argument("--image-root", default=None, help="$BASE_IMAGE_DIR for relative image paths")
    d.add_argument("--strict", action="store_true", help="write nothing and fail, listing every bad record")
    d = dsub.add_parser("synthetic", help="synthetic VisualProbe-style benchmarks and cold-start trajectories")
    d.add_argument("--out", default="data/synthetic")
    d.add_argument("--n", type=int, default=100, help="questions per level")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--preset", default="default", choices=["default", "tiny", "demo", "grid4", "toy"])
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("demo", help="the whole recipe at toy scale on a CPU: synthetic data, baseline, SFT, "
                                    "RL with over-turn masking, evaluation, report (configs/demo.py)")
    s.add_argument("--config", default="configs/demo.py", help="ml-collections file (default configs/demo.py)")
    s.add_argument("--out", default=None, help="run directory (default: the config's out_dir, runs/demo)")
    s.add_argument("--ablation", action="store_true", help="also train RL without over-turn masking, compare")
    s.set_defaults(fn=cmd_demo, overrides=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command not in ("sft", "rl", "eval", "demo"):
        build_parser().parse_args(argv)  # reports the unknown arguments the usual way
    args.overrides = extra
    try:
        args.fn(args)
    except MiniO3Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
