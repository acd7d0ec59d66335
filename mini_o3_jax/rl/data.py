"""RL prompt records in the released JSON format (spec §4.1).

A file is a JSON list of `{"images": [relative path], "problem": "<image>\\n…", "solution": str,
"data_source": str, "doc_id": …}`; image paths are resolved inside `image_root` ($BASE_IMAGE_DIR) by the
same rule as `data prepare` (formats.resolve_image).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mini_o3_jax.data.formats import json_rows, resolve_image
from mini_o3_jax.data.records import BadRecord, RecordError, SourceError, describe_bad
from mini_o3_jax.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prompt:
    image: str
    problem: str  # the raw user text, `<image>` placeholder included (the judge sees it too)
    solution: str
    data_source: str = ""
    doc_id: str = ""


def read_prompts(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                 allow_absolute_images: bool = False, bad: list[BadRecord] | None = None) -> list[Prompt]:
    """The usable records of a released RL/val JSON (or JSONL) file.

    A row that cannot be used (not UTF-8, over-size, not a record, wrong field types, an image path outside
    `image_root` or missing) is appended to `bad` (or logged as a warning) and skipped, so one bad row never
    ends an RL run; a file with no usable row is one error naming it and its first bad rows."""
    path = os.path.expanduser(os.fspath(path))
    if not path:
        raise ConfigError("no RL prompt file given: set data.path to the released JSON (images / problem / solution), "
                          "or data.sets to prepared datasets")
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise SourceError(f"{path}: RL prompt file {what}; expected the released JSON (a list of records with "
                          "images / problem / solution)")
    root = Path(os.path.expanduser(os.fspath(image_root)) if image_root else os.path.dirname(os.path.abspath(path)))
    out: list[Prompt] = []
    skipped: list[BadRecord] = []
    try:
        for i, r in json_rows(Path(path)):
            try:
                if isinstance(r, RecordError):
                    raise r
                out.append(_prompt(r, i, root, allow_absolute_images))
            except RecordError as e:
                doc_id = r.get("doc_id", "") if isinstance(r, dict) else ""
                skipped.append(BadRecord(path, i, str(doc_id)[:80], str(e)))
    except RecordError as e:  # the file as a whole is not JSON
        raise ConfigError(f"{path}: not a JSON{' Lines' if path.endswith('.jsonl') else ''} prompt file ({e})") from None
    if not out:
        raise ConfigError(f"{path}: no usable RL prompt record ({len(skipped)} bad):\n{describe_bad(skipped, 5)}")
    if bad is not None:
        bad.extend(skipped)
    elif skipped:
        log.warning("%s: %d unusable RL prompt row(s) skipped, %d kept:\n%s", path, len(skipped), len(out),
                    describe_bad(skipped, 10))
    return out


def _prompt(r: object, i: int, root: Path, allow_absolute: bool) -> Prompt:
    """One record as a Prompt; RecordError names the field that is wrong."""
    if not isinstance(r, dict):
        raise RecordError(f"expected a record (JSON object), got {type(r).__name__}")
    images = r.get("images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        raise RecordError(f"expected 'images' with exactly one path, got {str(images)[:120]!r}")
    for key in ("problem", "solution"):
        if not isinstance(r.get(key), str):
            raise RecordError(f"expected a string '{key}', got {str(r.get(key))[:120]!r}")
    image = resolve_image(images[0], [root], allow_absolute=allow_absolute)
    return Prompt(str(image), r["problem"], r["solution"], str(r.get("data_source", "")), str(r.get("doc_id", i)))


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
