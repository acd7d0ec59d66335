"""The registry of benchmarks and training sets: where each is published, which files to read, how.

`iter_source` streams a downloaded source directory (or one file) as `Record`s / `ConversationRecord`s
and `BadRecord`s, in source order, with duplicate doc_ids reported; `read_source` collects it (fine
for the benchmarks; the 12.6 GB VisualProbe_train is better streamed or prepared with TFDS).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

from mini_o3_jax.data import formats
from mini_o3_jax.data.formats import ParseContext, Parsed, Parser
from mini_o3_jax.data.records import BadRecord, ConversationRecord, Record, SourceError
from mini_o3_jax.errors import ConfigError

CC_BY_NC = "CC BY-NC 4.0 (Mini-o3 data; non-commercial use)"


@dataclasses.dataclass(frozen=True)
class Layout:
    """One published file layout: glob patterns relative to the source dir, and the parser for each file."""

    patterns: tuple[str, ...]
    parser: Parser
    note: str = ""


@dataclasses.dataclass(frozen=True)
class BenchmarkInfo:
    """Everything needed to find, read and score one dataset."""

    name: str
    hf_repo: str | None  # None: generated locally (synthetic sets)
    layouts: tuple[Layout, ...]  # tried in order; the first with files present is used
    data_source: str  # Mini-o3's data_source key, used when a row does not carry its own
    paper_column: str | None  # column of the paper's results table; None for training sets
    scorer: str  # default rule scorer: "choice" for multiple choice, "exact" otherwise
    category: str = ""  # default per-record category (VisualProbe difficulty, synthetic level)
    kind: str = "question"  # "question" -> Record, "conversation" -> ConversationRecord (cold-start SFT)
    options_in_problem: bool = False  # V* val.json: lift "(A) ..." lines out of the problem text
    license: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        """Every file pattern this dataset may be published as, in the order they are tried."""
        return tuple(p for layout in self.layouts for p in layout.patterns)

    def context(self, image_root: str | Path | None = None, allow_absolute_images: bool = False) -> ParseContext:
        return ParseContext(self.name, self.data_source, self.category,
                            Path(image_root).expanduser() if image_root is not None else None,
                            self.options_in_problem, allow_absolute_images)


def _minio3(*patterns: str) -> Layout:
    return Layout(patterns, formats.parse_minio3_json, "Mini-o3 JSON")


def _visualprobe(level: str) -> BenchmarkInfo:
    return BenchmarkInfo(f"visualprobe_{level}", f"Mini-o3/VisualProbe_{level.title()}",
                         (_minio3("val.json", "val.jsonl"),), f"visual_probe_{level}", f"VP {level}", "exact",
                         category=level, license=CC_BY_NC)


def _hrbench(res: str) -> BenchmarkInfo:
    return BenchmarkInfo(
        f"hrbench_{res}", "DreamMr/HR-Bench",
        (Layout((f"hr_bench_{res}.parquet",), formats.parse_hrbench_parquet, "parquet"),
         Layout((f"hr_bench_{res}.tsv",), formats.parse_hrbench_tsv, "VLMEvalKit TSV")),
        f"hr_bench_{res}", f"HR-{res.upper()}", "choice", license="see the HR-Bench dataset card")


def _synthetic(level: str) -> BenchmarkInfo:
    # toy.writers.write_benchmark writes <out>/synthetic_<level>/val.json (train: .../train.json)
    patterns = (("train.json", "train.jsonl", "synthetic_train/train.json") if level == "train"
                else ("val.json", "val.jsonl", f"synthetic_{level}/val.json"))
    return BenchmarkInfo(f"synthetic_{level}", None, (_minio3(*patterns),), f"synthetic_{level}", None, "exact",
                         category="" if level == "train" else level)


def _registry() -> dict[str, BenchmarkInfo]:
    entries = [
        BenchmarkInfo("visualprobe_train", "Mini-o3/VisualProbe_train", (_minio3("train.json", "train.jsonl"),),
                      "visual_probe_train", None, "exact", license=CC_BY_NC),
        _visualprobe("easy"), _visualprobe("medium"), _visualprobe("hard"),
        BenchmarkInfo("deepeyes_train_4k", "Mini-o3/DeepEyes_train_4K", (_minio3("train.json", "train.jsonl"),),
                      "deepeyes_train", None, "exact", license=CC_BY_NC + "; images from DeepEyes-47k"),
        BenchmarkInfo(
            "vstar", "craigwu/vstar_bench",
            (_minio3("val.json"),
             Layout(("test_questions.jsonl",), formats.parse_vstar_jsonl, "craigwu/vstar_bench questions"),
             Layout(("direct_attributes/*.json", "relative_position/*.json"), formats.parse_vstar_annotation,
                    "V* per-image annotations")),
            "vstar_bench", "V*", "choice", options_in_problem=True, license="see the V* dataset card"),
        _hrbench("4k"), _hrbench("8k"),
        BenchmarkInfo(
            "mme_realworld", "yifanzhang114/MME-RealWorld-Lmms-eval",
            (Layout(("data/train-*.parquet", "train-*.parquet"), formats.parse_mme_parquet, "lmms-eval parquet"),
             Layout(("MME_RealWorld.json",), formats.parse_mme_json, "yifanzhang114/MME-RealWorld JSON")),
            "mme_realworld", "MME-RW", "choice", license="see the MME-RealWorld dataset card"),
        BenchmarkInfo(
            "coldstart", "Mini-o3/Mini-o3-Coldstart-Dataset",
            (Layout(("data/train-*.parquet", "train-*.parquet"), formats.parse_coldstart_parquet, "HF parquet"),
             Layout(("Mini-o3-Coldstart.json",), formats.parse_coldstart_json, "LLaMA-Factory JSON")),
            "mini_o3_coldstart", None, "exact", kind="conversation", license=CC_BY_NC),
        *(_synthetic(level) for level in ("train", "easy", "medium", "hard")),
    ]
    return {e.name: e for e in entries}


BENCHMARKS: dict[str, BenchmarkInfo] = _registry()
PAPER_COLUMNS = ("VP hard", "VP medium", "VP easy", "V*", "HR-4K", "HR-8K", "MME-RW")


class UnknownBenchmark(ConfigError, KeyError):
    """A name not in the registry: a KeyError for lookups, and one of our input errors, so the CLI
    reports it as one line (`mini-o3 data prepare --benchmark`, eval's `--config.benchmarks`)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def benchmark(name: str) -> BenchmarkInfo:
    """The registry entry; the error suggests the closest names and lists them all."""
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, list(BENCHMARKS), n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise UnknownBenchmark(f"unknown benchmark {name!r}{hint}; expected one of: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def _natural(path: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def source_files(info: BenchmarkInfo, source: str | Path) -> tuple[Layout, list[Path]]:
    """The layout found in `source` (a directory, or one file of a known layout) and its files in
    natural order. SourceError says which files were expected."""
    source = Path(source).expanduser()
    expected = " | ".join(info.files)
    if source.is_file():
        for match in (lambda p: fnmatch.fnmatch(source.name, Path(p).name),
                      lambda p: source.suffix == Path(p).suffix):
            layout = next((lay for lay in info.layouts if any(map(match, lay.patterns))), None)
            if layout is not None:
                return layout, [source]
        raise SourceError(f"{source}: not a file {info.name} is published as; expected one of: {expected}")
    if not source.is_dir():
        raise SourceError(f"{info.name} source {source} does not exist; expected a directory downloaded from "
                          f"{info.hf_repo or 'the synthetic generator'} holding one of: {expected}")
    for layout in info.layouts:
        files = sorted({f for p in layout.patterns for f in source.glob(p) if f.is_file()}, key=_natural)
        if files:
            return layout, files
    raise SourceError(f"{source}: no {info.name} files found; expected one of: {expected}")


def iter_source(name: str, source: str | Path, image_root: str | Path | None = None, *,
                allow_absolute_images: bool = False) -> Iterator[Parsed]:
    """Stream a downloaded dataset in source order; a doc_id seen before becomes a BadRecord (the
    first occurrence is kept) so scores are never silently double-counted. Image paths are read
    inside the image root only, unless `allow_absolute_images` (`images.resolve_image`)."""
    info = benchmark(name)
    layout, files = source_files(info, source)
    ctx = info.context(image_root, allow_absolute_images)
    seen: dict[str, str] = {}
    for path in files:
        for row, item in enumerate(layout.parser(path, ctx)):  # a parser yields exactly one item per row
            if isinstance(item, BadRecord):
                yield item
            elif item.doc_id in seen:
                yield BadRecord(str(path), row, item.doc_id,
                                f"duplicate doc_id {item.doc_id!r} (first seen in {seen[item.doc_id]}); "
                                "expected doc_ids unique within the benchmark")
            else:
                seen[item.doc_id] = str(path)
                yield item


def read_source(name: str, source: str | Path, image_root: str | Path | None = None, *,
                allow_absolute_images: bool = False) -> tuple[list[Record], list[BadRecord]]:
    """All records and bad records of a question set (holds every image's encoded bytes in memory)."""
    if benchmark(name).kind != "question":
        raise ValueError(f"{name} holds conversations, not questions; use read_conversations")
    records: list[Record] = []
    bad: list[BadRecord] = []
    for item in iter_source(name, source, image_root, allow_absolute_images=allow_absolute_images):
        (bad if isinstance(item, BadRecord) else records).append(item)  # type: ignore[arg-type]
    return records, bad


def read_conversations(source: str | Path, image_root: str | Path | None = None, name: str = "coldstart", *,
                       allow_absolute_images: bool = False) -> tuple[list[ConversationRecord], list[BadRecord]]:
    """All cold-start trajectories and bad rows (images as encoded bytes)."""
    records: list[ConversationRecord] = []
    bad: list[BadRecord] = []
    for item in iter_source(name, source, image_root, allow_absolute_images=allow_absolute_images):
        (bad if isinstance(item, BadRecord) else records).append(item)  # type: ignore[arg-type]
    return records, bad
