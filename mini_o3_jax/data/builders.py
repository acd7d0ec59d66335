"""TFDS builders over the registry: each dataset prepared once into array_record files, read back by
random access (grain) with no TensorFlow.

Source order is kept (`disable_shuffling`), images are stored as their original encoded bytes, and
the rows that could not be used are written to `bad_records.jsonl` inside the prepared dataset's
directory, atomically with it (TFDS renames the whole directory when generation finishes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from mini_o3_jax.data.benchmarks import BENCHMARKS, benchmark, iter_source
from mini_o3_jax.data.records import (
    BadRecord,
    ConversationRecord,
    Record,
    RecordError,
    SourceError,
    describe_bad,
)

VERSION = tfds.core.Version("1.0.0")
BAD_RECORDS_FILE = "bad_records.jsonl"
SPLIT = "train"
_MAX_LISTED = 20


def _bytes_feature() -> tfds.features.Tensor:
    """Encoded image bytes kept verbatim (no re-encoding, no TensorFlow needed)."""
    return tfds.features.Tensor(shape=(), dtype=np.object_)


def write_bad_records(directory: Path, bad: list[BadRecord]) -> Path:
    path = directory / BAD_RECORDS_FILE
    with path.open("w", encoding="utf-8") as f:
        for b in bad:
            f.write(json.dumps({"source": b.source, "row": b.row, "doc_id": b.doc_id, "reason": b.reason},
                               ensure_ascii=False) + "\n")
    return path


def read_bad_records(directory: Path) -> list[BadRecord]:
    path = directory / BAD_RECORDS_FILE
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [BadRecord(**json.loads(line)) for line in f if line.strip()]


def strict_error(name: str, bad: list[BadRecord], why: str = "strict mode") -> RecordError:
    """The error for refusing a dataset: every bad row (up to a screenful), each naming file, row, doc_id."""
    return RecordError(f"{name}: {len(bad)} unusable row(s) ({why}):\n" + describe_bad(bad, _MAX_LISTED))


class _SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: read the source directory through the registry, record the bad rows."""

    VERSION = VERSION

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No checksums file to look up (nothing is downloaded); TFDS's lookup would import the
        `importlib_resources` backport, which this project does not depend on."""
        return None

    def __init__(self, *, source_dir: str | Path | None = None, image_root: str | Path | None = None,
                 strict: bool = False, allow_absolute_images: bool = False, file_format: str = "array_record",
                 **kwargs: Any) -> None:
        self._source_dir = source_dir
        self._image_root = image_root
        self._allow_absolute_images = allow_absolute_images
        self._strict = strict
        self.bad: list[BadRecord] = []
        self.strict_failure: RecordError | None = None
        super().__init__(file_format=file_format, **kwargs)

    def _features(self) -> tfds.features.FeaturesDict:
        """The stored features; each concrete builder (questions, conversations) defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define _features")

    def _example(self, item: Any) -> dict[str, Any]:
        """One parsed record as a TFDS example; defined by each concrete builder."""
        raise NotImplementedError(f"{type(self).__name__} must define _example")

    def _info(self) -> tfds.core.DatasetInfo:
        info = benchmark(self.builder_config.name)
        return tfds.core.DatasetInfo(
            builder=self, description=f"{info.name} as published at {info.hf_repo or 'the synthetic generator'}",
            features=self._features(), disable_shuffling=True,
            homepage=f"https://huggingface.co/datasets/{info.hf_repo}" if info.hf_repo else None,
            metadata=tfds.core.MetadataDict(), license=info.license or None)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        source = self._source_dir
        if source is None:
            manual = dl_manager.manual_dir
            if manual is None or not Path(manual).exists():
                raise SourceError(f"{self.builder_config.name}: no source directory given; pass source_dir "
                                  "(or a DownloadConfig manual_dir) holding the downloaded files")
            source = manual
        return {SPLIT: self._generate_examples(Path(source))}

    def _generate_examples(self, source: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        name = self.builder_config.name
        self.bad = []
        n = 0
        rows = iter_source(name, source, self._image_root, allow_absolute_images=self._allow_absolute_images)
        for item in tqdm(rows, desc=f"{name}: reading {source}", unit=" rows", disable=None, leave=False):
            if isinstance(item, BadRecord):
                self.bad.append(item)
                continue
            yield n, self._example(item)
            n += 1
        if (self._strict and self.bad) or n == 0:
            self.strict_failure = strict_error(name, self.bad, "no usable rows" if n == 0 else "strict mode")
            raise self.strict_failure
        write_bad_records(Path(self.data_dir), self.bad)  # the temporary dir TFDS renames on success
        self.info.metadata.update({"benchmark": name, "source": str(source), "num_records": n,
                                   "num_bad_records": len(self.bad)})


class MiniO3Benchmark(_SourceBuilder, skip_registration=True):
    """Question sets (benchmarks, RL prompts): one config per registry name."""

    name = "mini_o3_benchmark"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"{n} ({i.hf_repo or 'synthetic'})")
                       for n, i in BENCHMARKS.items() if i.kind == "question"]

    def _features(self) -> tfds.features.FeaturesDict:
        text = tfds.features.Text
        return tfds.features.FeaturesDict({
            "doc_id": text(), "problem": text(), "solution": text(), "data_source": text(), "category": text(),
            "options": tfds.features.Sequence(text()), "image": _bytes_feature()})

    def _example(self, item: Record) -> dict[str, Any]:
        return {"doc_id": item.doc_id, "problem": item.problem, "solution": item.solution,
                "data_source": item.data_source, "category": item.category, "options": list(item.options),
                "image": item.image}


class MiniO3Coldstart(_SourceBuilder, skip_registration=True):
    """The cold-start SFT trajectories: conversations as JSON text, images as a list of encoded bytes."""

    name = "mini_o3_coldstart"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=n)
                       for n, i in BENCHMARKS.items() if i.kind == "conversation"]

    def _features(self) -> tfds.features.FeaturesDict:
        text = tfds.features.Text
        return tfds.features.FeaturesDict({
            "doc_id": text(), "data_source": text(), "conversations": text(),
            "images": tfds.features.Sequence(_bytes_feature())})

    def _example(self, item: ConversationRecord) -> dict[str, Any]:
        return {"doc_id": item.doc_id, "data_source": item.data_source,
                "conversations": json.dumps(item.conversations, ensure_ascii=False), "images": list(item.images)}


def make_builder(name: str, data_dir: str | Path, **kwargs: Any) -> _SourceBuilder:
    """The builder for a registry name, rooted at `data_dir` (kwargs: source_dir, image_root, strict,
    allow_absolute_images)."""
    cls = MiniO3Coldstart if benchmark(name).kind == "conversation" else MiniO3Benchmark
    return cls(config=name, data_dir=str(Path(data_dir).expanduser()), **kwargs)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_record(example: dict[str, Any], name: str) -> Record:
    """A prepared example back as the `Record` `read_source` gave (Text features come back as bytes)."""
    return Record(benchmark=name, doc_id=_text(example["doc_id"]), image=bytes(example["image"]),
                  problem=_text(example["problem"]), solution=_text(example["solution"]),
                  data_source=_text(example["data_source"]), options=tuple(_text(o) for o in example["options"]),
                  category=_text(example["category"]))


def to_conversation(example: dict[str, Any]) -> ConversationRecord:
    return ConversationRecord(_text(example["doc_id"]), json.loads(_text(example["conversations"])),
                              tuple(bytes(i) for i in example["images"]), _text(example["data_source"]))
