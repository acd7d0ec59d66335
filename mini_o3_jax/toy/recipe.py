"""The whole Mini-o3 recipe at toy scale, end to end on a CPU (configs/demo.py).

    synthetic puzzles -> Qwen-style BPE -> tiny Qwen2.5-VL (random init)
      -> perception stages, if configured (locate, read, dot questions, then whole easy trajectories:
         pretraining in miniature)
      -> direct-answer baseline (SFT without zooming)
      -> cold-start SFT on scripted-expert trajectories
      -> GRPO with over-turn masking (and, with `ablation`, without it, from the same SFT weights)
      -> Avg@K evaluation of every model on held-out puzzles, turn curves -> report.md + PNGs + HTML

Every stage writes into `out_dir/<stage>` and is skipped when already complete, so an interrupted demo
continues where it stopped. Every number in the report is measured by the run itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from flax import nnx

from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.agent.settings import write_agent_settings
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.config_files import from_block
from mini_o3_jax.data import loader
from mini_o3_jax.data.records import Record
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.eval.run import EvalConfig, run_eval
from mini_o3_jax.infer import DEMO_BASE
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.presets import fit_to_tokenizer
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.model.weights import load_model, save_orbax
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rl.loop import run_rl
from mini_o3_jax.sft.data import conversation_trajectory
from mini_o3_jax.sft.loop import run_sft
from mini_o3_jax.toy.expert import expert_trajectory
from mini_o3_jax.toy.perception import perception_question
from mini_o3_jax.toy.puzzles import Puzzle, make_puzzle
from mini_o3_jax.toy.scene import SceneConfig
from mini_o3_jax.toy.tokenizer import protocol_corpus, tokenizer_texts, train_bpe_tokenizer
from mini_o3_jax.toy.writers import write_benchmark
from mini_o3_jax.train.metrics import read_jsonl_metrics

# What a base checkpoint's tokenizer is made of (copied into the run's tokenizer folder)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")

# Disjoint seed ranges: training puzzles never coincide with the held-out evaluation puzzles.
SEED_SFT, SEED_BASELINE, SEED_RL, SEED_PERCEPTION, SEED_EVAL = 1_000_000, 2_000_000, 3_000_000, 4_000_000, 9_000_000


def scene_config(cfg: ml_collections.ConfigDict) -> SceneConfig:
    """The `scene` preset with the config's `scene_overrides` (lists become the tuples SceneConfig holds)."""
    extra = cfg.get("scene_overrides") or {}
    extra = extra.to_dict() if hasattr(extra, "to_dict") else dict(extra)
    return getattr(SceneConfig, cfg.scene)(**{k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()})


def _puzzle(scene: SceneConfig, base: int, i: int, levels: Sequence[str] = ()) -> Puzzle:
    """Puzzle `i` of a stream: `levels` (default: the scene's) in turn."""
    levels = tuple(levels) or scene.levels
    return make_puzzle(base + i, levels[i % len(levels)], scene)


def packaged_or_path(source: str, packaged: str, field: str, otherwise: str) -> str | None:
    """A config's starting checkpoint: "packaged" (the shipped `packaged` directory), a checkpoint directory, or ""
    (None: the recipe trains it). A directory without a tokenizer is a ConfigError naming `field`."""
    if not source:
        return None
    path = packaged if source == "packaged" else os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise ConfigError(f"{field} = {source!r}: {path} holds no tokenizer.json; expected a checkpoint saved with its "
                          f"tokenizer (as `mini-o3 export` writes it), 'packaged', or '' {otherwise}")
    return path


class PuzzlePrompts(Sequence):
    """An endless-enough stream of RL prompts, generated on access (a few ms each), `levels` in turn
    (default: every level of the scene)."""

    def __init__(self, scene: SceneConfig, base: int, n: int = 100_000, levels: Sequence[str] = ()):
        unknown = [lv for lv in levels if lv not in scene.levels]
        if unknown:
            raise ConfigError(f"RL prompt levels {list(levels)}: {unknown} not among the scene's levels {scene.levels}")
        self.scene, self.base, self.n, self.levels = scene, base, n, tuple(levels)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Record:
        p = _puzzle(self.scene, self.base, i, self.levels)
        return Record(image=p.image, problem=p.problem, solution=p.answer, data_source=f"synthetic_{p.level}",
                      doc_id=p.doc_id)


