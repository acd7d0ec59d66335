"""`mini-o3 demo --turn-scaling` (configs/turn_scaling.py): does over-turn masking let a policy trained with few
turns keep gaining from more turns at test time? Mini-o3's central claim, measured on the toy.

    the packaged base -> cold-start SFT on long searches (4-7 look-alikes: 2-8 expert turns), 40 % of which give
         up after a random number of misses and guess (shipped: `turn_scaling.sft = "packaged"`)
      -> per RL seed, from that one SFT model: GRPO at a small training turn limit, with and without over-turn
         masking (the same seeds, prompts and settings otherwise)
      -> every model evaluated once at the largest test limit; accuracy at each smaller limit is read from the
         same episodes (`eval.metrics.correct_within`: up to the limit an episode is the same one)
      -> turn_scaling.md + turn_scaling.png: accuracy vs test-time turn limit with standard-error bands, mean
         turns and over-turn rates, masked - unmasked with its standard error

Why these puzzles: the demo's hard level has 2-3 look-alikes, so only 2-11 % of RL trajectories ran out of turns
and masking had almost nothing to act on. Here the expert checks look-alikes one by one until the bordered one,
so at a training limit of 4 turns ~45 % of expert-like searches cannot finish: the unmasked GRPO gives them
reward 0, the masked one leaves them out of the loss. Why the give-ups: the paper's mechanism is a choice between
answering early and searching on. A guess (one texture in four) beats running out of turns (0) without masking,
and loses to a search that finds the target (~1) with it; a cold-start model that never answers early gives
GRPO nothing to choose between (docs/demo.md, "Turn scaling", the designs without them).

Statistics: the models are evaluated on the same puzzles, so a puzzle is the unit. Accuracy at a limit is the
mean over puzzles of the puzzle's accuracy pooled over its samples and the RL seeds; its standard error is the
puzzles' standard deviation / sqrt(puzzles). The masked - unmasked difference is paired by puzzle the same way.
Per-seed values are reported beside the pooled ones.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from mini_o3_jax.eval.metrics import QuestionResult, SampleResult, correct_within
from mini_o3_jax.eval.run import read_results
from mini_o3_jax.train.metrics import read_jsonl_metrics

ARMS = ("mask", "no_mask")


def arm_name(arm: str, seed: int) -> str:
    return f"rl_{arm}_seed{seed}"


def run_turn_scaling(cfg: ml_collections.ConfigDict, console: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every stage (each resumable, as the demo's), then the report; returns its summary."""
    from mini_o3_jax.toy.recipe import Recipe

    recipe = Recipe(cfg, console)
    sets = recipe._timed("data", recipe.data)
    tok, proc = recipe._timed("tokenizer", recipe.tokenizer)
    sft = sft_model(cfg)
    if sft is None:
        init = recipe.seeing_model(tok, proc)
        sft = recipe._timed("sft", lambda: recipe.sft("sft", init, tok, proc, direct=False))
    seeds = [int(s) for s in cfg.turn_scaling.seeds]
    models = {"sft": sft}
    for seed in seeds:
        for arm in ARMS:
            name = arm_name(arm, seed)
            models[name] = recipe._timed(name, lambda n=name, a=arm, s=seed: recipe.rl(
                n, sft, tok, proc, mask=(a == "mask"), seed=s))
    for name, path in models.items():
        recipe._timed(f"eval_{name}", lambda n=name, p=path: recipe.evaluate(n, p, sets, tok, proc))
    summary = turn_scaling_summary(recipe.out, cfg, seeds)
    summary["timings"] = recipe.timings
    report = write_turn_scaling_report(recipe.out, summary)
    recipe.log(f"[demo] turn-scaling report: {report}")
    return {"report": report, **summary}


