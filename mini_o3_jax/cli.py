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
import functools
import json
import os
import sys
import time

from mini_o3_jax.errors import ConfigError, MiniO3Error


class UsageError(MiniO3Error):
    """A command line argparse rejects (unknown option, missing or bad value): one line, exit code 2."""


def _path(text: str) -> str:
    """Type of every path option: `~` is expanded here, once (the shell leaves `--out=~/x` alone)."""
    return os.path.expanduser(text)


def _mesh(spec: str | None):
    """`fsdp=-1,tensor=2` -> Mesh; None -> no sharding."""
    if not spec:
        return None
    from mini_o3_jax.parallel.mesh import make_mesh

    shape = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        try:
            shape[k.strip()] = int(v)
        except ValueError:
            raise UsageError(f"--mesh {spec}: expected axis=size pairs, e.g. fsdp=-1,tensor=2") from None
    return make_mesh(shape)


def cmd_init(args) -> None:
    from flax import nnx

    from mini_o3_jax.model.config import ModelConfig
    from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
    from mini_o3_jax.model.weights import save_hf

    cfg = _init_config(args)
    if not args.out:
        raise UsageError("mini-o3 init: --out DIR is required (where to write the checkpoint)")
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
    import jax.numpy as jnp
    from tqdm import tqdm

    from mini_o3_jax.model.weights import hf_tensors, load_model, save_hf

    model = load_model(args.model)  # in the checkpoint's own dtype
    own = jnp.dtype(model.dtype).name
    dtype = args.dtype or own
    if dtype == own:
        print(f"writing {dtype} (the checkpoint's dtype)", flush=True)
    else:
        print(f"casting {own} -> {dtype} as asked (--dtype {dtype})", flush=True)
    n = sum(1 for _ in hf_tensors(model))
    with tqdm(total=n, desc="export", unit="tensor") as bar:
        save_hf(model, args.out, dtype=dtype, max_shard_bytes=int(args.shard_gb * 1024**3),
                side_files_from=args.model, progress=lambda _: bar.update())
    print(f"wrote HF checkpoint {args.out} ({dtype})")


def cmd_run(args) -> None:
    from mini_o3_jax.pipeline import Pipeline, format_next_tokens

    if args.top_k < 1:
        raise MiniO3Error(f"--top-k {args.top_k}: expected at least 1 token to show")
    pipe = Pipeline.from_pretrained(args.model, dtype=args.dtype, mesh=_mesh(args.mesh), mini_o3_resize=not args.no_resize)
    t0 = time.time()
    top = pipe.top_next_token_ids(args.image, args.question, k=args.top_k)
    print(f"next-token distribution ({time.time() - t0:.2f}s incl. compile), top {len(top)}:")
    for line in format_next_tokens(top, vocab_size=pipe.model.config.text.vocab_size):
        print(line)


def cmd_infer(args) -> None:
    from tqdm import tqdm

    from mini_o3_jax.infer import DEMO_MODEL, infer, sample_puzzle, toy_model_warning

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
    warning = toy_model_warning(model, image)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    bar = tqdm(desc="turns", unit="turn")

    def on_turn(sample: int, step) -> None:
        t = step.turn
        bar.update()
        detail = t.error or (f"box {list(t.box)} on {t.source}" if t.box is not None else "")
        tqdm.write(f"[sample {sample}] {t.outcome}{': ' + detail if detail else ''}\n{t.text}\n")

    try:  # the bar is closed on failure too, so it does not print after the error line
        trajs = infer(model, image, question, max_turns=args.max_turns, samples=args.samples,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                      max_context=args.max_context, max_turn_tokens=args.max_turn_tokens, dtype=args.dtype,
                      out_dir=args.out, on_turn=on_turn)
    finally:
        bar.close()
    for s, t in enumerate(trajs):
        flags = [f for f in ("over_turn", "over_length", "void") if getattr(t, f)]
        print(f"sample {s}: answer {t.answer!r} after {t.num_turns} turn(s)" + (f" [{', '.join(flags)}]" if flags else ""))
    print(f"report: {os.path.join(args.out, 'report.html')}")


