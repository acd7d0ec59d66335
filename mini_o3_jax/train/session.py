"""What SFT and RL runs share: model + mesh from a config, the Trainer, resume, checkpoint, logs.

A run directory holds `checkpoints/` (Orbax: params, frozen weights, optimizer state, plus JSON
meta with the step, data position and RNG), `logs/` (TensorBoard events + metrics.jsonl) and,
at the end, `final/` (a model checkpoint for `mini-o3 infer/export/rl --model`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import ml_collections
from flax import nnx

from mini_o3_jax import storage
from mini_o3_jax.config_files import from_block
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.model.weights import copy_side_files, load_model, save_orbax
from mini_o3_jax.parallel.hosts import any_host, check_shared
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.parallel.rules import Rules, rules_from_config
from mini_o3_jax.train.checkpoint import TrainCheckpointer, abstract_like
from mini_o3_jax.train.losses import PPOConfig
from mini_o3_jax.train.metrics import MetricsWriter
from mini_o3_jax.train.optim import OptimConfig, learning_rate, make_optimizer
from mini_o3_jax.train.settings import checkpoint_settings, train_settings
from mini_o3_jax.train.step import StepConfig, Trainer


def build_model(cfg: ml_collections.ConfigDict, mesh=None) -> Qwen25VL:
    """`cfg.model_path` (HF or Orbax dir) or, when empty, a random model of `cfg.model` (tests, demos)."""
    if cfg.model_path:
        return load_model(cfg.model_path, dtype=cfg.dtype, mesh=mesh, rules=sharding_rules(cfg), remat=cfg.remat,
                          unroll=cfg.unroll_layers)
    if "model" not in cfg:
        raise ConfigError("config needs `model_path` (a checkpoint directory) or a `model` block to initialise")
    model = Qwen25VL(ModelConfig.from_config_dict(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else cfg.model),
                     dtype=cfg.dtype, rngs=nnx.Rngs(cfg.seed), remat=cfg.remat, unroll=cfg.unroll_layers)
    return model


def sharding_rules(cfg: ml_collections.ConfigDict) -> Rules:
    """The rule table: DEFAULT_RULES with the config's `sharding` block ({logical axis: mesh axes}) applied."""
    block = cfg.get("sharding")
    return rules_from_config(block.to_dict() if hasattr(block, "to_dict") else block)


def build_mesh(cfg: ml_collections.ConfigDict):
    """None on one device (no sharding machinery), else the configured (data, fsdp, tensor) mesh."""
    shape = dict(cfg.mesh or {})
    if len(jax.devices()) == 1 and all(int(v) in (1, -1) for v in shape.values()):
        return None
    return make_mesh(shape or {"fsdp": -1})


def logprob_temperature(cfg: ml_collections.ConfigDict, loss: str) -> float:
    """The temperature the trainer's log-probs are computed at.

    For PPO it is the rollout's sampling temperature, `rollout.sampling.temperature`: the ratio compares the
    policy that sampled the tokens with the one being trained, both at the temperature the samples were drawn
    at (the release samples and recomputes old log-probs at T=1.0, spec §4.2). There is one setting; a
    `train.temperature` beside it (an older config) must agree with it, else this is a ConfigError, and
    greedy rollouts (T=0) have no log-probs to train on. SFT trains at 1.0 unless `train.temperature` says.
    """
    train = train_settings(cfg, loss).temperature
    if loss != "ppo" or "rollout" not in cfg:
        return 1.0 if train is None else float(train)
    rollout = cfg.rollout.sampling.temperature
    if isinstance(rollout, bool) or not isinstance(rollout, (int, float)) or not rollout > 0:
        raise ConfigError(f"rollout.sampling.temperature = {rollout!r}; RL needs a positive sampling temperature "
                          "(the trainer's log-probs are computed at it)")
    if train is not None and float(train) != float(rollout):
        raise ConfigError(f"train.temperature = {train!r} but rollout.sampling.temperature = {rollout!r}: the "
                          "trainer's log-probs must use the temperature the rollouts were sampled at; set only "
                          "rollout.sampling.temperature (train.temperature is no longer a setting)")
    return float(rollout)


def step_config(cfg: ml_collections.ConfigDict, loss: str) -> StepConfig:
    """What the trainer computes: the `train` block's weights and chunking, the `ppo` block for RL, and the
    log-prob temperature."""
    t = train_settings(cfg, loss)
    ppo = from_block(PPOConfig, cfg.ppo, "ppo") if loss == "ppo" else PPOConfig()
    return StepConfig(loss=loss, ppo=ppo, trainable=t.trainable, logits_chunk=t.logits_chunk,
                      temperature=logprob_temperature(cfg, loss))


