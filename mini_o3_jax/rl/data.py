"""RL prompt records in the released JSON format (spec §4.1).

A file is a JSON list of `{"images": [relative path], "problem": "<image>\\n…", "solution": str,
"data_source": str, "doc_id": …}`; image paths are joined to `image_root` ($BASE_IMAGE_DIR).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from mini_o3_jax.data.records import SourceError
from mini_o3_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Prompt:
    image: str
    problem: str  # the raw user text, `<image>` placeholder included (the judge sees it too)
    solution: str
    data_source: str = ""
    doc_id: str = ""


def read_prompts(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[Prompt]:
    """Every record of a released RL/val JSON file; a bad record raises naming its index and field."""
    path = os.path.expanduser(os.fspath(path))
    if not path:
        raise ConfigError("no RL prompt file given: set data.path to the released JSON (images / problem / solution), "
                          "or data.sets to prepared datasets")
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise SourceError(f"{path}: RL prompt file {what}; expected the released JSON (a list of records with "
                          "images / problem / solution)")
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f) if not path.endswith(".jsonl") else [json.loads(x) for x in f if x.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON{' Lines' if path.endswith('.jsonl') else ''} prompt file ({e})") from None
    if not isinstance(records, list):
        raise ConfigError(f"{path}: expected a JSON list of prompt records, got a {type(records).__name__}")
    root = os.path.expanduser(os.fspath(image_root)) if image_root else os.path.dirname(os.path.abspath(path))
    out = []
    for i, r in enumerate(records):
        images = r.get("images") if isinstance(r, dict) else None
        if not isinstance(images, list) or len(images) != 1:
            raise ConfigError(f"{path}: record {i}: expected 'images' with exactly one path, got {images!r}")
        for key in ("problem", "solution"):
            if not isinstance(r.get(key), str):
                raise ConfigError(f"{path}: record {i}: expected a string '{key}', got {r.get(key)!r}")
        image = images[0] if os.path.isabs(images[0]) else os.path.join(root, images[0])
        out.append(Prompt(image, r["problem"], r["solution"], str(r.get("data_source", "")),
                          str(r.get("doc_id", i))))
    return out


class DatasetPrompts(Sequence):
    """Prompts from prepared registry question sets (`mini-o3 data prepare`), concatenated and read
    lazily: 8k RL prompts with high-resolution images need not sit in memory."""

    def __init__(self, names: Sequence[str], data_dir: str | os.PathLike):
        from mini_o3_jax.data import loader

        self.sets = [loader.load(n, data_dir) for n in names]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Prompt:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        r = self.sets[k][i - int(self.offsets[k])]
        return Prompt(r.image, r.problem, r.solution, r.data_source, r.doc_id)


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


def take(prompts: Sequence[Prompt], indices: Sequence[int]) -> list[Prompt]:
    return [prompts[i] for i in indices]
