"""The training objectives as pure jnp functions of per-token log-probs and a batch.

Every loss is `sum(weights * per_token_loss)`: `TrainBatch.weights` already holds the
aggregation (token-mean or seq-mean-token-mean) normalised by global counts, so a loss and each
metric here can be summed over micro-batches and data-parallel shards exactly. Metrics are
weighted the same way (a weighted mean over the optimizer step once summed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.train.batch import TrainBatch

KL_TYPES = ("k1", "k2", "k3")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Mini-o3's released RL objective by default: clip-higher 0.2/0.3, no KL, no entropy bonus."""

    clip_low: float = 0.2
    clip_high: float = 0.3
    log_ratio_clamp: float = 20.0  # verl clamps log(pi/pi_old) before exp for stability
    kl_coef: float = 0.0  # KL-to-reference loss; 0 = no reference model (the release)
    kl_type: str = "k3"  # k1: log-ratio, k2: half squared log-ratio, k3: low-variance (Schulman)
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.kl_type not in KL_TYPES:
            raise ConfigError(f"PPOConfig.kl_type = {self.kl_type!r}; expected one of {KL_TYPES}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ConfigError(f"PPOConfig clip range ({self.clip_low}, {self.clip_high}); expected 0 <= low < 1, high >= 0")


def _wsum(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(w != 0, x * w, 0.0))  # where: padding positions may hold inf/nan


def sft_loss(logp: jax.Array, batch: TrainBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy on the weighted (assistant) tokens."""
    loss = -_wsum(logp, batch.weights)
    return loss, {"loss": loss, "tokens": jnp.sum(batch.mask)}


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str) -> jax.Array:
    """Per-token KL(pi || pi_ref) estimators as named in verl: k1 (`kl`), k2 (`mse`), k3 (`low_var_kl`)."""
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff**2
    log_ratio = jnp.clip(-diff, -20.0, 20.0)
    return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)


def ppo_loss(
    logp: jax.Array, batch: TrainBatch, cfg: PPOConfig, entropy: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate with clip-higher (DAPO), token-level, weighted by `batch.weights`.

    ratio = exp(clamp(logp - old_logp)); per token max(-A*ratio, -A*clip(ratio, 1-low, 1+high)).
    """
    w = batch.weights
    adv = batch.advantages[:, None]
    log_ratio = jnp.clip(logp - batch.old_logprobs, -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = jnp.maximum(unclipped, clipped)
    pg_loss = _wsum(pg, w)
    metrics = {
        "pg_loss": pg_loss,
        "clip_frac": _wsum((clipped > unclipped).astype(jnp.float32), w),
        "approx_kl": _wsum(-log_ratio, w),
        "ratio": _wsum(ratio, w),
        "tokens": jnp.sum(batch.mask),
    }
    loss = pg_loss
    if cfg.kl_coef:
        kl = _wsum(kl_penalty(logp, batch.ref_logprobs, cfg.kl_type), w)
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = kl
    if entropy is not None:
        ent = _wsum(entropy, w)
        metrics["entropy"] = ent
        loss = loss - cfg.entropy_coef * ent
    metrics["loss"] = loss
    return loss, metrics
