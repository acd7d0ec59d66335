"""Prepare a downloaded dataset once (TFDS, array_record) and load it as a grain `MapDataset`.

    from mini_o3_jax.data import loader
    report = loader.prepare("visualprobe_hard", "~/data/VisualProbe_Hard", "~/data/tfds")
    ds = loader.load("visualprobe_hard", "~/data/tfds")      # grain.MapDataset of Record, source order
    first = ds[0]

`prepare` is idempotent: a prepared dataset is reused (pass overwrite=True to rebuild it).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import grain
import tensorflow_datasets as tfds

from mini_o3_jax.data.benchmarks import benchmark, source_files
from mini_o3_jax.data.builders import (
    SPLIT,
    make_builder,
    read_bad_records,
    strict_error,
    to_conversation,
    to_record,
)
from mini_o3_jax.data.records import BadRecord, Record, RecordError, SourceError


@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What `prepare` did: how many records went in, which rows did not (and why), and where."""

    name: str
    num_records: int
    bad: list[BadRecord]
    path: str
    reused: bool = False

    def summary(self) -> str:
        verb = "reused" if self.reused else "prepared"
        text = f"{self.name}: {verb} {self.num_records} record(s) at {self.path}"
        if self.bad:
            text += f"; {len(self.bad)} unusable row(s) listed in {self.path}/bad_records.jsonl"
        return text


def _prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").exists()


def _report(name: str, builder: tfds.core.DatasetBuilder, reused: bool) -> PrepareReport:
    return PrepareReport(name, builder.info.splits[SPLIT].num_examples, read_bad_records(Path(builder.data_dir)),
                         str(builder.data_dir), reused)


def prepare(name: str, source_dir: str | Path, data_dir: str | Path, *, image_root: str | Path | None = None,
            strict: bool = False, overwrite: bool = False, allow_absolute_images: bool = False) -> PrepareReport:
    """Read `source_dir` (as downloaded from the hub) into `data_dir`/<builder>/<name>/<version>.

    Unusable rows are kept out and listed in the report and in bad_records.jsonl; with strict=True
    any unusable row raises RecordError naming it and nothing is written. Image paths are read inside
    the image root only; `allow_absolute_images` also reads absolute paths elsewhere. Works offline.
    """
    source_files(benchmark(name), source_dir)  # a source that is not there fails, even when a copy is prepared
    builder = make_builder(name, data_dir, source_dir=source_dir, image_root=image_root, strict=strict,
                           allow_absolute_images=allow_absolute_images)
    if _prepared(builder) and not overwrite:
        report = _report(name, builder, reused=True)
        if strict and report.bad:
            raise strict_error(name, report.bad)
        return report
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite else None
    config = tfds.download.DownloadConfig(try_download_gcs=False, **({"download_mode": mode} if mode else {}))
    try:
        builder.download_and_prepare(download_config=config)
    except Exception:
        if builder.strict_failure is not None:  # TFDS may wrap it; surface ours
            raise builder.strict_failure from None
        raise
    return _report(name, make_builder(name, data_dir), reused=False)


def _prepared_builder(name: str, data_dir: str | Path) -> tfds.core.DatasetBuilder:
    benchmark(name)
    builder = make_builder(name, data_dir)
    if not _prepared(builder):
        raise SourceError(f"{name} is not prepared under {data_dir} (looked for {builder.data_dir}); run "
                          f"`mini-o3 data prepare --benchmark {name} --source DIR --data-dir {data_dir}` or "
                          "loader.prepare(...) first")
    return builder


def load(name: str, data_dir: str | Path) -> grain.MapDataset:
    """The prepared question set as a random-access grain dataset of `Record`s, in source order."""
    if benchmark(name).kind != "question":
        raise ValueError(f"{name} holds conversations, not questions; use load_conversations")
    source = _prepared_builder(name, data_dir).as_data_source(SPLIT)
    return grain.MapDataset.source(source).map(functools.partial(to_record, name=name))


def load_conversations(data_dir: str | Path, name: str = "coldstart") -> grain.MapDataset:
    """The prepared cold-start set as a grain dataset of `ConversationRecord`s."""
    source = _prepared_builder(name, data_dir).as_data_source(SPLIT)
    return grain.MapDataset.source(source).map(to_conversation)


def bad_records(name: str, data_dir: str | Path) -> list[BadRecord]:
    """The rows `prepare` left out, with reasons."""
    return read_bad_records(Path(_prepared_builder(name, data_dir).data_dir))


def records(name: str, data_dir: str | Path, source_dir: str | Path | None = None, *,
            image_root: str | Path | None = None, allow_absolute_images: bool = False) -> list[Record]:
    """Every record of a question set (preparing it first when `source_dir` is given and it is not yet
    prepared). Holds all encoded images in memory; stream `load(...)` for big sets."""
    if source_dir is not None:
        prepare(name, source_dir, data_dir, image_root=image_root, allow_absolute_images=allow_absolute_images)
    return list(load(name, data_dir))


def coldstart_records(data_dir: str | Path, source_dir: str | Path | None = None, *,
                      image_root: str | Path | None = None, allow_absolute_images: bool = False) -> grain.MapDataset:
    """The prepared cold-start set as `ConversationRecord`s (images as encoded bytes), preparing it first
    when `source_dir` is given and it is not yet prepared; lazy and indexable, what
    `mini_o3_jax.sft.data.sharegpt_trajectories` takes. The rows `prepare` left out are in
    `bad_records("coldstart", data_dir)`."""
    if source_dir is not None:
        prepare("coldstart", source_dir, data_dir, image_root=image_root, allow_absolute_images=allow_absolute_images)
    return load_conversations(data_dir)


__all__ = ["PrepareReport", "RecordError", "bad_records", "coldstart_records", "load", "load_conversations",
           "prepare", "records"]
