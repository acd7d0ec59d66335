"""GRPO advantages and Mini-o3's dynamic sampling, on the host in numpy (spec §4.2-§4.4).

Exactly as released: per prompt group, (r - mean) / (std + 1e-6) with torch's unbiased std over
all samples of the group, over-turn trajectories included (they score 0 and still shape their
siblings' baseline); a single-sample group gets mean 0 and std 1. Groups whose rewards do not vary
(std < 1e-4) or whose judge failed are dropped, and the trainer keeps generating until the batch
is full.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _groups(groups: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    out: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return {g: np.asarray(ix) for g, ix in out.items()}


def grpo_advantages(rewards: Sequence[float], groups: Sequence[Hashable], eps: float = 1e-6) -> np.ndarray:
    """One advantage per trajectory (broadcast to its tokens by the batch)."""
    r = np.asarray(rewards, np.float64)
    if r.shape != (len(groups),):
        raise ValueError(f"{r.shape[0] if r.ndim else 0} rewards for {len(groups)} group ids")
    adv = np.zeros_like(r)
    for ix in _groups(groups).values():
        x = r[ix]
        if len(x) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = x.mean(), x.std(ddof=1)
        adv[ix] = (x - mean) / (std + eps)
    return adv.astype(np.float32)


def valid_groups(
    rewards: Sequence[float],
    groups: Sequence[Hashable],
    failed: Sequence[bool] | None = None,
    min_std: float = 1e-4,
) -> np.ndarray:
    """Per-trajectory keep mask of dynamic sampling: a group survives if its rewards vary
    (unbiased std >= min_std) and none of its judge calls failed. A one-sample group's std is
    undefined (NaN in torch), which never compares below the threshold, so it is kept."""
    r = np.asarray(rewards, np.float64)
    bad = np.zeros(len(groups), bool) if failed is None else np.asarray(failed, bool)
    keep = np.zeros(len(groups), bool)
    for ix in _groups(groups).values():
        x = r[ix]
        flat = len(x) > 1 and x.std(ddof=1) < min_std
        keep[ix] = not flat and not bad[ix].any()
    return keep