def _config(args):
    """The `--config` file (a path, or a packaged config's name) with the `--config.<field>` overrides."""
    from mini_o3_jax.config_files import load_config

    return load_config(args.config, args=args.overrides)


def _init_config(args):
    from mini_o3_jax.config_files import load_config

    return load_config(args.config, args.override, args=args.overrides)


DEMO_CONFIG = "configs/demo.py"


def _demo_config(args):
    if getattr(args, "turn_scaling", False) and args.config == DEMO_CONFIG:
        args.config = "turn_scaling"  # configs/turn_scaling.py
    cfg = _config(args)
    if args.out:
        cfg.out_dir = args.out
    if args.ablation:
        cfg.ablation = True
    if getattr(args, "turn_scaling", False):
        if "turn_scaling" not in cfg:
            raise ConfigError(f"{args.config}: --turn-scaling needs a config with a turn_scaling block "
                              "(configs/turn_scaling.py)")
        if args.seeds:
            cfg.turn_scaling.seeds = list(args.seeds)
    elif args.seeds and len(args.seeds) < 2:
        raise ConfigError(f"--seeds {args.seeds[0]}: the spread over seeds needs at least two, e.g. 0,1,2 "
                          f"(one run at seed {args.seeds[0]} is --config.seed={args.seeds[0]})")
    return cfg


def _console():
    """`print` on process 0, None elsewhere: one progress bar and one log per run (other hosts still report
    warnings and errors on stderr)."""
    from mini_o3_jax.parallel.hosts import is_main

    return print if is_main() else None


def _train_parts(args):
    """Config with `--config.key=value` overrides, multi-host init, tokenizer and image processor."""
    from mini_o3_jax import storage
    from mini_o3_jax.parallel.distributed import initialize
    from mini_o3_jax.processing.chat import Tokenizer
    from mini_o3_jax.processing.image import ImageProcessor

    cfg = _config(args)
    for key in ("model_path", "tokenizer_path"):
        remote = key == "model_path" and cfg.get(key) and storage.is_uri(cfg[key])  # an Orbax dir in a bucket
        if cfg.get(key) and not remote and not os.path.isdir(cfg[key]):
            raise ConfigError(f"{key} = {cfg[key]}: no such directory (expected a HF or Orbax checkpoint directory)")
    initialize()
    tok_dir = cfg.get("tokenizer_path") or cfg.get("model_path")
    if not tok_dir:
        raise ConfigError(f"{args.config}: set --config.model_path=DIR (a checkpoint) or --config.tokenizer_path=DIR "
                          "(tokenizer files, for a random model of the config's `model` block)")
    if storage.is_uri(tok_dir):
        raise ConfigError(f"model_path = {tok_dir}: a checkpoint in a bucket needs --config.tokenizer_path=DIR, a "
                          "local directory with its tokenizer and processor files")
    proc_dir = cfg.get("model_path") if cfg.get("model_path") and not storage.is_uri(cfg.model_path) else tok_dir
    has_proc = os.path.exists(os.path.join(proc_dir, "preprocessor_config.json"))
    processor = ImageProcessor.from_pretrained(proc_dir) if has_proc else ImageProcessor()
    return cfg, Tokenizer.from_pretrained(tok_dir), processor, tok_dir


def cmd_plan(args) -> None:
    from tqdm import tqdm

    from mini_o3_jax.train.plan import DEFAULT_TARGETS, format_rows, loss_of, plan, write_results

    cfg = _config(args)
    if args.rollout:
        from mini_o3_jax.rl.plan import (
            ROLLOUT_TARGETS,
            format_rollout_rows,
            rollout_plan,
            write_rollout_results,
        )

        if "rollout" not in cfg:
            raise ConfigError(f"{args.config}: --rollout plans an RL config's rollout block (e.g. --config rl_grpo)")
        rows = [rollout_plan(cfg, target, preset=args.preset)
                for target in tqdm(args.target or ROLLOUT_TARGETS, desc="compiling", unit="target")]
        print(format_rollout_rows(rows))
        if args.write_results:
            name = os.path.splitext(os.path.basename(args.config))[0]
            write_rollout_results(rows, name, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                           "bench", "RESULTS.md"))
        return
    rows = []
    for target in tqdm(args.target or DEFAULT_TARGETS, desc="compiling", unit="target"):
        rows.append(plan(cfg, loss_of(cfg), target, efficiency=args.efficiency, preset=args.preset, length=args.length,
                         windows=args.windows))
    print(format_rows(rows))
    if args.write_results:
        name = os.path.splitext(os.path.basename(args.config))[0]
        write_results(rows, name, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                                               "RESULTS.md"))