Conversation = tuple[list[dict[str, str]], list[Any]]


def _conversation(p: Puzzle, seed: int, system: bool, direct: bool,
                  patterns: dict[str, float] | None = None) -> Conversation:
    if direct:  # the baseline: answer from the full view
        conv = [{"from": "human", "value": p.problem},
                {"from": "gpt", "value": f"<think>I answer from the full image.</think>\n<answer>{p.answer}</answer>"}]
        return conv, [p.image]
    traj = expert_trajectory(p, seed=seed, weights=patterns)
    conv = [m for m in traj.conversations if system or m["from"] != "system"]
    return conv, traj.images


def _write_provenance(stage_dir: str, init: str) -> None:
    """`<stage>/stage.json` says which checkpoint the stage started from (the chain init -> perception ->
    baseline / SFT -> RL is then visible on disk)."""
    os.makedirs(stage_dir, exist_ok=True)
    with open(os.path.join(stage_dir, "stage.json"), "w", encoding="utf-8") as f:
        json.dump({"init": init}, f)


# Perception skills whose texts are a prefix of the hard level's expert trajectories, already in the corpus
# (`toy.tokenizer.tokenizer_texts`). Why skip them: more copies of the same phrases shifted BPE merges, and the
# easy level's in-context reading has clicked late or not at all on a different tokenizer (docs/demo.md).
CORPUS_SKIP = ("check",)


@dataclasses.dataclass(frozen=True)
class ToyData:
    """The demo config's `data` block: the held-out puzzles, the tokenizer's corpus and the RL prompts' levels
    (why these values: docs/demo.md)."""

    # held-out puzzles per level (the scene's levels: easy and hard); 32 x Avg@8 = 256 samples a level, so
    # one puzzle more or less right moves a level by ~3 points, not 6
    eval_per_level: int = 32
    tokenizer_puzzles: int = 60  # puzzles whose texts the BPE tokenizer is trained on
    vocab_size: int = 700
    # the levels RL prompts cycle through (empty: all): the hard one, where SFT leaves room
    rl_levels: tuple[str, ...] = ("hard",)
    # the levels evaluated (empty: all of the scene's); the turn-scaling demo evaluates hard only
    eval_levels: tuple[str, ...] = ()


