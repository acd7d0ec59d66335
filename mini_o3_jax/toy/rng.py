"""Seeded randomness for the toy world that gives the same draws on any machine.

Why not numpy's or `random`'s helpers: only `random.Random(...).random()` has a stream Python
guarantees across versions, so every draw (ints, choices, shuffles) is built on it here, and each
named sub-stream gets its own seed from a hash of its key.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

__all__ = ["Rng", "derive"]


class Rng:
    """Seeded draws built only on `random.Random.random()`, whose stream Python guarantees."""

    def __init__(self, *key: Any):
        digest = hashlib.sha256(repr(key).encode()).digest()
        self._r = random.Random(int.from_bytes(digest[:8], "big"))

    def random(self) -> float:
        return self._r.random()

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._r.random()

    def randint(self, lo: int, hi: int) -> int:
        """Inclusive on both ends."""
        return lo + min(int(self._r.random() * (hi - lo + 1)), hi - lo)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.randint(0, len(seq) - 1)]

    def shuffle(self, items: list[Any]) -> list[Any]:
        for i in range(len(items) - 1, 0, -1):
            j = self.randint(0, i)
            items[i], items[j] = items[j], items[i]
        return items

    def weighted(self, names: Sequence[str], weights: Sequence[float]) -> str:
        x = self._r.random() * sum(weights)
        for name, wt in zip(names, weights):
            x -= wt
            if x < 0:
                return name
        return names[-1]

    def u64(self) -> int:
        return int(self._r.random() * 2**53)


def derive(*key: Any) -> int:
    """A 63-bit seed for a named sub-stream (split, index, ...)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big") >> 1