@dataclasses.dataclass
class Session:
    trainer: Trainer
    checkpointer: TrainCheckpointer
    writer: MetricsWriter
    out_dir: str
    meta: dict[str, Any]  # restored meta ({} on a fresh start)
    save_every: int  # checkpoint.every

    def save(self, meta: dict[str, Any], force: bool = False) -> bool:
        """Start a checkpoint of this step. The metrics logged so far are flushed first (on a bucket, uploaded)
        and the checkpoint commits after that, so a run killed after any commit has its logs up to the step it
        resumes from."""
        self.writer.flush()
        return self.checkpointer.save(self.trainer.step, self.trainer.state(), {**meta, "step": self.trainer.step},
                                      force=force)

    def checkpoint(self, done: int, total: int, meta: dict[str, Any], guard, console=print) -> bool:
        """After step `done` of `total`: save every `save_every` steps, at the end, and on preemption.
        Returns True when the run must stop now (preempted: saved, committed, caller returns). A signal that
        reached one host stops all of them after the same step (`parallel.hosts.any_host`)."""
        stop = any_host(guard.requested)
        if done % self.save_every == 0 or done == total or stop:
            self.save(meta)
        if not stop:
            return False
        self.checkpointer.wait()
        if console:
            console(f"{guard.reason or 'preempted on another host'}: saved step {done}, exiting")
        return True

    def finish(self, side_files_from: str | None = None) -> str:
        """Wait for pending saves, write `final/` (model checkpoint + tokenizer/processor files)."""
        self.checkpointer.wait()
        final = save_orbax(self.trainer.model(), storage.join(self.out_dir, "final"))
        if side_files_from:
            copy_side_files(side_files_from, final)
        self.writer.close()
        self.checkpointer.close()
        return final


def _warn_both(console):
    """Warnings go to stderr too: a skipped checkpoint must be visible even when the console is a log file."""
    def warn(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        if console and console is not print:
            console(message)
    return warn


def compile_cache_dir(cfg: ml_collections.ConfigDict) -> str | None:
    """Where compiled programs persist across restarts: `compile_cache` "auto" (the default) is JAX's own
    cache directory when one is set (`JAX_COMPILATION_CACHE_DIR`: one cache shared by many runs, e.g. on a
    cluster's shared disk), else `<out_dir>/compile_cache`; "" turns it off, anything else is a directory."""
    where = cfg.get("compile_cache", "auto")
    if not isinstance(where, str):
        raise ConfigError(f"compile_cache = {where!r}; expected 'auto', '' (off) or a directory")
    if not where:
        return None
    if where == "auto" and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["JAX_COMPILATION_CACHE_DIR"]))
    return storage.join(storage.resolve(cfg.out_dir), "compile_cache") if where == "auto" else storage.resolve(where)


def enable_compile_cache(directory: str | None) -> None:
    """Point JAX's persistent compilation cache at `directory`: a restarted or resumed run loads its step
    programs instead of compiling them again (at 7B, minutes per program). Programs that compile in under
    `jax_persistent_cache_min_compile_time_secs` (default 1 s) are not stored."""
    if directory is None:
        return
    from jax.experimental.compilation_cache import compilation_cache

    storage.path(directory).mkdir(parents=True, exist_ok=True)  # JAX reads and writes gs:// caches too (epath)
    jax.config.update("jax_compilation_cache_dir", directory)
    compilation_cache.reset_cache()  # the cache is set up at the first compile: re-read the directory


def open_session(cfg: ml_collections.ConfigDict, loss: str, total_steps: int, console=print) -> Session:
    """Build mesh, model, optimizer and trainer; restore the latest checkpoint of `cfg.out_dir` if any."""
    out = storage.require_backend(cfg.out_dir, "out_dir")  # a local or shared path, or gs://bucket/...
    check_shared(out, "out_dir")  # multi-host: checkpoints need a directory every host sees
    enable_compile_cache(compile_cache_dir(cfg))
    mesh = build_mesh(cfg)
    model = build_model(cfg, mesh)
    ocfg = from_block(OptimConfig, cfg.optim, "optim")
    trainer = Trainer(model, make_optimizer(ocfg, total_steps), step_config(cfg, loss), mesh=mesh,
                      rules=sharding_rules(cfg), attention=cfg.get("attention", "auto"))
    trainer.schedule = learning_rate(ocfg, total_steps)
    ckpt = checkpoint_settings(cfg)
    checkpointer = TrainCheckpointer(storage.join(out, "checkpoints"), keep=ckpt.keep, async_save=ckpt.async_save)
    meta: dict[str, Any] = {}
    # the newest step that restores: a corrupt one is skipped with a warning (on the console and stderr)
    # the target is laid out by the trainer's shardings: the checkpoint restores straight onto this mesh
    target = abstract_like(trainer.state(), trainer.state_shardings())
    resumed = checkpointer.restore_latest(target, warn=_warn_both(console))
    if resumed is not None:
        latest, state, meta = resumed
        trainer.load_state(state, int(meta["step"]))
        if console:
            console(f"resumed from {checkpointer.directory} step {latest}")
    writer = MetricsWriter(storage.join(out, "logs") if jax.process_index() == 0 else None,
                           log_every=cfg.log_every, console=console)
    return Session(trainer, checkpointer, writer, out, meta, ckpt.every)
