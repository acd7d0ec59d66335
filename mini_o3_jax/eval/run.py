"""`mini-o3 eval`: K samples per question over benchmarks, scored, streamed to disk, resumable.

    metrics = run_eval(model, tokenizer, processor, {"vstar": records}, EvalConfig(k=32), "runs/eval")

A run directory holds, per benchmark, `results.jsonl` (one line per finished question: every sample's
answer, score, turns, flags and per-turn text/boxes/crop paths) and the saved images; then
`metrics.json`, `results.md`, `turn_curve.png`, `index.html` and one browser page per benchmark.
Each question's line is written as soon as its K samples are scored, and a re-run skips the questions
already written, so an interrupted run loses at most the questions in flight. Sampling keys depend only
on (seed, benchmark, doc_id, sample), so the resumed run samples what the uninterrupted one would.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from mini_o3_jax import storage
from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.agent.settings import resolve_agent
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.atomic_io import write_json, write_text
from mini_o3_jax.config_files import from_block
from mini_o3_jax.data.records import BadRecord, Record
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.eval.metrics import QuestionResult, SampleResult, summarize_benchmark
from mini_o3_jax.eval.report import write_reports
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.parallel import hosts
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
from mini_o3_jax.scoring.judge import JudgeItem
from mini_o3_jax.scoring.judge_config import JudgeConfig, endpoint_url, judge_from_config
from mini_o3_jax.scoring.rules import SCORERS
from mini_o3_jax.scoring.scorer import Scorer

# Config-file values that mean "not set here": the checkpoint's agent.json decides, else the released eval
# (`agent.settings.resolve_agent`, the rule `mini-o3 infer` follows), per group of the eval block. configs/eval.py holds
# these by default.
AUTO_AGENT: dict[str, dict[str, Any]] = {
    "env": {"max_turns": 0, "max_context": 0, "min_pixels": 0, "max_pixels": 0, "context_guard": -1,
            "system_prompt": "auto"},
    "rollout": {"max_turn_tokens": 0},
}


def explicit_agent_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The agent settings an eval block's `env` and `rollout` groups set themselves (not left out or at
    `AUTO_AGENT`), flat, "" for the system prompt read as None (no system prompt)."""
    out = {}
    for group, auto in AUTO_AGENT.items():
        given = settings.get(group) or {}
        out.update({k: given[k] for k in auto if k in given and given[k] != auto[k]})
    if "system_prompt" in out:
        out["system_prompt"] = out["system_prompt"] or None
    return out


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The released eval (spec §5): Avg@32 at T=1.0, top-p 1, 12 turns, 12 images, 32k context, every
    answer judged by an LLM judge (GPT-4o in the paper); "auto" / "choice" / "exact" / "numeric" are
    offline rule scorers whose numbers are not the paper's.

    The `eval` block of a config maps onto it 1:1 (`from_config`): its `env` group is the episodes'
    EnvConfig (`max_images` 0: as many as turns), its `rollout` group the engine's EngineConfig with the
    `sampling` group; the engine's cache row (`max_len`) and environment follow `env`.
    """

    k: int = 32
    seed: int = 0
    scorer: str = "judge"  # or offline: "auto" (choice for multiple choice, else exact), or a rule scorer
    turn_limits: tuple[int, ...] = (4, 8, 12, 16, 24, 32)  # the accuracy-vs-turns curve (<= max_turns)
    limit: int = 0  # questions per benchmark (0: all)
    save_crops: int = 4  # samples per question whose crops are saved as images (-1: all)
    # the released eval's 12 turns, as many images; no EXIF rotation, as in the released eval (spec §2)
    env: EnvConfig = EnvConfig(max_turns=12, max_images=0)
    rollout: EngineConfig = EngineConfig(slots=64)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"EvalConfig: k={self.k}; expected >= 1")
        if self.scorer not in ("auto", "judge", *SCORERS):
            raise ConfigError(f"EvalConfig.scorer = {self.scorer!r}; expected 'judge' (the paper's), or offline "
                              f"'auto' or one of {sorted(SCORERS)}")
        object.__setattr__(self, "rollout", dataclasses.replace(self.rollout, env=self.env,
                                                                max_len=self.env.max_context))

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], *, checkpoint: str | os.PathLike | None = None) -> EvalConfig:
        """From an ml-collections `eval` block (`config_files.from_block`: an unknown key is an error).

        The agent settings (turns, context, guard, tokens a turn, pixels, system prompt) that the block
        sets win; those it leaves out or at `AUTO_AGENT` come from `checkpoint`'s agent.json when it has
        one (a model trained with another pixel budget or prompt only behaves when run the same way),
        else from the released eval, by `agent.settings.resolve_agent`, exactly as `mini-o3 infer` resolves them.
        """
        agent = resolve_agent(checkpoint, explicit_agent_settings(settings))
        block = {**settings}
        for group, auto in AUTO_AGENT.items():
            block[group] = {**(settings.get(group) or {}), **{k: agent[k] for k in auto}}
        return from_block(cls, block, "eval")

    @property
    def curve_limits(self) -> list[int]:
        turns = self.env.max_turns
        return sorted({t for t in self.turn_limits if 1 <= t <= turns} | {turns})

    def settings(self) -> dict[str, Any]:
        """Every setting by its flat name, as metrics.json and run.json have always listed them."""
        e, r, s = self.env, self.rollout, self.rollout.sampling
        out = {"k": self.k, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "seed": self.seed,
               "max_turns": e.max_turns, "max_images": e.max_images, "max_context": e.max_context,
               "context_guard": e.context_guard, "min_pixels": e.min_pixels, "max_pixels": e.max_pixels,
               "max_turn_tokens": r.max_turn_tokens, "system_prompt": e.system_prompt,
               "exif_transpose": e.exif_transpose, "observation_numbering": e.observation_numbering,
               "scorer": self.scorer, "turn_limits": self.turn_limits, "limit": self.limit,
               "save_crops": self.save_crops, "slots": r.slots, "decode_chunk": r.decode_chunk, "workers": r.workers}
        if e.observation_numbering == "released":  # the default: listed only when changed, as before
            del out["observation_numbering"]
        return out

    def fingerprint(self) -> dict[str, Any]:
        """The settings a finished question's samples depend on: a resumed run must match them."""
        skip = {"limit", "save_crops", "slots", "decode_chunk", "workers", "turn_limits"}
        if not self.env.exif_transpose:  # the default: runs saved before the option existed still resume
            skip.add("exif_transpose")
        return {k: v for k, v in self.settings().items() if k not in skip}


