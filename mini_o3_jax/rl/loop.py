"""`mini-o3 rl`: Mini-o3's GRPO stage (spec §4) on the rollout engine.

One RL step:
  1. take `prompts_per_step` prompts, roll out `samples` trajectories each (engine, T=1.0);
  2. score them: rule-based, or the LLM judge submitted right after rollout (async, batched);
  3. GRPO advantages per prompt group over all samples, over-turn ones included;
  4. dynamic sampling: drop groups whose rewards do not vary or whose judge failed, and roll out
     more prompts until `prompts_per_step` groups survive (at most `max_gen_batches` rounds); a batch
     whose every answer the judge failed on stops the run (JudgeError: the judge is down, not the model);
  5. old log-probs of every trajectory under the current weights, then one optimizer update per
     mini-batch of `mini_batch_prompts` groups, the loss weighted seq-mean-token-mean with
     over-turn trajectories' tokens removed but counted (spec §4.3).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.config_files import from_block
from mini_o3_jax.data.records import Record
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.parallel.hosts import (
    agree_max,
    agree_sum,
    gathered,
    host_local_copier,
    local_mesh,
    multi_host,
)
from mini_o3_jax.parallel.rules import state_shardings
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rl.data import prompt_indices, take
from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
from mini_o3_jax.scoring.scorer import Scorer, asked_of, trajectory_items
from mini_o3_jax.train.advantages import grpo_advantages, valid_groups
from mini_o3_jax.train.batch import batch_tokens, examples_from_trajectories, micro_batches
from mini_o3_jax.train.checkpoint import PreemptionGuard
from mini_o3_jax.train.metrics import StepTimer
from mini_o3_jax.train.session import build_model, logprob_temperature, open_session
from mini_o3_jax.train.settings import train_settings


def check_judge(scorer: Scorer, step: int, asked: np.ndarray, failed: np.ndarray) -> None:
    """Stop the run (JudgeError) when the judge failed on every answer of a rollout batch it was asked about
    (`asked`: `scoring.scorer.asked_of`, over every host's answers): more rollouts would only repeat that, and
    the message says where to fix it."""
    scorer.check_judge(asked, failed, where=f"rl step {step}", batch="a rollout batch",
                       fix="Check reward.judge (url, model, api_key, api_version) or MINI_O3_JUDGE_URL / END_POINT; "
                           "re-running resumes from the last checkpoint")


@dataclasses.dataclass(frozen=True)
class RLRollout(EngineConfig):
    """The `rollout` block of an RL config: the engine's settings (its `env` is the `env` block) and the
    size of a GRPO group."""

    samples: int = 16  # rollouts per prompt


@dataclasses.dataclass(frozen=True)
class RLData:
    """The `data` block of an RL config: a prompt file (`path`), prepared registry sets (`sets`), or, with
    neither, puzzles generated from a `toy.scene.PRESETS` scene (`synthetic`: `mini_o3_jax.toy.sources`)."""

    path: str = ""  # released JSON: images / problem / solution / data_source / doc_id
    image_root: str = ""  # $BASE_IMAGE_DIR
    allow_absolute_images: bool = False  # True: also read absolute image paths outside image_root
    sets: str = ""  # comma-separated prepared sets (`mini-o3 data prepare`), read lazily
    tfds_dir: str = "data/tfds"
    synthetic: str = ""  # a toy scene preset; "": read path / sets
    synthetic_levels: tuple[str, ...] = ()  # the levels in turn; empty: all of the scene's


def rl_data(cfg: ml_collections.ConfigDict) -> RLData:
    """`cfg.data` typed: an unknown key is a ConfigError naming data.<key>."""
    return from_block(RLData, cfg.data, "data")


def rollout_settings(cfg: ml_collections.ConfigDict) -> RLRollout:
    """`cfg.rollout` (with its `sampling` group) and `cfg.env`, typed and checked."""
    return from_block(RLRollout, cfg.rollout, "rollout", env=from_block(EnvConfig, cfg.env, "env"))


def no_varying_groups(step: int, gen: int, rewards: np.ndarray, failed: int, cfg: ml_collections.ConfigDict) -> str:
    """The one-line explanation when a step's rollouts leave GRPO nothing to learn from, and what to change."""
    r, t = cfg.rollout, cfg.train
    seen = f"rl step {step}: no prompt group with varying rewards in {gen} rollout batch(es) of " \
           f"{t.prompts_per_step} prompt(s) x {r.samples} sample(s) (mean reward {rewards.mean():.3f}"
    if failed == len(rewards):
        return f"{seen}; the judge failed on every answer): check the judge endpoint (reward.judge, MINI_O3_JUDGE_URL)"
    return (f"{seen}): GRPO learns only from prompts whose samples score differently. Start from a model that "
            f"sometimes answers right (model_path), draw more samples or prompts (rollout.samples, "
            f"train.prompts_per_step, train.max_gen_batches), check the reward (reward.kind={cfg.reward.kind!r}), "
            "or set train.dynamic_sampling=False to keep such steps (they make no update)")


def run_rl(
    cfg: ml_collections.ConfigDict,
    prompts: Sequence[Record],
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    console=print,
    side_files_from: str | None = None,
    label: str = "rl",
) -> dict:
    """Train for `cfg.train.steps` RL steps; resumable from `cfg.out_dir`. Returns the last metrics.
    `label` names the progress bar."""
    t, r = train_settings(cfg, "ppo"), rollout_settings(cfg)
    n, per_step, mini = r.samples, t.prompts_per_step, t.mini_batch_prompts
    if per_step % mini:
        raise ConfigError(f"train.prompts_per_step={per_step} is not a multiple of train.mini_batch_prompts={mini}")
    updates_per_step = per_step // mini
    logprob_temperature(cfg, "ppo")  # one temperature for sampling and log-probs: checked before any loading
    judge = Scorer.check(cfg.reward.kind, cfg.reward.get("judge"))  # the judge's settings, before any loading
    session = open_session(cfg, "ppo", t.steps * updates_per_step, console=console)
    trainer = session.trainer
    # RL steps are counted on their own: a step whose dynamic sampling kept fewer groups than
    # `prompts_per_step` makes fewer optimizer updates.
    rl_step = int(session.meta.get("rl_step", trainer.step // updates_per_step))
    position = int(session.meta.get("prompt_position", 0))
    # the KL term's reference policy: the model RL started from (`model_path`), also after a resume
    ref_params = trainer.trainable_params(build_model(cfg, trainer.mesh)) if trainer.config.ppo.kl_coef else None
    scorer = Scorer(cfg.reward.kind, judge)
    # multi-host: each host rolls out, scores and builds the rows of its own share of the prompt groups
    share, hosts = trainer.row_share
    if hosts != jax.process_count():
        raise ConfigError(f"mesh {dict(trainer.mesh.shape)}: rows replicated across hosts (a tensor axis spanning "
                          "hosts); RL needs every host to own distinct rows: put the tensor axis within a host")
    owners = [int(p) for p in np.argsort(gathered(np.array(share)))] if hosts > 1 else [0]  # process of share k
    rollout_model = _rollout_model(trainer)
    # the rollout keeps each trajectory's patch rows for the updates (no second pass through the processor)
    engine = RolloutEngine(rollout_model(), tokenizer, processor, dataclasses.replace(r, keep_patches=True))
    spec = t.batch_spec(tokenizer.endoftext_id, trainer.data_ways)
    spec = dataclasses.replace(spec, micro_batch=spec.micro_batch // hosts)
    agree = agree_max if hosts > 1 else None
    metrics: dict = {}
    bar = tqdm(total=t.steps, initial=rl_step, desc=label, unit="step", disable=console is None)
    try:
        with PreemptionGuard() as guard:
            while rl_step < t.steps:
                timer = StepTimer()
                timer.start()
                engine.set_model(rollout_model())
                # -- rollout + rewards with dynamic sampling
                kept: list[tuple[list[Trajectory] | None, np.ndarray]] = []  # (this host's samples, advantages)
                all_stats: list[np.ndarray] = []
                all_rewards: list[np.ndarray] = []
                all_failed: list[np.ndarray] = []
                failed_all = 0
                rollout_s = judge_wait_s = 0.0
                sampled = 0
                gen = 0
                while len(kept) < per_step and gen < t.max_gen_batches:
                    batch_prompts = take(prompts, prompt_indices(len(prompts), position, per_step, cfg.seed))
                    position += per_step
                    mine = batch_prompts[share::hosts]  # global groups share, share + hosts, ...
                    t0 = time.perf_counter()
                    trajs = engine.run(mine, samples=n, seed=cfg.seed * 1_000_003 + rl_step * 1009 + gen
                                       + share * 7_919)
                    rollout_s += time.perf_counter() - t0
                    sampled += engine.stats.sampled_tokens
                    items = trajectory_items([p for p in mine for _ in range(n)], trajs)
                    future = scorer.submit(items)  # the judge is asked by the host that owns the answer
                    t0 = time.perf_counter()
                    rewards, failed = future.result()
                    judge_wait_s += time.perf_counter() - t0
                    # every host sees every group's scores, so all take the same decisions below
                    asked = asked_of(items)
                    per_group = np.concatenate([rewards[:, None], failed[:, None], asked[:, None],
                                                trajectory_stats(trajs)], axis=1).reshape(len(mine), n, -1)
                    every = share_groups(per_group, owners, len(batch_prompts)).reshape(-1, per_group.shape[-1])
                    rewards, failed, asked = every[:, 0], every[:, 1].astype(bool), every[:, 2].astype(bool)
                    check_judge(scorer, rl_step, asked, failed)
                    groups = np.repeat(np.arange(len(batch_prompts)), n)
                    adv = grpo_advantages(rewards, groups)
                    keep = valid_groups(rewards, groups, failed) if t.dynamic_sampling else ~failed
                    all_stats.append(every[:, 3:])
                    all_rewards.append(rewards)
                    all_failed.append(failed)
                    failed_all += int(failed.sum())
                    for g in range(len(batch_prompts)):
                        sl = slice(g * n, (g + 1) * n)
                        if keep[sl].all():
                            local = g // hosts
                            ours = trajs[local * n:(local + 1) * n] if g % hosts == share else None
                            kept.append((ours, adv[sl]))
                    gen += 1
                rewards_all = np.concatenate(all_rewards)
                step_metrics = rollout_metrics(np.concatenate(all_stats), rewards_all, np.concatenate(all_failed))
                sampled, rollout_s = agree_sum(np.array([sampled, rollout_s], np.float64)) / [1, hosts]
                step_metrics.update(valid_groups=len(kept), gen_batches=gen, rollout_s=rollout_s,
                                    judge_wait_s=judge_wait_s, rollout_tokens_per_s=sampled / max(rollout_s, 1e-9),
                                    rollout_reshard_s=engine.reshard_s, rollout_peak_pages=engine.stats.peak_pages,
                                    rollout_page_waits=engine.stats.page_waits)
                if failed_all and console:
                    console(f"rl step {rl_step}: the judge failed on {failed_all} of {len(rewards_all)} answers "
                            f"(groups dropped); last error: {scorer.last_error}")
                if not kept:
                    raise ConfigError(no_varying_groups(rl_step, gen, rewards_all, failed_all, cfg))
                if len(kept) < per_step and console:
                    console(f"rl step {rl_step}: only {len(kept)} of {per_step} prompt groups have varying "
                            f"rewards after {gen} rollout batches; updating on those")
                kept = kept[:per_step]
                # -- old log-probs for every mini-batch under the weights that sampled them
                t0 = time.perf_counter()
                minibatches = []
                for m in range(0, len(kept), mini):
                    chunk = [(ts, a) for ts, a in kept[m:m + mini] if ts is not None]  # this host's groups
                    trajs = [x for ts, _ in chunk for x in ts]
                    adv = np.concatenate([a for _, a in chunk]) if chunk else np.zeros((0,), np.float32)
                    # normalised over the mini-batch's groups on every host
                    examples = examples_from_trajectories(
                        trajs, processor, agg=t.loss_agg, advantages=adv, mask_exceeded=t.mask_exceeded,
                        num_sequences=len(kept[m:m + mini]) * n,
                        num_tokens=float(agree_sum(np.float64(trained_tokens(trajs, t.mask_exceeded)))))
                    mbs = micro_batches(examples, trainer.model_config, spec, agree=agree)[0]
                    # old (and reference) log-probs stay on the devices, sharded by rows as the update reads them
                    mbs = [b._replace(old_logprobs=trainer.logprobs(b), ref_logprobs=b.ref_logprobs
                                      if ref_params is None else trainer.logprobs(b, ref_params))
                           for b in mbs]
                    minibatches.append(mbs)
                old_s = time.perf_counter() - t0
                # -- updates
                t0 = time.perf_counter()
                update_metrics = []
                tokens = 0
                for mbs in minibatches:
                    update_metrics.append(trainer.train_step(mbs))
                    tokens += sum(batch_tokens(b) for b in mbs)
                update_s = time.perf_counter() - t0
                tokens = float(agree_sum(np.float64(tokens)))
                for k in update_metrics[0]:
                    step_metrics[k] = float(np.mean([u[k] for u in update_metrics]))
                step_metrics.update(old_logprob_s=old_s, update_s=update_s,
                                    train_tokens_per_s=tokens / max(update_s, 1e-9), step_time_s=timer.stop(),
                                    lr=trainer.learning_rate())
                metrics = step_metrics
                session.writer.write(rl_step + 1, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", turns=f"{metrics['turns_mean']:.2f}")
                rl_step += 1
                meta = {"kind": "rl", "prompt_position": position, "rl_step": rl_step}
                if session.checkpoint(rl_step, t.steps, meta, guard, console):
                    return metrics
    finally:
        bar.close()
        engine.close()
        scorer.close()
    session.finish(side_files_from)
    return metrics


STATS = ("num_turns", "over_turn", "over_length", "void", "answered", "sampled_tokens")  # per trajectory


def trajectory_stats(trajs: Sequence[Trajectory]) -> np.ndarray:
    """(trajectories, len(STATS)) numbers `rollout_metrics` summarises: what hosts exchange instead of the
    trajectories themselves."""
    return np.array([[float(getattr(t, k)) for k in STATS] for t in trajs], np.float64).reshape(-1, len(STATS))


def trained_tokens(trajs: Sequence[Trajectory], mask_exceeded: bool) -> float:
    """Tokens the loss trains on (over-turn trajectories' removed when `mask_exceeded`): the token-mean count."""
    return float(sum(np.sum(t.loss_mask) for t in trajs if not (mask_exceeded and t.exceed)))


def _rollout_model(trainer):
    """A function giving the trainer's current weights to roll out with: the trainer's own (sharded over the
    mesh) on one host; on several, a copy on this host's devices (`parallel.hosts.host_local_copier`), since
    each host runs its own rollouts (its tools and turns differ from the other hosts')."""
    if not multi_host():
        return trainer.model
    copy = host_local_copier(trainer.mesh, state_shardings(nnx.state(trainer.model()), local_mesh(trainer.mesh),
                                                            trainer.rules))

    def model():
        graphdef, state = nnx.split(trainer.model())
        nnx.replace_by_pure_dict(state, copy(nnx.to_pure_dict(state)))
        return nnx.merge(graphdef, state)
    return model


def rollout_metrics(trajs: Sequence[Trajectory] | np.ndarray, rewards: np.ndarray,
                    failed: np.ndarray | None = None) -> dict[str, float]:
    """What a researcher watches during RL: reward/accuracy, turns, and how episodes ended.

    `reward_mean` and `accuracy` are over the *judged* samples only (`failed` marks those the judge gave no
    score, whose placeholder reward 0 would read as wrong answers); `judge_failed` counts the others, so a
    flaky judge shows as itself and not as a worse policy. Without a judge every sample is judged.
    `trajs` may be their `trajectory_stats` (every host's, on a multi-host run)."""
    stats = trajs if isinstance(trajs, np.ndarray) else trajectory_stats(trajs)
    mean = dict(zip(STATS, stats.sum(axis=0) / max(len(stats), 1)))
    failed = np.zeros(len(rewards), bool) if failed is None else np.asarray(failed, bool)
    judged = rewards[~failed]
    return {
        "reward_mean": float(judged.mean()) if len(judged) else float("nan"),
        "accuracy": float((judged > 0.5).mean()) if len(judged) else float("nan"),
        "judge_failed": int(failed.sum()),
        "turns_mean": float(mean["num_turns"]),
        "over_turn_rate": float(mean["over_turn"]),
        "over_length_rate": float(mean["over_length"]),
        "void_rate": float(mean["void"]),
        "answered_rate": float(mean["answered"]),
        "response_tokens_mean": float(mean["sampled_tokens"]),
    }


def share_groups(values: np.ndarray, hosts: Sequence[int], groups: int) -> np.ndarray:
    """Every host's per-group `values` (host of share k holds groups k, k + len(hosts), ...) in global group
    order, (groups, ...), on every host. `hosts[k]`: the process of share k."""
    if len(hosts) == 1:
        return values
    most = -(-groups // len(hosts))
    padded = np.zeros((most,) + values.shape[1:], values.dtype)
    padded[:len(values)] = values
    everyone = gathered(padded)  # (processes, most, ...)
    return np.stack([everyone[hosts[g % len(hosts)], g // len(hosts)] for g in range(groups)])
