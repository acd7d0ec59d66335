"""The optimizer: AdamW with warmup + cosine or constant learning rate and global-norm clipping."""

from __future__ import annotations

import dataclasses

import optax

from mini_o3_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Defaults are the released RL actor's (verl FSDP AdamW): lr 1e-6 constant, wd 0.01, clip 1.0."""

    lr: float = 1e-6
    schedule: str = "constant"  # "constant" | "cosine" (decays to 0 at total_steps, as HF's cosine)
    warmup_ratio: float = 0.0  # of total_steps; linear from 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global norm; 0 disables

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optimizer schedule {self.schedule!r}: expected 'constant' or 'cosine'")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optimizer warmup_ratio {self.warmup_ratio}: expected 0 <= ratio < 1")
        if self.lr <= 0:
            raise ConfigError(f"optimizer lr {self.lr}: expected > 0")


def learning_rate(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """HF-style schedule: linear warmup from 0 over ceil(ratio * total) steps, then constant or cosine to 0."""
    warmup = int(-(-cfg.warmup_ratio * total_steps // 1))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warmup, 0), max(total_steps, warmup + 1), 0.0)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)],
                                    [warmup])
    return optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(learning_rate(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