def sft_model(cfg: ml_collections.ConfigDict) -> str | None:
    """The SFT model both arms start from: `turn_scaling.sft` "packaged" (`TURN_SCALING_SFT`, this config's SFT
    stage as shipped), a checkpoint directory, or "" (None: the SFT stage trains it, ~18 min)."""
    from mini_o3_jax.infer import TURN_SCALING_SFT
    from mini_o3_jax.toy.recipe import packaged_or_path

    return packaged_or_path(cfg.turn_scaling.get("sft", ""), TURN_SCALING_SFT, "turn_scaling.sft", "to train it")


def _mean_se(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "se"} of per-puzzle values, in percent."""
    return {"mean": 100 * sum(values) / len(values), "se": 100 * _se(values)}


def _minus(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a - b per puzzle (a paired difference)."""
    return [x - y for x, y in zip(a, b, strict=True)]


def _se(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _results(out: str, model: str, benchmark: str) -> dict[str, QuestionResult]:
    return {r.doc_id: r for r in read_results(os.path.join(out, "eval", model, benchmark, "results.jsonl"),
                                              repair=False)}


def _per_puzzle(runs: Sequence[dict[str, QuestionResult]], doc_ids: Sequence[str], fn) -> list[float]:
    """Each puzzle's mean of `fn(sample)` over its samples in every run (the seeds pooled)."""
    out = []
    for d in doc_ids:
        values = [float(fn(s)) for run in runs for s in run[d].samples]
        out.append(sum(values) / len(values))
    return out


def turn_scaling_summary(out: str, cfg: ml_collections.ConfigDict, seeds: Sequence[int]) -> dict[str, Any]:
    """Accuracy, mean turns and over-turn rate at every test limit for SFT and both arms (pooled over seeds,
    and per seed), the paired masked - unmasked difference, and the RL runs' own over-turn rates."""
    bench = "synthetic_hard"
    limits = sorted(int(x) for x in cfg.eval.turn_limits)
    train_limit, top = int(cfg.rl.env.max_turns), max(limits)
    names = {"sft": ["sft"], **{arm: [arm_name(arm, s) for s in seeds] for arm in ARMS}}
    runs = {key: [_results(out, m, bench) for m in models] for key, models in names.items()}
    doc_ids = sorted(runs["sft"][0])
    for key, rs in runs.items():
        for model, r in zip(names[key], rs, strict=True):
            if sorted(r) != doc_ids or not doc_ids:
                raise ValueError(f"{out}/eval/{model}: {model} was evaluated on other puzzles than sft ({len(r)} vs "
                                 f"{len(doc_ids)}); delete its eval folder and rerun")

    def stats(rs: Sequence[dict[str, QuestionResult]]) -> dict[str, Any]:
        rows = {}
        for limit in limits:
            acc = _per_puzzle(rs, doc_ids, lambda s, L=limit: correct_within(s, L))
            over = _per_puzzle(rs, doc_ids, lambda s, L=limit: s.turns > L or s.over_turn)
            turns = _per_puzzle(rs, doc_ids, lambda s, L=limit: min(s.turns, L))
            # void: ended within the limit without an answer (a turn cut by its token budget, or no answer tag)
            void = _per_puzzle(rs, doc_ids, lambda s, L=limit: s.void and s.turns <= L)
            rows[str(limit)] = {"accuracy": 100 * sum(acc) / len(acc), "se": 100 * _se(acc),
                                "over_turn": 100 * sum(over) / len(over), "mean_turns": sum(turns) / len(turns),
                                "void": 100 * sum(void) / len(void)}
        return rows

    table = {name: stats(rs) for name, rs in runs.items()}
    per_seed = {arm: {str(s): {str(L): 100 * sum(a := _per_puzzle([r], doc_ids, lambda x, L=L: correct_within(x, L)))
                               / len(a) for L in (train_limit, top)} for s, r in zip(seeds, runs[arm], strict=True)}
                for arm in ARMS}
    diffs = {}
    for limit in limits:
        m = _per_puzzle(runs["mask"], doc_ids, lambda s, L=limit: correct_within(s, L))
        u = _per_puzzle(runs["no_mask"], doc_ids, lambda s, L=limit: correct_within(s, L))
        diffs[str(limit)] = _mean_se(_minus(m, u))
    # accuracy at the largest limit minus at the training limit, paired by puzzle; and masked - unmasked of it
    gains = {name: _minus(_per_puzzle(rs, doc_ids, lambda s: correct_within(s, top)),
                          _per_puzzle(rs, doc_ids, lambda s: correct_within(s, train_limit))) for name, rs in runs.items()}
    gain = {name: _mean_se(d) for name, d in gains.items()}
    gain["masked_minus_unmasked"] = _mean_se(_minus(gains["mask"], gains["no_mask"]))
    # episodes whose answer is a give-up guess (toy.expert.GIVE_UP) within the largest limit, and paired difference
    gave_up = {name: _per_puzzle(rs, doc_ids, gave_up_guess) for name, rs in runs.items()}
    guesses = {name: {"rate": (r := _mean_se(v))["mean"], "se": r["se"]} for name, v in gave_up.items()}
    guesses["masked_minus_unmasked"] = _mean_se(_minus(gave_up["mask"], gave_up["no_mask"]))
    training = {}
    for arm in ARMS:
        rows = []
        for s in seeds:
            logs = read_jsonl_metrics(os.path.join(out, arm_name(arm, s), "logs"))
            rows += [row for row in logs if "over_turn_rate" in row]

        def mean(key: str, rows=rows) -> float:
            values = [row[key] for row in rows if key in row]
            return 100 * sum(values) / len(values) if values else float("nan")

        training[arm] = {"over_turn_rate": mean("over_turn_rate"), "void_rate": mean("void_rate"),
                         "steps_logged": len(rows)}
    k = len(runs["sft"][0][doc_ids[0]].samples)
    from mini_o3_jax.toy.recipe import scene_config

    lo, hi = scene_config(cfg).hard_candidates
    return {"seeds": list(seeds), "puzzles": len(doc_ids), "samples_per_puzzle": k, "train_limit": train_limit,
            "lookalikes": f"{lo}-{hi}",
            "limits": limits, "table": table, "per_seed": per_seed, "masked_minus_unmasked": diffs, "gain": gain,
            "gave_up": guesses, "rl_training": training}


def gave_up_guess(sample: SampleResult) -> bool:
    """Whether the episode ended on a give-up guess (its final turn's thought has `GIVE_UP_WORDS`)."""
    from mini_o3_jax.toy.expert import GIVE_UP_WORDS

    last = sample.detail[-1] if sample.detail else {}
    return last.get("outcome") == "final" and GIVE_UP_WORDS in last.get("text", "").lower()


def write_turn_scaling_report(out: str, summary: dict[str, Any]) -> str:
    """turn_scaling.png (accuracy vs test-time turn limit, +-1 standard error bands) and turn_scaling.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits, table, train, top = summary["limits"], summary["table"], summary["train_limit"], max(summary["limits"])
    labels = {"sft": "cold-start SFT", "mask": "GRPO with over-turn masking", "no_mask": "GRPO without masking"}
    styles = {"sft": dict(color="gray", ls="--"), "mask": dict(color="C0"), "no_mask": dict(color="C3")}
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name in ("sft", "mask", "no_mask"):
        acc = [table[name][str(L)]["accuracy"] for L in limits]
        se = [table[name][str(L)]["se"] for L in limits]
        ax.plot(limits, acc, marker="o", label=labels[name], **styles[name])
        ax.fill_between(limits, [a - s for a, s in zip(acc, se, strict=True)],
                        [a + s for a, s in zip(acc, se, strict=True)], alpha=0.2, color=styles[name]["color"])
    ax.axvline(train, color="black", lw=0.8, ls=":")
    ax.text(train, ax.get_ylim()[0], " training limit", fontsize=8, va="bottom")
    ax.set_xlabel("test-time turn limit")
    ax.set_ylabel(f"Avg@{summary['samples_per_puzzle']} on hard, {summary['lookalikes']} look-alikes (%)")
    ax.set_title(f"Turn scaling, RL seeds {', '.join(map(str, summary['seeds']))} pooled (+-1 s.e.)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "turn_scaling.png"))
    plt.close(fig)

    def cell(name: str, limit: int) -> str:
        r = table[name][str(limit)]
        return f"{r['accuracy']:.1f} +- {r['se']:.1f}"

    lines = [f"# Turn scaling: over-turn masking on the toy (RL seeds {', '.join(map(str, summary['seeds']))})", "",
             f"{summary['puzzles']} held-out hard puzzles ({summary['lookalikes']} look-alikes), "
             f"{summary['samples_per_puzzle']} samples "
             f"each at T=1.0 per model; RL trained with a {train}-turn limit; every model evaluated once at {top} "
             "turns, accuracy at smaller limits read from the same episodes. Accuracy: mean +- standard error over "
             "the puzzles (the RL seeds pooled per puzzle).", "", "![turn scaling](turn_scaling.png)", "",
             "| test turn limit | " + " | ".join(str(L) for L in limits) + " |", "|---" * (len(limits) + 1) + "|"]
    for name in ("sft", "mask", "no_mask"):
        lines.append(f"| {labels[name]} | " + " | ".join(cell(name, L) for L in limits) + " |")
    d = summary["masked_minus_unmasked"]
    lines.append("| masked - unmasked (paired) | " + " | ".join(f"{d[str(L)]['mean']:+.1f} +- {d[str(L)]['se']:.1f}"
                                                               for L in limits) + " |")
    lines += ["", f"| model | mean turns at {train} / {top} | over-turn at {train} / {top} (%) | void at {top} (%) | "
              f"gave up and guessed (%) | accuracy gain {train} -> {top} turns | over-turn / void in RL training (%) |",
              "|---|---|---|---|---|---|---|"]
    for name in ("sft", "mask", "no_mask"):
        lo, hi, g = table[name][str(train)], table[name][str(top)], summary["gain"][name]
        rl, q = summary["rl_training"].get(name), summary["gave_up"][name]
        lines.append(f"| {labels[name]} | {lo['mean_turns']:.2f} / {hi['mean_turns']:.2f} | {lo['over_turn']:.1f} / "
                     f"{hi['over_turn']:.1f} | {hi['void']:.1f} | {q['rate']:.1f} +- {q['se']:.1f} | "
                     f"{g['mean']:+.1f} +- {g['se']:.1f} | "
                     + (f"{rl['over_turn_rate']:.1f} / {rl['void_rate']:.1f} ({rl['steps_logged']} steps)"
                        if rl else "-") + " |")
    g, q = summary["gain"]["masked_minus_unmasked"], summary["gave_up"]["masked_minus_unmasked"]
    lines += ["", f"Masked - unmasked, paired by puzzle: accuracy gain {train} -> {top} turns {g['mean']:+.1f} +- "
              f"{g['se']:.1f}; gave up and guessed {q['mean']:+.1f} +- {q['se']:.1f} points. Gave up: the final turn "
              "is a guess after giving up the search (the cold-start data's give-up searches, `toy.expert.GIVE_UP`), "
              "right one time in four by chance."]
    lines += ["", "Void: an episode that ended within the limit without an answer (its last turn cut by the "
              "per-turn token budget, or ending without `<answer>...</answer>`); it scores 0 in both arms, masked "
              "or not. A gap between the arms made of void episodes is the policy losing its output format, not "
              "answering earlier."]
    lines += ["", "Per RL seed (accuracy at the training limit / the largest limit):", ""]
    for arm in ARMS:
        seeds = summary["per_seed"][arm]
        lines.append(f"- {labels[arm]}: " + "; ".join(
            f"seed {s}: {v[str(train)]:.1f} / {v[str(top)]:.1f}" for s, v in seeds.items()))
    timings = summary.get("timings") or {}
    if timings:
        lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        lines.append(f"| total | {sum(timings.values()):.1f} |")
    path = os.path.join(out, "turn_scaling.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "turn_scaling.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return path
