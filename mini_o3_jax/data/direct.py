"""A run's own data file (`--config.data.path`), read through the same parsers as `data prepare`.

`mini-o3 rl` reads the released RL/val JSON and `mini-o3 sft` the cold-start sharegpt JSON straight
from disk: the same rows are kept and refused, for the same reasons, as when the file is prepared.
Images stay as checked paths (loaded when used), so thousands of high-resolution images need not sit in
memory. A bad row is skipped and listed, never fatal; a file with no usable row is one error naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mini_o3_jax.data.benchmarks import benchmark
from mini_o3_jax.data.formats import ParseContext, Parsed, parse_coldstart_json, parse_minio3_json
from mini_o3_jax.data.records import (
    BadRecord,
    ConversationRecord,
    Record,
    RecordError,
    SourceError,
    describe_bad,
)
from mini_o3_jax.errors import ChatFormatError, ConfigError

log = logging.getLogger(__name__)


def _existing_file(path: str | os.PathLike, what: str, expected: str) -> Path:
    """The expanded path of a file that is there; SourceError says what was expected."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        found = "is a directory" if os.path.isdir(path) else "not found"
        raise SourceError(f"{path}: {what} {found}; expected {expected}")
    return Path(path)


def _split(items: Iterator[Parsed]) -> tuple[list, list[BadRecord]]:
    kept, bad = [], []
    for item in items:
        (bad if isinstance(item, BadRecord) else kept).append(item)
    return kept, bad


def _report(path: Path, bad: list[BadRecord], kept: int, what: str, sink: list[BadRecord] | None) -> None:
    """Bad rows go to `sink` when the caller lists them itself, else to the log."""
    if sink is not None:
        sink.extend(bad)
    elif bad:
        log.warning("%s: %d unusable %s row(s) skipped, %d kept:\n%s", path, len(bad), what, kept,
                    describe_bad(bad, 10))


def read_prompts(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                 allow_absolute_images: bool = False, bad: list[BadRecord] | None = None) -> list[Record]:
    """The usable records of a released RL/val JSON (or JSONL) file (spec §4.1: `{"images": [path],
    "problem", "solution", "data_source", "doc_id"}`), image paths resolved inside `image_root`
    ($BASE_IMAGE_DIR; default: the file's folder). Unusable rows go to `bad` (or the log)."""
    if not os.fspath(path):
        raise ConfigError("no RL prompt file given: set data.path to the released JSON (images / problem / solution), "
                          "or data.sets to prepared datasets")
    file = _existing_file(path, "RL prompt file", "the released JSON (a list of records with images / problem / "
                                                  "solution)")
    root = Path(os.path.expanduser(os.fspath(image_root))) if image_root else Path(os.path.abspath(file.parent))
    ctx = ParseContext("", "", image_root=root, allow_absolute_images=allow_absolute_images, direct=True)
    try:
        records, skipped = _split(parse_minio3_json(file, ctx))
    except RecordError as e:  # the file as a whole is not JSON
        kind = " Lines" if file.suffix == ".jsonl" else ""
        raise ConfigError(f"{file}: not a JSON{kind} prompt file ({e})") from None
    if not records:
        raise ConfigError(f"{file}: no usable RL prompt record ({len(skipped)} bad):\n{describe_bad(skipped, 5)}")
    _report(file, skipped, len(records), "RL prompt", bad)
    return records


def read_sharegpt(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                  allow_absolute_images: bool = False, bad: list[BadRecord] | None = None) -> list[ConversationRecord]:
    """The usable conversations of a LLaMA-Factory sharegpt JSON/JSONL file (e.g. Mini-o3-Coldstart.json),
    image paths found inside `image_root` (default, as `data prepare`: the file's folder, then its parent),
    absolute paths elsewhere only with `allow_absolute_images`. Unusable rows go to `bad` (or the log)."""
    if not os.fspath(path):
        raise ChatFormatError("no SFT data file given: set data.path to a LLaMA-Factory sharegpt JSON "
                              "(e.g. Mini-o3-Coldstart.json)")
    file = _existing_file(path, "SFT data file", "a sharegpt JSON (conversations + images)")
    ctx = dataclasses.replace(benchmark("coldstart").context(image_root, allow_absolute_images), direct=True)
    records, skipped = _split(parse_coldstart_json(file, ctx))
    if not records and skipped:
        raise RecordError(f"{file}: no usable SFT rows; {len(skipped)} unusable:\n{describe_bad(skipped)}")
    _report(file, skipped, len(records), "SFT", bad)
    return records
