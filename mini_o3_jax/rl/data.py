"""RL prompt sequencing: which `Record`s each step rolls out, resumable from a checkpoint's stream position.

Prompts come from a released RL JSON read directly (`data.direct.read_prompts`) or from prepared registry
sets (`DatasetPrompts`); either way they are `Record`s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mini_o3_jax.data.records import Record


class DatasetPrompts(Sequence):
    """Records of prepared registry question sets (`mini-o3 data prepare`), concatenated and read
    lazily: 8k RL prompts with high-resolution images need not sit in memory."""

    def __init__(self, names: Sequence[str], data_dir: str | os.PathLike):
        from mini_o3_jax.data import loader

        self.sets = [loader.load(n, data_dir) for n in names]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.sets[k][i - int(self.offsets[k])]


def prompt_indices(n: int, start: int, count: int, seed: int) -> list[int]:
    """Prompts `start .. start+count` of an endless stream of seeded per-epoch permutations, so the
    stream position saved in a checkpoint resumes the exact same prompts."""
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, k = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(count - len(out), n - k)
        out.extend(int(i) for i in perm[k:k + take])
        pos += take
    return out


def take(prompts: Sequence[Record], indices: Sequence[int]) -> list[Record]:
    return [prompts[i] for i in indices]