def question_seed(seed: int, benchmark: str, doc_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{benchmark}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _safe(doc_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id)[:60]
    return f"{stem}-{hashlib.sha1(doc_id.encode()).hexdigest()[:8]}"


def _save_image(img: Image.Image, path_no_ext: str, run_dir: str) -> str:
    """PNG for small images (synthetic glyphs stay sharp), JPEG q90 for large ones; returns the relative path."""
    w, h = img.size
    path = path_no_ext + (".png" if w * h <= 512 * 512 else ".jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".png"):
        img.save(path)
    else:
        img.convert("RGB").save(path, quality=90)
    return os.path.relpath(path, run_dir)


def read_results(path: str, *, repair: bool = True) -> list[QuestionResult]:
    """The finished questions of a results.jsonl; a line cut by a crash is removed from the file (`repair`),
    or only skipped when the file is another process's to write."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    out, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("incomplete line")
            out.append(QuestionResult.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            break
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return out


PART_GLOB = "results.host*.jsonl"  # one per process of a multi-host run, merged into results.jsonl by process 0


def _part_file(bench_dir: str) -> str:
    return os.path.join(bench_dir, f"results.host{jax.process_index()}.jsonl")


def merge_parts(results_file: str, order: Sequence[str] = ()) -> list[QuestionResult]:
    """Fold the per-process files beside `results_file` into it (one atomic rewrite, then the parts are removed)
    and return every finished question. A question already there is kept once; new ones follow in `order` (doc
    ids, the benchmark's order), so the merged file does not depend on which host finished first. A part cut
    by a crash loses only its cut line; a crash mid-merge leaves parts that the next merge folds in again."""
    parts = sorted(glob.glob(os.path.join(os.path.dirname(results_file), PART_GLOB)))
    done = read_results(results_file)
    if not parts:
        return done
    seen = {r.doc_id for r in done}
    new: dict[str, QuestionResult] = {}
    for part in parts:
        for r in read_results(part, repair=False):
            if r.doc_id not in seen:
                new.setdefault(r.doc_id, r)
    rank = {d: i for i, d in enumerate(order)}
    merged = done + sorted(new.values(), key=lambda r: rank.get(r.doc_id, len(rank)))
    write_text(results_file, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in merged))
    for part in parts:
        os.remove(part)
    return merged


def judge_config(settings: Mapping[str, Any] | None = None) -> JudgeConfig:
    """The judge of an eval run: the config's `judge` block over the environment (`JudgeConfig.from_env`).

    Fails at once, in one line, when no judge is configured, so that `mini-o3 eval` stops before loading
    the model rather than after the first questions' rollouts.
    """
    return judge_from_config(settings, unset=(
        "eval.scorer is 'judge' (the paper's GPT-4o judge scores every answer) but no judge is configured: "
        "set MINI_O3_JUDGE_URL (any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1, with "
        "MINI_O3_JUDGE_MODEL) or the released Azure variables END_POINT, API_KEY and API_VERSION, or "
        "--config.judge.url=...; or score offline by rule with --config.eval.scorer=auto "
        "(or choice / exact / numeric), whose numbers are not the paper's"))


def _rejudge(scorer: Scorer, results: Mapping[str, list[QuestionResult]], files: Mapping[str, str],
             console: Callable[[str], None] | None) -> None:
    """Ask the judge again for samples it failed on in an earlier invocation (no re-rollout), then
    rewrite those results files in one atomic replace. The judge sees the raw problem and solution, as
    the release: a bare letter for multiple choice, no option text added (spec §4.5)."""
    for b, rs in results.items():
        failed = [r for r in rs if any(s.score is None for s in r.samples)]
        if not failed:
            continue
        if console:
            console(f"{b}: asking the judge again for {len(failed)} question(s) it failed on before")
        redo = [[x for x in r.samples if x.score is None] for r in failed]
        futures = [scorer.submit([JudgeItem(r.problem, r.solution, x.answer) for x in xs])
                   for r, xs in zip(failed, redo)]
        for xs, future in zip(redo, futures):  # every judge request has a wall deadline: results always come
            for smp, v in zip(xs, future.result().as_list()):
                smp.score = v
        write_text(files[b], "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rs))


class _Questions(Sequence):
    """Records read from the benchmark only when the engine starts them (a benchmark may not fit in memory)."""

    def __init__(self, benchmarks: Mapping[str, Sequence[Record]], todo: Sequence[tuple[str, int, Record]]):
        self.benchmarks, self.todo = benchmarks, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, e: int) -> Record:
        b, i, _ = self.todo[e]
        return self.benchmarks[b][i]


def _sample(traj: Trajectory, crops: dict[int, str]) -> SampleResult:
    detail = []
    for t in traj.turns:
        d = {"text": t.text, "outcome": t.outcome}
        if t.box is not None:
            d.update(source=t.source, box=list(t.box), pixel_box=list(t.pixel_box) if t.pixel_box else None)
        if t.observation is not None and t.observation in crops:
            d["crop"] = crops[t.observation]
        if t.error:
            d["error"] = t.error
        detail.append(d)
    return SampleResult(score=None, answer=traj.answer, turns=traj.num_turns, over_turn=traj.over_turn,
                        over_length=traj.over_length, void=traj.void, tokens=len(traj),
                        response_tokens=traj.sampled_tokens, detail=detail)


def run_eval(
    model: Qwen25VL,
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    benchmarks: Mapping[str, Sequence[Record]],
    config: EvalConfig,
    out_dir: str | os.PathLike,
    *,
    judge: JudgeConfig | None = None,
    bad_records: Mapping[str, Sequence[BadRecord]] | None = None,
    label: str = "this run",
    console: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Evaluate (or finish evaluating) every benchmark into `out_dir`; returns the metrics dict.

    On a multi-host run every process calls this with the same arguments (`out_dir` on a filesystem they
    share): each samples and scores its own share of the questions on its own devices, appending them to
    its own `results.host<i>.jsonl`; process 0 then folds those into `results.jsonl` and writes the metrics
    and reports, which every process returns. Sampling keys depend only on the question, so any number of
    hosts gives the samples one process would."""
    run_dir = os.fspath(out_dir)
    if storage.is_uri(run_dir):
        raise ConfigError(f"out_dir = {run_dir}: eval appends each question's result as it finishes (so a killed run "
                          "resumes where it stopped), which an object store cannot do; give a local or shared "
                          "directory (a GCS FUSE mount works) and copy it to the bucket afterwards")
    multi = hosts.multi_host()
    if multi:
        hosts.check_shared(run_dir, "out_dir")
    os.makedirs(run_dir, exist_ok=True)
    if multi:  # process 0 records the settings; every host then compares: one verdict everywhere
        if hosts.is_main() and not os.path.exists(os.path.join(run_dir, "run.json")):
            write_json(os.path.join(run_dir, "run.json"), json.loads(json.dumps(config.fingerprint())), indent=1)
        hosts.barrier("eval:settings")
    _check_run(run_dir, config)
    files = {b: os.path.join(run_dir, b, "results.jsonl") for b in benchmarks}
    scorer = Scorer(config.scorer, (judge or judge_config()) if config.scorer == "judge" else None)

    def fold_in() -> None:
        """Questions an earlier multi-host run left in per-host files join results.jsonl; unjudged ones are
        judged again. Process 0's job: it owns the shared files."""
        for b in benchmarks:
            os.makedirs(os.path.join(run_dir, b), exist_ok=True)
            merge_parts(files[b])
            if bad_records is not None and b in bad_records:
                write_text(os.path.join(run_dir, b, "bad_records.jsonl"),
                           "".join(json.dumps(dataclasses.asdict(bad), default=str) + "\n" for bad in bad_records[b]))
        if config.scorer == "judge":
            _rejudge(scorer, {b: read_results(files[b]) for b in benchmarks}, files, console)

    try:
        hosts.main_first(fold_in, f"{run_dir}: reading the finished questions")
    except BaseException:
        scorer.close()
        raise
    results: dict[str, list[QuestionResult]] = {}
    # (benchmark, index, the record without its image): the images stay on disk until a slot needs them
    todo: list[tuple[str, int, Record]] = []
    for b, records in benchmarks.items():
        results[b] = read_results(files[b], repair=not multi)
        finished = {r.doc_id for r in results[b]}
        n = min(len(records), config.limit) if config.limit else len(records)
        for i in range(n):
            rec = records[i]
            if rec.doc_id not in finished:
                todo.append((b, i, dataclasses.replace(rec, image=b"")))
    if console and any(results.values()):
        console(f"resuming {run_dir}: {sum(map(len, results.values()))} questions already done, {len(todo)} to go")
    order = {b: [rec.doc_id for b2, _, rec in todo if b2 == b] for b in benchmarks}
    if multi:  # this host's share: every host computed the same `todo` from the same files
        todo = todo[jax.process_index()::jax.process_count()]
        files = {b: _part_file(os.path.join(run_dir, b)) for b in benchmarks}

    t_start = time.perf_counter()
    engine = RolloutEngine(model, tokenizer, processor, config.rollout) if todo else None
    k = config.k
    samples: dict[int, dict[int, SampleResult]] = {}
    scoring: dict[int, concurrent.futures.Future] = {}  # questions whose K answers are being scored
    images: dict[int, str] = {}
    correct = total = 0
    bar = tqdm(total=len(todo) * k, desc="eval", unit="sample", disable=console is None, smoothing=0.05)

    def finish(e: int, scores: list[float | None]) -> None:
        nonlocal correct, total
        b, _, rec = todo[e]
        res = QuestionResult(b, rec.doc_id, rec.category, [samples[e][s] for s in range(k)], rec.problem,
                             rec.solution, rec.answer_text, config.scorer if config.scorer != "auto" else rec.scorer,
                             images.get(e, ""))
        for s, v in zip(res.samples, scores):
            s.score = v
        with open(files[b], "a", encoding="utf-8") as f:
            f.write(json.dumps(res.to_json(), ensure_ascii=False) + "\n")
        results[b].append(res)
        del samples[e]
        correct += sum(v == 1.0 for v in scores)
        total += len(scores)
        bar.set_postfix(acc=f"{correct / max(total, 1):.3f}")

    def on_trajectory(e: int, s: int, traj: Trajectory) -> None:
        b, _, rec = todo[e]
        folder = os.path.join(run_dir, b, "images", _safe(rec.doc_id))
        if e not in images:
            images[e] = _save_image(traj.images[0], os.path.join(folder, "original"), run_dir)
        crops = {}
        if config.save_crops < 0 or s < config.save_crops:
            for t in traj.turns:
                if t.observation is not None and t.observation < len(traj.images):
                    crops[t.observation] = _save_image(traj.images[t.observation],
                                                       os.path.join(folder, f"s{s}_obs{t.observation}"), run_dir)
        samples.setdefault(e, {})[s] = _sample(traj, crops)
        bar.update(1)
        if len(samples[e]) == k:
            scoring[e] = scorer.submit([JudgeItem(rec.problem, rec.solution, samples[e][i].answer) for i in range(k)],
                                       rule=rec.scorer)
        collect()

    def collect(block: bool = False) -> None:
        """Write the questions whose scores are in, on this thread; `block` waits for at least one. Waiting has
        no limit of its own: every judge request has a wall deadline (`JudgeConfig.timeout_s`)."""
        if block:
            concurrent.futures.wait(scoring.values(), return_when=concurrent.futures.FIRST_COMPLETED)
        for e in [e for e, f in scoring.items() if f.done()]:
            finish(e, scoring.pop(e).result().as_list())

    try:
        if engine is not None:
            seeds = [question_seed(config.seed, b, light.doc_id) for b, _, light in todo]
            engine.run(_Questions(benchmarks, todo), samples=k, seed=config.seed, seeds=seeds,
                       on_trajectory=on_trajectory, collect=False)
            while scoring:
                collect(block=True)
        sampled = engine.stats.sampled_tokens if engine is not None else 0
    finally:
        bar.close()
        if engine is not None:
            engine.close()
        scorer.close()
    last_judge_error = scorer.last_error
    wall = time.perf_counter() - t_start
    if multi:  # one record of the invocation: every host's questions and tokens, the slowest host's time
        every = hosts.gathered(np.array([len(todo), sampled, wall], np.float64))
        questions, sampled, wall = int(every[:, 0].sum()), int(every[:, 1].sum()), float(every[:, 2].max())
    else:
        questions = len(todo)

    def summarize() -> dict[str, Any]:
        nonlocal results
        with open(os.path.join(run_dir, "runs.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"questions": questions, "samples": questions * k, "sampled_tokens": sampled,
                                "wall_s": wall, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        if multi:
            results = {b: merge_parts(os.path.join(run_dir, b, "results.jsonl"), order[b]) for b in benchmarks}
        metrics = compute_metrics(run_dir, config, {b: results[b] for b in benchmarks}, bad_records,
                                  judge_model=scorer.judge.config.model if scorer.judge is not None else None)
        write_reports(run_dir, metrics, results, label=label)
        return metrics

    metrics = hosts.main_first(summarize, f"{run_dir}: writing metrics and reports")
    if metrics is None:  # another host: process 0 wrote them for every host
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
    if console:
        for b, m in metrics["benchmarks"].items():
            console(f"{b}: Avg@{k} {m.get('avg_at_k', float('nan')):.1f} over {m['questions']} questions, "
                    f"mean turns {m.get('mean_turns', 0):.2f}, scorer {m.get('scorer', config.scorer)}"
                    + (f", {m['judge_failed']} sample(s) unjudged (counted wrong in Avg@K; accuracy over the "
                       f"judged ones {m['accuracy_judged']:.1f})" if m.get("judge_failed") else ""))
            if m.get("samples") and m.get("void_rate") == 1.0:
                console(f"warning: {b}: every sample is void (no <answer>): is the model run as it was trained? "
                        "A checkpoint's agent.json sets its system prompt, pixel budget and limits; settings "
                        "given in the config win over it")
        console(f"wrote {os.path.join(run_dir, 'metrics.json')}, results.md, turn_curve.png, index.html")
        if unjudged(metrics):
            console(f"warning: the judge at {scorer.endpoint or '?'} failed on "
                    f"{unjudged(metrics)} sample(s) after its retries; last error: {last_judge_error}")
    return metrics


def unjudged(metrics: Mapping[str, Any]) -> int:
    """Samples of a finished run the judge gave no score (after its retries): a re-run asks again for them."""
    return sum(int(m.get("judge_failed", 0)) for m in metrics["benchmarks"].values())


def unjudged_message(metrics: Mapping[str, Any], judge: JudgeConfig | None) -> str | None:
    """The one line `mini-o3 eval` fails with while samples are unjudged, or None when all are scored."""
    n = unjudged(metrics)
    if not n:
        return None
    where = f" (the judge at {endpoint_url(judge)} failed on them after {judge.attempts} attempt(s) each)" if judge else ""
    return (f"{n} samples unjudged; re-run to retry them{where}: the same command keeps the finished questions "
            "and sends only the unjudged samples to the judge again")


def compute_metrics(run_dir: str, config: EvalConfig, results: Mapping[str, Sequence[QuestionResult]],
                    bad_records: Mapping[str, Sequence[BadRecord]] | None = None,
                    judge_model: str | None = None) -> dict[str, Any]:
    """metrics.json from the results files (and the runs log for wall time and sampled tokens).

    Each benchmark records the scorer(s) its samples were scored by ("judge" or a rule scorer's name), and
    `judge_model` the judge's model, so that results.md can say whether the numbers are the paper's kind."""
    runs = []
    path = os.path.join(run_dir, "runs.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            runs = [r for r in map(_json_line, f) if r is not None]
    benches = {}
    for b, rs in results.items():
        m = summarize_benchmark(rs, config.curve_limits)
        m["bad_records"] = len(bad_records.get(b, [])) if bad_records else 0
        m["scorer"] = ",".join(sorted({r.scorer for r in rs if r.scorer})) or config.scorer
        m.update(judged_accuracy(rs))
        benches[b] = m
    metrics = {
        "config": {**config.settings(), "max_images": config.env.image_limit},
        "benchmarks": benches,
        "wall_s": sum(r["wall_s"] for r in runs),
        "sampled_tokens": sum(r["sampled_tokens"] for r in runs),
        "invocations": len(runs),
        "judge_model": judge_model,
    }
    write_json(os.path.join(run_dir, "metrics.json"), metrics, indent=1)
    return metrics


def _json_line(line: str) -> dict | None:
    """One runs.jsonl record; None for a blank line or one a kill cut short (the log is only appended to)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and {"wall_s", "sampled_tokens"} <= set(record) else None


def judged_accuracy(results: Sequence[QuestionResult]) -> dict[str, Any]:
    """`samples_judged` and `accuracy_judged`, the % correct over the samples that have a score (Avg@K counts
    an unjudged sample as wrong, as the paper's judge had no abstentions; this shows what was measured)."""
    scored = [s.score for r in results for s in r.samples if s.score is not None]
    return {"samples_judged": len(scored),
            "accuracy_judged": 100.0 * sum(v > 0.5 for v in scored) / len(scored) if scored else float("nan")}


def _check_run(run_dir: str, config: EvalConfig) -> None:
    """Refuse to mix samples drawn under different settings in one run directory."""
    path = os.path.join(run_dir, "run.json")
    mine = json.loads(json.dumps(config.fingerprint()))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ConfigError(f"{run_dir} holds results from other settings {diff} (saved, now); "
                              "use another --config.out_dir or the same settings to resume")
        return
    write_json(path, mine, indent=1)