class Recipe:
    def __init__(self, cfg: ml_collections.ConfigDict, console: Callable[[str], None] | None = print):
        self.cfg, self.console = cfg, console
        self.toy_data = from_block(ToyData, cfg.data, "data")
        self.out = os.path.abspath(cfg.out_dir)
        self.scene = scene_config(cfg)
        self.timings: dict[str, float] = {}
        os.makedirs(self.out, exist_ok=True)
        self.tok_dir = os.path.join(self.out, "tokenizer")

    def log(self, msg: str) -> None:
        if self.console:
            self.console(msg)

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.log(f"[demo] {name}: {self.timings[name]:.1f} s")
        return result

    # -- stages -------------------------------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        """Held-out evaluation puzzles per level, in Mini-o3's JSON format, prepared as TFDS datasets."""
        src, tfds_dir = os.path.join(self.out, "data"), os.path.join(self.out, "tfds")
        sets = {}
        for i, level in enumerate(self.scene.levels):
            if self.toy_data.eval_levels and level not in self.toy_data.eval_levels:
                continue
            name = f"synthetic_{level}"
            path = os.path.join(src, name, "val.json")
            if not os.path.exists(path):
                write_benchmark(src, level, self.toy_data.eval_per_level, seed=SEED_EVAL + i,
                                          config=self.scene)
            loader.prepare(name, os.path.dirname(path), tfds_dir)
            sets[name] = loader.load(name, tfds_dir)
        return sets

    def base(self) -> str | None:
        """The perception model baseline and SFT start from, when the recipe does not train it itself:
        `cfg.base` "packaged" (`DEMO_BASE`), a checkpoint directory, or "" for none (train from scratch)."""
        return packaged_or_path(self.cfg.get("base", ""), DEMO_BASE, "base", "to train the perception stages from scratch")

    def tokenizer(self) -> tuple[Tokenizer, ImageProcessor]:
        proc = ImageProcessor(min_pixels=self.scene.min_pixels, max_pixels=self.scene.view_pixels)
        base = self.base()
        if base and not os.path.exists(os.path.join(self.tok_dir, "tokenizer.json")):
            os.makedirs(self.tok_dir, exist_ok=True)  # the base's own tokenizer: its embedding rows are its ids
            for name in TOKENIZER_FILES:
                if os.path.exists(os.path.join(base, name)):
                    shutil.copy(os.path.join(base, name), os.path.join(self.tok_dir, name))
            proc.save_pretrained(self.tok_dir)
            self._write_agent()
        elif not os.path.exists(os.path.join(self.tok_dir, "tokenizer.json")):
            texts = protocol_corpus() + tokenizer_texts(self.scene, n=self.toy_data.tokenizer_puzzles)
            for name in self.cfg.perception_stages:  # the perception stages' questions and answers
                question = self._perception_questions(name)
                skills = list(self.cfg[name].skills)
                for i in range(4 * len(skills) if self.cfg[name].train.steps else 0):
                    if skills[i % len(skills)] not in CORPUS_SKIP:
                        texts += [m["value"] for m in question(i)[0]]
            tok = train_bpe_tokenizer(texts, vocab_size=self.toy_data.vocab_size)
            tok.save_pretrained(self.tok_dir)
            proc.save_pretrained(self.tok_dir)
            self._write_agent()
        return Tokenizer.from_pretrained(self.tok_dir), proc

    def _write_agent(self) -> None:
        """agent.json beside the tokenizer, copied beside every checkpoint's weights: `mini-o3 infer` and `eval`
        then run the model as it was trained."""
        e = self.cfg.eval
        write_agent_settings(self.tok_dir, min_pixels=self.scene.min_pixels, max_pixels=self.scene.view_pixels,
                             system_prompt=SYSTEM_PROMPT_TOOL_CROP if self.cfg.system_prompt else None,
                             max_turns=e.env.max_turns, max_context=e.env.max_context,
                             max_turn_tokens=e.rollout.max_turn_tokens)

    def init_model(self, tok: Tokenizer) -> str:
        path = os.path.join(self.out, "init")
        if not os.path.exists(os.path.join(path, "mini_o3.json")):
            mc = fit_to_tokenizer(ModelConfig.from_config_dict(self.cfg.model.to_dict()), tok)
            save_orbax(Qwen25VL(mc, rngs=nnx.Rngs(self.cfg.seed)), path, side_files_from=self.tok_dir)
        return path

    def sft(self, name: str, init: str, tok: Tokenizer, proc: ImageProcessor, *, direct: bool) -> str:
        """SFT from `init` on trajectories generated on the fly (expert, or direct answers)."""
        base, system = SEED_BASELINE if direct else SEED_SFT, bool(self.cfg.system_prompt)
        block = self.cfg.baseline if direct else self.cfg.sft
        patterns = dict(block.patterns) if block.get("patterns") else None  # expert reasoning-pattern weights
        levels = tuple(block.get("levels") or ())  # the levels its puzzles cycle through (empty: all)
        return self._train(name, block, init, tok, proc,
                           lambda i: _conversation(_puzzle(self.scene, base, i, levels), i, system, direct, patterns))

    def seeing_model(self, tok: Tokenizer, proc: ImageProcessor) -> str:
        """The checkpoint baseline and SFT start from: the base (`cfg.base`, the toy's pretrained Qwen2.5-VL),
        or without one a random init trained by the perception stages."""
        base = self.base()
        if base is not None:
            return base
        init = self._timed("init", lambda: self.init_model(tok))
        return self.perception(init, tok, proc)

    def perception(self, init: str, tok: Tokenizer, proc: ImageProcessor) -> str:
        """The perception stages (`perception_stages`, in order, each from the last): single-skill questions
        (the block's `skills`, in turn) on fresh scenes, so the model learns to find the target and read a
        label, then to chain them in easy trajectories, before SFT on every level. Returns the last
        checkpoint."""
        for name in self.cfg.perception_stages:
            if self.cfg[name].train.steps:
                init = self._timed(name, functools.partial(self._perception_stage, name, init, tok, proc))
        return init

    def _perception_questions(self, name: str) -> Callable[[int], Conversation]:
        """seed -> the perception stage `name`'s question (its `skills` in turn, in its `style`)."""
        skills, style = list(self.cfg[name].skills), self.cfg[name].get("style", "short")
        return lambda i: perception_question(i, skills[i % len(skills)], self.scene, style)

    def _perception_stage(self, name: str, init: str, tok: Tokenizer, proc: ImageProcessor) -> str:
        question = self._perception_questions(name)
        return self._train(name, self.cfg[name], init, tok, proc, lambda i: question(SEED_PERCEPTION + i))

    def _stage_config(self, block: ml_collections.ConfigDict, name: str, init: str) -> ml_collections.ConfigDict:
        """A stage's training config: from `init`, into `out_dir/<name>`, with one compile cache for all stages
        (they train one model at the same shapes: later stages load the programs the first compiled)."""
        c = block.copy_and_resolve_references()
        c.model_path, c.tokenizer_path, c.out_dir, c.seed = init, self.tok_dir, os.path.join(self.out, name), self.cfg.seed
        # (JAX's own cache directory, when one is set, wins: `train.session.compile_cache_dir`)
        if c.get("compile_cache", "auto") == "auto" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            with c.unlocked():
                c.compile_cache = os.path.join(self.out, "compile_cache")
        _write_provenance(c.out_dir, init)
        return c

    def _train(self, name: str, block: ml_collections.ConfigDict, init: str, tok: Tokenizer, proc: ImageProcessor,
               conversation: Callable[[int], Conversation]) -> str:
        """SFT from `init` on conversations generated on the fly by index; returns the final checkpoint."""
        final = os.path.join(self.out, name, "final")
        if os.path.exists(os.path.join(final, "mini_o3.json")):
            return final
        c = self._stage_config(block, name, init)

        def load(indices: Sequence[int]) -> list[Trajectory]:
            out = []
            for i in indices:
                conv, images = conversation(i)
                out.append(conversation_trajectory(conv, images, tok, proc, min_pixels=self.scene.min_pixels,
                                                   max_pixels=self.scene.view_pixels, name=f"{name}[{i}]"))
            return out

        run_sft(c, load, 1_000_000, proc, console=self.console, side_files_from=self.tok_dir, pad_id=tok.endoftext_id,
                label=name)
        return final

    def rl(self, name: str, init: str, tok: Tokenizer, proc: ImageProcessor, *, mask: bool,
           seed: int | None = None) -> str:
        """GRPO from `init`, with or without over-turn masking; `seed` (default: the config's) seeds the run."""
        final = os.path.join(self.out, name, "final")
        if os.path.exists(os.path.join(final, "mini_o3.json")):
            return final
        c = self._stage_config(self.cfg.rl, name, init)
        if seed is not None:
            c.seed = int(seed)
        c.train.mask_exceeded = mask
        c.env.min_pixels, c.env.max_pixels = self.scene.min_pixels, self.scene.view_pixels
        if not self.cfg.system_prompt:
            c.env.system_prompt = None
        prompts = PuzzlePrompts(self.scene, SEED_RL, levels=self.toy_data.rl_levels)
        run_rl(c, prompts, tok, proc, console=self.console, side_files_from=self.tok_dir, label=name)
        return final

    def evaluate(self, name: str, ckpt: str, sets, tok: Tokenizer, proc: ImageProcessor) -> dict[str, Any]:
        # scored by rule (exact match on the puzzles' one-word answers), offline, unless the config says otherwise
        e = self.cfg.eval.copy_and_resolve_references()
        e.seed, e.scorer = self.cfg.seed, e.get("scorer", "auto")
        e.env.update(min_pixels=self.scene.min_pixels, max_pixels=self.scene.view_pixels,
                     system_prompt=SYSTEM_PROMPT_TOOL_CROP if self.cfg.system_prompt else None)
        ecfg = EvalConfig.from_config(e)
        out = os.path.join(self.out, "eval", name)  # run_eval resumes: a finished evaluation only re-reports
        model = load_model(ckpt, unroll=bool(self.cfg.get("unroll_layers", False)))
        return run_eval(model, tok, proc, sets, ecfg, out, label=name, console=self.console)

    # -- the whole recipe --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        sets = self._timed("data", self.data)
        tok, proc = self._timed("tokenizer", self.tokenizer)
        init = self.seeing_model(tok, proc)  # baseline and SFT both start from the model that can see
        models = {"baseline": self._timed("baseline_sft", lambda: self.sft("baseline", init, tok, proc, direct=True)),
                  "sft": self._timed("sft", lambda: self.sft("sft", init, tok, proc, direct=False))}
        models["rl"] = self._timed("rl", lambda: self.rl("rl", models["sft"], tok, proc, mask=True))
        if cfg.ablation:
            models["rl_no_mask"] = self._timed("rl_no_mask", lambda: self.rl("rl_no_mask", models["sft"], tok, proc,
                                                                              mask=False))
        results = {name: self._timed(f"eval_{name}", lambda n=name, p=path: self.evaluate(n, p, sets, tok, proc))
                   for name, path in models.items()}
        report = write_recipe_report(self.out, results, self.timings, cfg)
        self.log(f"[demo] report: {report}")
        return {"report": report, "timings": self.timings,
                "accuracy": {n: {b.split("_")[-1]: round(m["avg_at_k"], 1) for b, m in r["benchmarks"].items()}
                             for n, r in results.items()}}


