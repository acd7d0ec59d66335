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

import ml_collections
import numpy as np
from tqdm import tqdm

from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.config_files import from_block
from mini_o3_jax.data.records import Record
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rl.data import prompt_indices, take
from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
from mini_o3_jax.scoring.judge import JudgeItem
from mini_o3_jax.scoring.scorer import Scorer, trajectory_items
from mini_o3_jax.train.advantages import grpo_advantages, valid_groups
from mini_o3_jax.train.batch import batch_tokens, examples_from_trajectories, micro_batches
from mini_o3_jax.train.checkpoint import PreemptionGuard
from mini_o3_jax.train.metrics import StepTimer
from mini_o3_jax.train.session import build_model, logprob_temperature, open_session
from mini_o3_jax.train.settings import train_settings


def check_judge(scorer: Scorer, step: int, items: Sequence[JudgeItem], failed: np.ndarray) -> None:
    """Stop the run (JudgeError) when the judge failed on every answer of a rollout batch it was asked about:
    more rollouts would only repeat that, and the message says where to fix it."""
    scorer.check_judge(items, failed, where=f"rl step {step}", batch="a rollout batch",
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
    # the rollout keeps each trajectory's patch rows for the updates (no second pass through the processor)
    engine = RolloutEngine(trainer.model(), tokenizer, processor, dataclasses.replace(r, keep_patches=True))
    spec = t.batch_spec(tokenizer.endoftext_id, trainer.data_ways)
    metrics: dict = {}
    bar = tqdm(total=t.steps, initial=rl_step, desc=label, unit="step", disable=console is None)
    try:
        with PreemptionGuard() as guard:
            while rl_step < t.steps:
                timer = StepTimer()
                timer.start()
                engine.set_model(trainer.model())
                # -- rollout + rewards with dynamic sampling
                kept: list[tuple[Record, list[Trajectory], np.ndarray, np.ndarray]] = []
                all_trajs: list[Trajectory] = []
                all_rewards: list[np.ndarray] = []
                all_failed: list[np.ndarray] = []
                failed_all = 0
                rollout_s = judge_wait_s = 0.0
                sampled = 0
                gen = 0
                while len(kept) < per_step and gen < t.max_gen_batches:
                    batch_prompts = take(prompts, prompt_indices(len(prompts), position, per_step, cfg.seed))
                    position += per_step
                    t0 = time.perf_counter()
                    trajs = engine.run(batch_prompts, samples=n,
                                       seed=cfg.seed * 1_000_003 + rl_step * 1009 + gen)
                    rollout_s += time.perf_counter() - t0
                    sampled += engine.stats.sampled_tokens
                    per_traj = [p for p in batch_prompts for _ in range(n)]
                    items = trajectory_items(per_traj, trajs)
                    future = scorer.submit(items)
                    t0 = time.perf_counter()
                    rewards, failed = future.result()
                    judge_wait_s += time.perf_counter() - t0
                    check_judge(scorer, rl_step, items, failed)
                    groups = np.repeat(np.arange(len(batch_prompts)), n)
                    adv = grpo_advantages(rewards, groups)
                    keep = valid_groups(rewards, groups, failed) if t.dynamic_sampling else ~failed
                    all_trajs += trajs
                    all_rewards.append(rewards)
                    all_failed.append(failed)
                    failed_all += int(failed.sum())
                    for g, p in enumerate(batch_prompts):
                        sl = slice(g * n, (g + 1) * n)
                        if keep[sl].all():
                            kept.append((p, trajs[sl], rewards[sl], adv[sl]))
                    gen += 1
                rewards_all = np.concatenate(all_rewards)
                step_metrics = rollout_metrics(all_trajs, rewards_all, np.concatenate(all_failed))
                step_metrics.update(valid_groups=len(kept), gen_batches=gen, rollout_s=rollout_s,
                                    judge_wait_s=judge_wait_s, rollout_tokens_per_s=sampled / max(rollout_s, 1e-9))
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
                    chunk = kept[m:m + mini]
                    trajs = [x for _, ts, _, _ in chunk for x in ts]
                    adv = np.concatenate([a for _, _, _, a in chunk])
                    examples = examples_from_trajectories(trajs, processor, agg=t.loss_agg, advantages=adv,
                                                          mask_exceeded=t.mask_exceeded)
                    mbs = micro_batches(examples, trainer.model_config, spec)[0]
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


def rollout_metrics(trajs: Sequence[Trajectory], rewards: np.ndarray,
                    failed: np.ndarray | None = None) -> dict[str, float]:
    """What a researcher watches during RL: reward/accuracy, turns, and how episodes ended.

    `reward_mean` and `accuracy` are over the *judged* samples only (`failed` marks those the judge gave no
    score, whose placeholder reward 0 would read as wrong answers); `judge_failed` counts the others, so a
    flaky judge shows as itself and not as a worse policy. Without a judge every sample is judged."""
    k = max(len(trajs), 1)
    failed = np.zeros(len(rewards), bool) if failed is None else np.asarray(failed, bool)
    judged = rewards[~failed]
    return {
        "reward_mean": float(judged.mean()) if len(judged) else float("nan"),
        "accuracy": float((judged > 0.5).mean()) if len(judged) else float("nan"),
        "judge_failed": int(failed.sum()),
        "turns_mean": sum(t.num_turns for t in trajs) / k,
        "over_turn_rate": sum(t.over_turn for t in trajs) / k,
        "over_length_rate": sum(t.over_length for t in trajs) / k,
        "void_rate": sum(t.void for t in trajs) / k,
        "answered_rate": sum(t.answered for t in trajs) / k,
        "response_tokens_mean": sum(t.sampled_tokens for t in trajs) / k,
    }