def cmd_sft(args) -> None:
    from mini_o3_jax.sft.loop import run_sft, sft_data, sft_from_file

    cfg, tok, proc, side = _train_parts(args)
    console = _console()
    d = sft_data(cfg)
    if not d.path and not d.tfds_dir:
        if not d.synthetic:
            raise ConfigError(f"{args.config}: no training data: set --config.data.path=FILE (a LLaMA-Factory sharegpt "
                              "JSON such as Mini-o3-Coldstart.json) or --config.data.tfds_dir=DIR (the prepared set)")
        from mini_o3_jax.toy.sources import sft_examples

        load, n = sft_examples(d, tok, proc)  # generated scripted-expert trajectories (configs/sft_tiny.py)
        metrics = run_sft(cfg, load, n, proc, console=console, side_files_from=side, pad_id=tok.endoftext_id)
    else:
        metrics = sft_from_file(cfg, tok, proc, console=console, side_files_from=side)
    if console:
        print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))


def cmd_rl(args) -> None:
    from mini_o3_jax.data.direct import read_prompts
    from mini_o3_jax.rl.data import DatasetPrompts
    from mini_o3_jax.rl.loop import rl_data, run_rl

    cfg, tok, proc, side = _train_parts(args)
    d = rl_data(cfg)
    if d.sets:  # prepared registry sets, e.g. visualprobe_train,deepeyes_train_4k
        prompts = DatasetPrompts([n.strip() for n in d.sets.split(",") if n.strip()], d.tfds_dir)
    elif d.path:
        bad: list = []
        prompts = read_prompts(d.path, d.image_root or None, bad=bad,
                               allow_absolute_images=d.allow_absolute_images)
        if bad:
            from mini_o3_jax.data.records import describe_bad

            if _console():
                print(f"rl: {len(bad)} unusable prompt row(s) skipped, {len(prompts)} kept:\n{describe_bad(bad, 10)}")
    elif d.synthetic:  # generated puzzles (configs/rl_tiny.py)
        from mini_o3_jax.toy.sources import rl_prompts

        prompts = rl_prompts(d)
    else:
        raise ConfigError(f"{args.config}: no RL prompts: set --config.data.path=FILE (the released JSON: images / "
                          "problem / solution) or --config.data.sets=NAMES (prepared with `mini-o3 data prepare`)")
    console = _console()
    metrics = run_rl(cfg, prompts, tok, proc, console=console, side_files_from=side)
    if console:
        print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))