def run_recipe(cfg: ml_collections.ConfigDict, console: Callable[[str], None] | None = print) -> dict[str, Any]:
    return Recipe(cfg, console).run()


def seed_dir(out: str, seed: int) -> str:
    return os.path.join(out, f"seed_{seed}")


def run_seeds(cfg: ml_collections.ConfigDict, seeds: Sequence[int],
              console: Callable[[str], None] | None = print) -> dict[str, Any]:
    """The recipe once per training seed (`out_dir/seed_<s>`, each resumable), then `out_dir/report.md`:
    accuracy as mean +- standard error over the seeds, and the paired RL - SFT difference.

    A seed changes everything a training run draws (initial weights, which puzzles each stage trains on and in
    what order, sampling); the held-out puzzles and the tokenizer stay fixed, so models of different seeds are
    compared on the same questions. One run's numbers move by several points with the seed (and with the
    machine's float rounding: docs/demo.md), so a claim about the recipe needs several."""
    if len(set(seeds)) < 2:
        raise ConfigError(f"seeds {list(seeds)}: give at least two different seeds to measure a spread")
    out = os.path.abspath(cfg.out_dir)
    for s in seeds:
        c = cfg.copy_and_resolve_references()
        c.seed, c.out_dir = int(s), seed_dir(out, int(s))
        if console:
            console(f"[demo] seed {s} -> {c.out_dir}")
        run_recipe(c, console)
    report, summary = write_seeds_report(out, [int(s) for s in seeds])
    if console:
        console(f"[demo] report over seeds {list(seeds)}: {report}")
    return summary


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n)) of `values`."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5