def cmd_eval(args) -> None:
    from mini_o3_jax.agent.settings import AGENT_FILE, agent_settings
    from mini_o3_jax.data import loader
    from mini_o3_jax.eval.run import (
        EvalConfig,
        explicit_agent_settings,
        judge_config,
        run_eval,
        unjudged_message,
    )
    from mini_o3_jax.model.weights import load_model
    from mini_o3_jax.parallel import hosts
    from mini_o3_jax.parallel.distributed import initialize
    from mini_o3_jax.processing.chat import Tokenizer
    from mini_o3_jax.processing.image import ImageProcessor

    cfg = _config(args)
    if not cfg.model_path:
        raise MiniO3Error(f"{args.config}: set --config.model_path to a checkpoint directory")
    try:  # settings and the judge first: a mistake stops the run before anything is loaded
        ecfg = EvalConfig.from_config(cfg.eval, checkpoint=cfg.model_path)
        judge = judge_config(cfg.get("judge")) if ecfg.scorer == "judge" else None
    except MiniO3Error as e:
        raise MiniO3Error(f"{args.config}: {e}") from None
    initialize()  # every process of a multi-host run evaluates its share of the questions (eval.run.run_eval)
    console = _console()
    agent = agent_settings(cfg.model_path)  # already read (and checked) by from_config
    if agent and console:
        mine = explicit_agent_settings(cfg.eval)
        shown = {k: (v if not isinstance(v, str) or len(v) <= 40 else v[:37] + "...") for k, v in agent.items()
                 if k not in mine}
        console(f"{os.path.join(cfg.model_path, AGENT_FILE)}: running the model as it was trained, with {shown}"
                + (f"; the config's {sorted(set(mine) & set(agent))} win over it" if set(mine) & set(agent) else ""))
    names = [b.strip() for b in str(cfg.benchmarks).split(",") if b.strip()]
    for name in names:  # every name is known before any set is prepared or loaded
        loader.benchmark(name)
    if any(cfg.sources.get(name) for name in names):
        hosts.check_shared(cfg.data_dir, "data_dir")  # process 0 prepares the sets every host then reads
    benchmarks, bad = {}, {}
    for name in names:
        source = cfg.sources.get(name) or None
        if source:  # once, by process 0, into the data_dir every host reads
            report = hosts.main_first(functools.partial(
                loader.prepare, name, source, cfg.data_dir, image_root=cfg.image_root or None,
                allow_absolute_images=bool(cfg.allow_absolute_images)), f"preparing {name} from {source}")
            if console:
                console(report.summary())
        benchmarks[name] = loader.load(name, cfg.data_dir)  # lazy: images are read as episodes start
        bad[name] = loader.bad_records(name, cfg.data_dir)
        if bad[name] and console:
            print(f"{name}: {len(bad[name])} bad record(s) left out, e.g. {bad[name][0]}", file=sys.stderr)
    model = load_model(cfg.model_path, dtype=cfg.dtype or None)
    tok, proc = Tokenizer.from_pretrained(cfg.model_path), ImageProcessor.from_pretrained(cfg.model_path)
    label = cfg.label or os.path.basename(os.path.normpath(cfg.model_path))
    metrics = run_eval(model, tok, proc, benchmarks, ecfg, cfg.out_dir, judge=judge, bad_records=bad, label=label,
                       console=console)
    missing = unjudged_message(metrics, judge)
    if missing:  # the results are written; a zero exit would pass off an incomplete Avg@K as final
        raise MiniO3Error(f"{cfg.out_dir}: {missing}")


def cmd_data(args) -> None:
    if args.action == "prepare":
        from mini_o3_jax.data import loader

        report = loader.prepare(args.benchmark, args.source, args.data_dir, image_root=args.image_root,
                                strict=args.strict, overwrite=args.overwrite,
                                allow_absolute_images=args.allow_absolute_image_paths)
        print(report.summary())
        if report.reused:
            print("  (already prepared: --overwrite prepares it again from --source)")
        for bad in report.bad[:20]:
            print(f"  {bad}")
    else:
        from mini_o3_jax.toy.scene import PRESETS
        from mini_o3_jax.toy.writers import write_all

        if args.n < 1:
            raise MiniO3Error(f"--n {args.n}: expected at least 1 question per level")
        levels = PRESETS[args.preset]().levels
        print(f"writing {args.n} question(s) per level ({', '.join(levels)}), {3 * args.n} training puzzles and "
              f"{args.n} cold-start trajectories ({args.preset} preset, seed {args.seed}) under "
              f"{os.path.abspath(args.out)}", flush=True)
        for path in write_all(args.out, n=args.n, seed=args.seed, preset=args.preset, progress=True):
            print(f"wrote {path}")


def _seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]. One seed is a turn-scaling run of its own (a later `--seeds 0,1` in the same
    folder resumes it and pools); the recipe's spread over seeds needs two or more (`_demo_config`)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected different seeds, e.g. 0,1,2")
    return seeds


def cmd_demo(args) -> None:
    from mini_o3_jax.toy.recipe import run_recipe, run_seeds

    cfg = _demo_config(args)
    if args.turn_scaling:
        from mini_o3_jax.toy.turn_scaling import run_turn_scaling

        summary = run_turn_scaling(cfg)
    else:
        summary = run_seeds(cfg, args.seeds) if args.seeds else run_recipe(cfg)
    print(json.dumps(summary, indent=2, default=str))


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`error: ...`, exit code 2 from `main`), not usage + exit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; each option's default appended when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default == [] or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _config_help(command: str) -> str:
    """How to choose, list and override config fields (the epilog of every config-driven command)."""
    from mini_o3_jax.config_files import packaged_configs

    return f"""
config fields:
  --config takes a file, or the name of a packaged config (works from any directory):
    {", ".join(packaged_configs())}
  Override any field with --config.<field>=<value> or --config.<field> <value>; nested fields with dots
  (--config.train.steps=5), lists as a,b or [a, b], bools as true/false (a bare --config.<flag> is true),
  None to clear a text field. Values are checked against the field's type; a leading ~ is expanded.
  List every field and its value (after overrides) and exit: mini-o3 {command} --config FILE --show-config
"""


def _benchmark_names() -> str:
    """The registry's names (mini_o3_jax.data.benchmarks), wrapped and indented for an epilog."""
    import textwrap

    from mini_o3_jax.data.benchmarks import BENCHMARKS

    return textwrap.fill(", ".join(sorted(BENCHMARKS)), width=100, initial_indent="  ", subsequent_indent="  ")