def write_seeds_report(out: str, seeds: Sequence[int]) -> tuple[str, dict[str, Any]]:
    """`out/report.md` and `out/seeds.json` from the `summary.json` of each seed's run."""
    runs = {}
    for s in seeds:
        with open(os.path.join(seed_dir(out, s), "summary.json"), encoding="utf-8") as f:
            runs[s] = json.load(f)["results"]
    first = runs[seeds[0]]
    models = list(first)
    levels = [b.removeprefix("synthetic_") for b in first[models[0]]]

    def acc(s: int, model: str, level: str) -> float:
        return float(runs[s][model][f"synthetic_{level}"]["avg_at_k"])

    table: dict[str, Any] = {}
    for m in models:
        row = {lv: dict(zip(("mean", "se"), _mean_se([acc(s, m, lv) for s in seeds]))) for lv in levels}
        row["mean_turns"] = _mean_se([sum(runs[s][m][f"synthetic_{lv}"]["mean_turns"] for lv in levels) / len(levels)
                                      for s in seeds])[0]
        table[m] = row
    diffs = {}
    for a, b in (("rl", "sft"), ("sft", "baseline"), ("rl", "rl_no_mask")):
        if a in models and b in models:
            for lv in levels:
                per_seed = [acc(s, a, lv) - acc(s, b, lv) for s in seeds]
                mean, se = _mean_se(per_seed)
                diffs[f"{a}-{b}/{lv}"] = {"mean": mean, "se": se, "per_seed": per_seed}
    summary = {"seeds": list(seeds), "accuracy": table, "differences": diffs,
               "per_seed": {s: {m: {lv: acc(s, m, lv) for lv in levels} for m in models} for s in seeds}}
    k = next(iter(first[models[0]].values())).get("samples_per_question", "K")
    lines = [f"# Mini-o3 at toy scale over {len(seeds)} training seeds ({', '.join(map(str, seeds))})", "",
             f"Avg@{k} (%) on the same held-out puzzles for every seed; mean +- standard error over the seeds "
             "(sample standard deviation / sqrt(seeds)). Each seed's own report: seed_<s>/report.md.", "",
             "| model | " + " | ".join(levels) + " | mean turns |", "|---" * (len(levels) + 2) + "|"]
    for m in models:
        cells = [f"{table[m][lv]['mean']:.1f} +- {table[m][lv]['se']:.1f}" for lv in levels]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {table[m]['mean_turns']:.2f} |")
    lines += ["", "Paired differences (the same seed's models; mean +- standard error over seeds):", "",
              "| difference | " + " | ".join(levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for pair in dict.fromkeys(key.split("/")[0] for key in diffs):
        cells = []
        for lv in levels:
            d = diffs[f"{pair}/{lv}"]
            cells.append(f"{d['mean']:+.1f} +- {d['se']:.1f} ({', '.join(f'{v:+.1f}' for v in d['per_seed'])})")
        lines.append(f"| {pair.replace('-', ' - ')} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", "", "| seed | model | " + " | ".join(levels) + " |", "|---" * (len(levels) + 2) + "|"]
    for s in seeds:
        for m in models:
            lines.append(f"| {s} | {m} | " + " | ".join(f"{acc(s, m, lv):.1f}" for lv in levels) + " |")
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "seeds.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return path, summary


# -- report ----------------------------------------------------------------------------------------------


def write_recipe_report(out: str, results: dict[str, dict], timings: dict[str, float],
                        cfg: ml_collections.ConfigDict) -> str:
    """report.md with accuracy per level for every model, turn curves, mean turns, the RL reward curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    k = cfg.eval.k
    levels = [b.removeprefix("synthetic_") for b in results[names[0]]["benchmarks"]]
    # accuracy per level
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        vals = [results[n]["benchmarks"][f"synthetic_{lv}"]["avg_at_k"] for lv in levels]
        ax.bar([i + j * width for i in range(len(levels))], vals, width, label=n)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], levels)
    ax.set_ylabel(f"Avg@{k} (%)")
    ax.set_title("Held-out synthetic puzzles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"))
    plt.close(fig)
    # accuracy vs test-time turn limit (hard level and all levels)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=120)
    for ax, subset, title in ((axes[0], ("hard",), "hard"), (axes[1], levels, "all levels")):
        for n in names:
            curves = [results[n]["benchmarks"][f"synthetic_{lv}"]["turn_curve"] for lv in subset]
            xs = sorted(int(t) for t in curves[0])
            ax.plot(xs, [sum(c[str(x)] for c in curves) / len(curves) for x in xs], marker="o", label=n)
        ax.axvline(cfg.rl.env.max_turns, color="gray", ls="--", lw=1)
        ax.set_xlabel("max turns at test time (dashed: RL training limit)")
        ax.set_ylabel(f"Avg@{k} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "turns.png"))
    plt.close(fig)
    # RL reward curve
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=120)
    for n in names:
        logdir = os.path.join(out, n, "logs")
        if n.startswith("rl") and os.path.exists(os.path.join(logdir, "metrics.jsonl")):
            recs = read_jsonl_metrics(logdir)
            ax.plot([r["step"] for r in recs], [r["reward_mean"] for r in recs], marker=".", label=n)
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean reward (training rollouts)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "reward.png"))
    plt.close(fig)

    held_out = from_block(ToyData, cfg.data, "data").eval_per_level
    lines = ["# Mini-o3 at toy scale: the measured run", "",
             f"Held-out puzzles: {held_out} per level; Avg@{k} at T=1.0, test limit "
             f"{cfg.eval.env.max_turns} turns; RL trained with {cfg.rl.env.max_turns} turns; training seed {cfg.seed}. "
             "Accuracy +- its standard error over the held-out puzzles (this run's evaluation noise; training "
             "seeds move the numbers further: `mini-o3 demo --seeds 0,1,2`).", "",
             "| model | " + " | ".join(levels) + " | mean turns | answered | over-turn |",
             "|---" * (len(levels) + 4) + "|"]
    for n in names:
        bm = results[n]["benchmarks"]
        acc = [f'{bm[f"synthetic_{lv}"]["avg_at_k"]:.1f} +- {bm[f"synthetic_{lv}"].get("avg_at_k_se", float("nan")):.1f}'
               for lv in levels]
        turns, answered, over = (sum(bm[f"synthetic_{lv}"][key] for lv in levels) / len(levels)
                                 for key in ("mean_turns", "answered_rate", "over_turn_rate"))
        lines.append(f"| {n} | " + " | ".join(acc)
                     + f" | {turns:.2f} | {answered:.0%} | {over:.0%} |")
    lines += ["", "![accuracy](accuracy.png)", "", "## Accuracy vs test-time turn limit", "", "![turns](turns.png)", ""]
    limits = sorted(int(t) for t in results[names[0]]["benchmarks"]["synthetic_hard"]["turn_curve"])
    lines += ["| model (hard) | " + " | ".join(str(t) for t in limits) + " |", "|---" * (len(limits) + 1) + "|"]
    for n in names:
        c = results[n]["benchmarks"]["synthetic_hard"]["turn_curve"]
        lines.append(f"| {n} | " + " | ".join(f"{c[str(t)]:.1f}" for t in limits) + " |")
    lines += ["", "## RL reward", "", "![reward](reward.png)", "", "## Trajectories", ""]
    lines += [f"- {n}: [eval/{n}/index.html](eval/{n}/index.html)" for n in names]
    lines += ["", "## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {v:.1f} |" for s, v in timings.items()]
    lines += [f"| total | {sum(timings.values()):.1f} |", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"timings": timings, "config": cfg.to_dict(),
                   "results": {n: {b: {k2: v for k2, v in m.items() if k2 != "by_category"}
                                   for b, m in r["benchmarks"].items()} for n, r in results.items()}},
                  f, indent=1, default=str)
    return path


__all__ = ["PuzzlePrompts", "Recipe", "packaged_or_path", "run_recipe", "run_seeds", "write_recipe_report", "write_seeds_report"]