def _add_config(s: argparse.ArgumentParser, default: str | None, configure) -> None:
    s.add_argument("--config", default=default, required=default is None, metavar="FILE",
                   help="ml-collections config: a path, or a packaged config's name (e.g. rl_tiny)")
    s.add_argument("--show-config", action="store_true",
                   help="print the resolved config (every field, after overrides) and exit")
    s.set_defaults(configure=configure, overrides=[])


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mini-o3", formatter_class=_Formatter,
                description="Mini-o3 (Qwen2.5-VL + a zoom tool, cold-start SFT then GRPO) in JAX/Flax.",
                epilog="""examples:
  mini-o3 infer                             # the packaged toy model on a sample puzzle, in seconds
  mini-o3 rl --config configs/rl_tiny.py    # a few GRPO steps from it, about a minute on a CPU
  mini-o3 demo                              # the whole recipe at toy scale (docs/demo.md)

`mini-o3 <command> --help` shows a command's options, defaults and examples.""")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help: str, examples: str, epilog: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter,
                              epilog=f"examples:\n{examples.strip(chr(10))}\n{epilog}")

    dtypes = ["float32", "bfloat16"]
    s = command("init", "random-weight checkpoint of a config, in HF layout", """
  mini-o3 init --config configs/qwen2_5_vl_tiny.py --out ~/ckpt/tiny-random
  mini-o3 init --config qwen2_5_vl_7b --out ~/ckpt/qwen7b-random --tokenizer ~/ckpt/Qwen2.5-VL-7B-Instruct
  mini-o3 init --config qwen2_5_vl_tiny --config.model.text.num_hidden_layers=4 --show-config""",
                _config_help("init"))
    _add_config(s, None, _init_config)
    s.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="as --config.FIELD=VALUE, e.g. model.text.num_hidden_layers=4 (repeatable)")
    s.add_argument("--out", type=_path, default=None, help="directory to write (required)")
    s.add_argument("--dtype", default=None, choices=dtypes, help="default: the config's dtype")
    s.add_argument("--tokenizer", type=_path, default=None, help="directory whose tokenizer files to copy")
    s.add_argument("--seed", type=int, default=0, help="initialisation seed")
    s.set_defaults(fn=cmd_init)

    s = command("convert", "HF checkpoint -> Orbax", """
  mini-o3 convert --hf ~/ckpt/Qwen2.5-VL-7B-Instruct --out ~/ckpt/qwen7b-orbax
  mini-o3 convert --hf ~/ckpt/Mini-o3-7B-v1 --out ~/ckpt/mini-o3-7b --dtype bfloat16 --mesh fsdp=-1""")
    s.add_argument("--hf", type=_path, required=True, help="HF Qwen2.5-VL directory (config.json + safetensors)")
    s.add_argument("--out", type=_path, required=True, help="Orbax checkpoint directory to write")
    s.add_argument("--dtype", default=None, choices=dtypes, help="default: the checkpoint's")
    s.add_argument("--mesh", default=None, help="e.g. fsdp=-1,tensor=2 (load sharded over local devices)")
    s.set_defaults(fn=cmd_convert)

    s = command("export", "any checkpoint -> HF directory (transformers / vLLM)", """
  mini-o3 export --model ~/ckpt/qwen7b-orbax --out ~/ckpt/qwen7b-hf
  mini-o3 export --model runs/rl/final --out runs/rl/hf --dtype bfloat16""")
    s.add_argument("--model", type=_path, required=True, help="HF or Orbax checkpoint directory")
    s.add_argument("--out", type=_path, required=True, help="HF directory to write")
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: the checkpoint's own dtype (a float32 checkpoint is written as float32)")
    s.add_argument("--shard-gb", type=float, default=4.0, help="largest safetensors shard, in GiB")
    s.set_defaults(fn=cmd_export)

    s = command("run", "image + question -> next-token distribution", """
  mini-o3 run --model ~/ckpt/qwen7b-orbax --image photo.jpg --question "What is on the sign?"
  mini-o3 run --model ~/ckpt/qwen7b-orbax --image photo.jpg --question "Colour?" --top-k 10 --dtype bfloat16""")
    s.add_argument("--model", type=_path, required=True, help="HF or Orbax checkpoint directory")
    s.add_argument("--image", type=_path, required=True, help="image file")
    s.add_argument("--question", required=True, help="the question about the image")
    s.add_argument("--top-k", type=int, default=5, help="how many of the most likely next tokens to print")
    s.add_argument("--dtype", default=None, choices=dtypes, help="default: the checkpoint's")
    s.add_argument("--mesh", default=None, help="e.g. fsdp=-1,tensor=2 (load sharded over local devices)")
    s.add_argument("--no-resize", action="store_true", help="skip Mini-o3's 40k..2M pixel pre-resize")
    s.set_defaults(fn=cmd_run)

    s = command("infer", "image + question -> multi-turn visual search with zooms, HTML report", """
  mini-o3 infer                # the packaged toy demo model on a sample toy puzzle, in seconds
  mini-o3 infer --model ~/ckpt/mini-o3-7b --image photo.jpg --question "What is written on the sign?" \\
      --max-turns 12 --samples 4 --out runs/infer     # then open runs/infer/report.html""")
    s.add_argument("--model", type=_path, default=None, help="HF or Orbax checkpoint dir (e.g. a converted Mini-o3-7B); "
                   "default: the packaged toy demo model (4 MB, trained by `mini-o3 demo`)")
    s.add_argument("--image", type=_path, default=None, help="default: a sample toy puzzle (written to --out)")
    s.add_argument("--question", default=None, help="required with --image; default: the sample's question")
    s.add_argument("--max-turns", type=int, default=None,
                   help="default 12 (the released eval; the model scales to 32+) or the checkpoint's agent.json")
    s.add_argument("--samples", type=int, default=1, help="episodes to sample")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    s.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--max-context", type=int, default=None, help="default 32768 or the checkpoint's agent.json")
    s.add_argument("--max-turn-tokens", type=int, default=None, help="default 8192 or the checkpoint's agent.json")
    s.add_argument("--dtype", default=None, choices=dtypes, help="default: the checkpoint's")
    s.add_argument("--out", type=_path, default="runs/infer", help="directory for report.html and its images")
    s.set_defaults(fn=cmd_infer)

    s = command("sft", "cold-start SFT (spec 3): full fine-tuning on multi-turn trajectories", """
  mini-o3 sft --config configs/sft_tiny.py       # runs as is: the packaged toy model, generated data, ~1 min
  mini-o3 sft --config configs/sft_coldstart.py --config.model_path=~/ckpt/qwen7b-orbax \\
      --config.data.path=data/coldstart/Mini-o3-Coldstart.json --config.out_dir=runs/sft
  mini-o3 sft --config sft_coldstart --config.train.batch_size=64 --show-config""", _config_help("sft"))
    _add_config(s, "configs/sft_coldstart.py", _config)
    s.set_defaults(fn=cmd_sft)

    s = command("rl", "GRPO with over-turn masking (spec 4); resumes from its out_dir", """
  mini-o3 rl --config configs/rl_tiny.py         # runs as is: 3 GRPO steps from the packaged toy model, ~1 min
  mini-o3 rl --config configs/rl_grpo.py --config.model_path=runs/sft/final \\
      --config.data.path=data/VisualProbe_train/train.json --config.data.image_root=$BASE_IMAGE_DIR
  mini-o3 rl --config rl_grpo --config.reward.kind=choice --show-config""", _config_help("rl"))
    _add_config(s, "configs/rl_grpo.py", _config)
    s.set_defaults(fn=cmd_rl)

    s = command("plan", "compile the SFT/GRPO steps for TPU slices (or the local devices): HBM, FLOPs, time", """
  mini-o3 plan --config sft_coldstart --target v5p:2x4x4      # Qwen2.5-VL-7B at 32K tokens on a v5p-64
  mini-o3 plan --config rl_grpo --target v6e:8x8 --target local --efficiency 0.6
  mini-o3 plan --config sft_coldstart --write-results         # the default targets, into bench/RESULTS.md
  mini-o3 plan --config rl_grpo --rollout                     # the rollout's KV pages and slots per chip""",
                "\nNeeds the TPU compiler for TPU targets: pip install \"jax[tpu]==<jax version>\" (any CPU machine).\n"
                + _config_help("plan"))
    _add_config(s, "configs/sft_coldstart.py", _config)
    s.add_argument("--target", action="append", default=None, metavar="NAME",
                   help="a TPU topology (v5p:2x4x4, v6e:8x8, ...) or 'local'; repeatable (default: the "
                        "slices of bench/RESULTS.md, v5p-16 to v6e-256: train.plan.DEFAULT_TARGETS)")
    s.add_argument("--efficiency", type=float, default=0.7,
                   help="assumed fraction of bf16 peak the executed matmuls and attention kernels reach (time estimate)")
    s.add_argument("--length", type=int, default=None, help="tokens per row (default: the config's largest)")
    s.add_argument("--windows", type=int, default=None,
                   help="ViT windows per row (default: the config's largest budget, 12 widest 2-Mpx images)")
    s.add_argument("--preset", default="qwen2_5_vl_7b", help="model size when the config names no checkpoint")
    s.add_argument("--rollout", action="store_true",
                   help="plan an RL config's rollout instead: KV pages, slots and whole episodes per chip "
                        "(default targets v5p:2x4x4, v6e:8x8)")
    s.add_argument("--write-results", action="store_true", help="record the table in bench/RESULTS.md")
    s.set_defaults(fn=cmd_plan)

    s = command("eval", "Avg@K over benchmarks: metrics.json, results.md, turn curve, HTML; resumes", """
  mini-o3 eval --config configs/eval.py --config.model_path=~/ckpt/mini-o3-7b --config.data_dir=~/data/tfds \\
      --config.benchmarks=visualprobe_hard,vstar --config.out_dir=runs/eval""",
                f"\nbenchmarks (--config.benchmarks, comma-separated registry names):\n{_benchmark_names()}\n"
                + _config_help("eval"))
    _add_config(s, "configs/eval.py", _config)
    s.set_defaults(fn=cmd_eval)

    s = command("data", "prepare a downloaded benchmark (TFDS) or write synthetic puzzles", """
  mini-o3 data prepare --benchmark visualprobe_hard --source ~/data/VisualProbe_Hard --data-dir ~/data/tfds
  mini-o3 data synthetic --out data/synthetic --n 100 --preset toy""")
    dsub = s.add_subparsers(dest="action", required=True, metavar="action")
    d = dsub.add_parser("prepare", help="read a downloaded benchmark folder, validate, write a TFDS dataset",
                        description="read a downloaded benchmark folder, validate, write a TFDS dataset",
                        formatter_class=_Formatter, epilog=f"""examples:
  mini-o3 data prepare --benchmark visualprobe_hard --source ~/data/VisualProbe_Hard --data-dir ~/data/tfds
  mini-o3 data prepare --benchmark vstar --source ~/data/vstar_bench --strict

benchmarks:
{_benchmark_names()}
""")
    d.add_argument("--benchmark", required=True, metavar="NAME", help="registry name (listed below)")
    d.add_argument("--source", type=_path, required=True, help="the folder downloaded from the Hugging Face hub")
    d.add_argument("--data-dir", type=_path, default="data/tfds", help="where prepared datasets live")
    d.add_argument("--image-root", type=_path, default=None, help="$BASE_IMAGE_DIR for relative image paths")
    d.add_argument("--allow-absolute-image-paths", action="store_true",
                   help="also read absolute image paths outside the image root (default: only files inside it)")
    d.add_argument("--strict", action="store_true", help="write nothing and fail, listing every bad record")
    d.add_argument("--overwrite", action="store_true", help="prepare again even if already prepared")
    d = dsub.add_parser("synthetic", help="synthetic VisualProbe-style benchmarks and cold-start trajectories",
                        description="synthetic VisualProbe-style benchmarks and cold-start trajectories",
                        formatter_class=_Formatter, epilog="""examples:
  mini-o3 data synthetic --out data/synthetic --n 100
  mini-o3 data synthetic --out data/toy --n 20 --preset toy     # the packaged demo model's puzzles
""")
    d.add_argument("--out", type=_path, default="data/synthetic", help="output folder")
    d.add_argument("--n", type=int, default=100, help="questions per level")
    d.add_argument("--seed", type=int, default=0, help="puzzle seed")
    d.add_argument("--preset", default="default", choices=["default", "tiny", "demo", "grid4", "toy"],
                   help="scene preset (toy.scene.PRESETS)")
    s.set_defaults(fn=cmd_data)

    s = command("demo", "the whole recipe at toy scale on a CPU: synthetic data, baseline, SFT, "
                        "RL with over-turn masking, evaluation, report (configs/demo.py)", """
  mini-o3 demo                                   # runs/demo/report.md, ~6 min on 2 CPU cores
  mini-o3 demo --ablation --out runs/demo_ablation
  mini-o3 demo --seeds 0,1,2 --out runs/demo_seeds  # once per training seed: mean +- standard error
  mini-o3 demo --config.base=                    # perception stages from random init too, ~16 min
  mini-o3 demo --config.sft.train.steps=400 --show-config
  mini-o3 demo --turn-scaling                    # over-turn masking vs test-time turns (configs/turn_scaling.py)""",
                _config_help("demo"))
    _add_config(s, DEMO_CONFIG, _demo_config)
    s.add_argument("--out", type=_path, default=None, help="run directory (default: the config's out_dir, runs/demo)")
    s.add_argument("--ablation", action="store_true", help="also train RL without over-turn masking, compare")
    s.add_argument("--seeds", type=_seeds, default=None, metavar="S1,S2,...",
                   help="run the recipe once per training seed (OUT/seed_<s>, each resumable) and report accuracy "
                        "as mean +- standard error over them, with the paired RL - SFT difference (OUT/report.md)")
    s.add_argument("--turn-scaling", action="store_true",
                   help="from one SFT model on long searches, GRPO with and without over-turn masking per RL seed "
                        "(--seeds), each evaluated up to 4x the training turn limit: OUT/turn_scaling.md + .png")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (ours or argparse's) is one `error: ...` line and exit code 2."""
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra and not hasattr(args, "configure"):
            prog = " ".join(["mini-o3", args.command] + ([args.action] if getattr(args, "action", None) else []))
            raise UsageError(f"{prog}: unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
        args.overrides = extra
        if getattr(args, "show_config", False):
            from mini_o3_jax.config_files import format_config, resolve_config_path

            print(format_config(args.configure(args), os.path.abspath(resolve_config_path(args.config))))
            return 0
        args.fn(args)
    except MiniO3Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
