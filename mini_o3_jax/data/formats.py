"""Parsers for each published benchmark / training-set format, reading the files as downloaded from the hub.

Every parser takes one source file and a `ParseContext` and yields, in file order, a `Record` (or a
`ConversationRecord` for the cold-start set) per usable row and a `BadRecord` per unusable one, so a
row is never dropped silently. Every per-row failure (bytes that are not UTF-8, an over-size or too
deeply nested row, a cut-short last line, a wrong type, an image path outside the image root) is such a
`BadRecord`, and the rows after it are still read (`rows.py`). A file that cannot be read at all (not a
JSON list, missing columns) raises `RecordError` naming the file, since none of its rows could be
trusted. Image bytes are kept exactly as published; they are only checked to decode (`images.py`).

These parsers serve both paths into a run: `data prepare` (TFDS, images stored as bytes) and a run
reading its own released file (`ParseContext.direct`: images kept as checked paths).

Problem text for multiple-choice sets follows each benchmark's own prompt (verified against
lmms-eval and the benchmark repos; see docs/data.md), with "<image>\\n" in front.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mini_o3_jax.data.conversations import IMAGE, check_image_count, parse_conversations
from mini_o3_jax.data.images import cell_image, checked_path, read_checked_image, read_image_file
from mini_o3_jax.data.records import (
    LETTERS,
    BadRecord,
    ConversationRecord,
    Record,
    RecordError,
    answer_letter,
    lettered,
    parse_options,
)
from mini_o3_jax.data.rows import (
    ROW_ERRORS,
    Row,
    check_size,
    is_missing,
    json_rows,
    parquet_columns,
    parquet_rows,
    parse_json_row,
    tsv_rows,
)
from mini_o3_jax.processing.image import ImageSource

VSTAR_INSTRUCTION = "Answer with the option's letter from the given choices directly."
HRBENCH_INSTRUCTION = "Answer the option letter directly."
MME_CHOICES = " The choices are listed below:\n"
MME_INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
                   "Respond with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is: ")
V_STAR_IMAGE_EXTS = (".jpg", ".JPG", ".jpeg", ".png", ".webp")

Parsed = Record | ConversationRecord | BadRecord
Parser = Callable[[Path, "ParseContext"], Iterator[Parsed]]


@dataclasses.dataclass(frozen=True)
class ParseContext:
    """What a parser needs besides the file: the registry entry's defaults and where images live."""

    benchmark: str
    data_source: str
    category: str = ""
    image_root: Path | None = None
    options_in_problem: bool = False  # V* in Mini-o3's JSON: lift "(A) ..." lines out of the problem
    allow_absolute_images: bool = False  # read absolute image paths outside the image roots as they are
    # A run reading its own file (`--config.data.path`) instead of a prepared set: each image stays a
    # checked path, loaded when used (8k high-resolution RL prompts need not sit in memory), and rows are
    # named as such a run reports them (see `parse_minio3_json` and `parse_coldstart_json`).
    direct: bool = False


# --------------------------------------------------------------------------------------------------
# Problem text for multiple choice
# --------------------------------------------------------------------------------------------------


def with_image(text: str) -> str:
    """The model-facing problem: "<image>\\n" + text (Mini-o3's user prompt is the problem verbatim)."""
    return f"{IMAGE}\n{text}"


def vstar_problem(question: str, options: Sequence[str]) -> str:
    """V*'s published `text`: question, "(A) ..." lines, then its letter instruction."""
    return with_image("\n".join([question, *lettered(options), VSTAR_INSTRUCTION]))


def hrbench_problem(question: str, options: Sequence[str]) -> str:
    """lmms-eval's `hrbench_doc_to_text`: question, "A. ..." lines, "Answer the option letter directly."."""
    lines = "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, options))
    return with_image(f"{question.strip()}\n{lines}{HRBENCH_INSTRUCTION}")


def mme_problem(question: str, options: Sequence[str]) -> str:
    """lmms-eval's `mme_realworld_doc_to_text` (the benchmark's own prompt), trailing space included."""
    return with_image(question + MME_CHOICES + "\n".join(lettered(options)) + "\n" + MME_INSTRUCTION)


# --------------------------------------------------------------------------------------------------
# Field access with errors that name the field
# --------------------------------------------------------------------------------------------------


def _field(row: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in row or is_missing(row[key]):
        raise RecordError(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RecordError(f"field {key!r} must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def _scalar_text(value: Any) -> str:
    """A cell as text: 3.0 (a float column) -> "3", so ids and answers read as published."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _id(row: Mapping[str, Any], key: str) -> str:
    value = _field(row, key, (str, int, float))
    if isinstance(value, bool):
        raise RecordError(f"field {key!r} must be a string or integer id, got {value!r}")
    return _scalar_text(value)


def _answer(row: Mapping[str, Any], key: str) -> str:
    """Non-empty answer text; numbers (a JSON 3 or a parquet 3.0) are read as their text."""
    value = _field(row, key, (str, int, float))
    if isinstance(value, bool):
        raise RecordError(f"field {key!r} must be answer text, got {value!r}")
    return _scalar_text(value)


def _category(row: Mapping[str, Any], key: str, ctx: ParseContext) -> str:
    value = row.get(key)
    return ctx.category if is_missing(value) else _scalar_text(value)


def _letter(answer: str, options: Sequence[str], key: str) -> str:
    try:
        return answer_letter(answer, options)
    except RecordError as e:
        raise RecordError(f"field {key!r}: {e}") from None


def _image_file(ref: str, roots: Sequence[Path], ctx: ParseContext) -> ImageSource:
    """A row's image file: its checked path for a direct read, else its checked bytes."""
    if ctx.direct:
        return checked_path(ref, roots, ctx.allow_absolute_images)
    return read_image_file(ref, roots, ctx.allow_absolute_images)


def _rows_to_records(path: Path, rows: Iterable[Row], id_key: str,
                     convert: Callable[[Mapping[str, Any]], Record | ConversationRecord]) -> Iterator[Parsed]:
    """Convert rows one by one; a row's error becomes a BadRecord naming file, row and doc_id."""
    for i, row in rows:
        doc_id = ""
        try:
            if isinstance(row, Mapping) and not is_missing(row.get(id_key)):
                doc_id = _scalar_text(row[id_key])[:200]
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, Mapping):
                raise RecordError(f"expected a record (an object with fields), got {type(row).__name__}")
            yield convert(row)
        except RecordError as e:
            yield BadRecord(str(path), i, doc_id, str(e))
        except ROW_ERRORS as e:
            yield BadRecord(str(path), i, doc_id, f"cannot be read: {type(e).__name__}: {str(e)[:200]}")


# --------------------------------------------------------------------------------------------------
# Mini-o3 JSON: VisualProbe, DeepEyes_train_4K, Mini-o3's V* val.json, synthetic sets, RL prompt files
# --------------------------------------------------------------------------------------------------


def json_image_roots(path: Path, ctx: ParseContext | None = None) -> list[Path]:
    """$BASE_IMAGE_DIR candidates: an explicit image_root, else the JSON's folder, then its parent
    (never the filesystem root, which would let any relative path be read)."""
    if ctx is not None and ctx.image_root is not None:
        return [ctx.image_root]
    folder = Path(os.path.abspath(path.parent))
    return [folder] if folder.parent == folder.parent.parent else [folder, folder.parent]


def _solution(row: Mapping[str, Any], ctx: ParseContext) -> str:
    """The answer text; a direct read takes it only as JSON text, as the released RL files give it."""
    if ctx.direct and not isinstance(row.get("solution"), str):
        raise RecordError(f"expected a string 'solution', got {str(row.get('solution'))[:120]!r}")
    return _answer(row, "solution")


def parse_minio3_json(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """Mini-o3's RL/val format: a list (or JSONL) of {images: [one path], doc_id, problem, solution,
    data_source}. With `ctx.options_in_problem` (V*), "(A) ..." lines are lifted into `options` and a
    solution given as an option text is mapped to its letter. The image is looked up first, so a row
    whose image cannot be used is reported for that."""
    roots = json_image_roots(path, ctx)

    def convert(row: Mapping[str, Any]) -> Record:
        images = _field(row, "images", list)
        if len(images) != 1 or not isinstance(images[0], str):
            raise RecordError(f"field 'images' must be a list with exactly one image path, got {images!r:.120}")
        image = _image_file(images[0], roots, ctx)
        doc_id = _id(row, "doc_id")
        problem = _field(row, "problem", str)
        if problem.count(IMAGE) != 1:
            raise RecordError(f"field 'problem' must contain exactly one {IMAGE!r} placeholder, "
                              f"found {problem.count(IMAGE)}")
        solution = _solution(row, ctx)
        data_source = row.get("data_source") or ctx.data_source
        if not isinstance(data_source, str):
            raise RecordError(f"field 'data_source' must be a string, got {data_source!r:.60}")
        options: tuple[str, ...] = tuple(parse_options(problem)) if ctx.options_in_problem else ()
        if options:
            solution = _letter(solution, options, "solution")
        return Record(benchmark=ctx.benchmark, doc_id=doc_id, image=image, problem=problem, solution=solution,
                      data_source=data_source, options=options, category=_category(row, "category", ctx))

    yield from _rows_to_records(path, json_rows(path), "doc_id", convert)

# --------------------------------------------------------------------------------------------------
# V* Bench as published at craigwu/vstar_bench
# --------------------------------------------------------------------------------------------------


def parse_vstar_jsonl(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`test_questions.jsonl`: {question_id, image (path from the repo root), text (question, "(A) ..."
    lines, instruction), category, label (letter)}. The problem is "<image>\\n" + text verbatim."""
    roots = [ctx.image_root] if ctx.image_root is not None else [path.parent]

    def convert(row: Mapping[str, Any]) -> Record:
        doc_id = _id(row, "question_id")
        text = _field(row, "text", str)
        options = tuple(parse_options(text))
        if not options:
            raise RecordError("field 'text' has no '(A) ...' option lines; expected the V* question with "
                              "lettered options")
        solution = _letter(_answer(row, "label"), options, "label")
        image = read_image_file(_field(row, "image", str), roots, ctx.allow_absolute_images)
        return Record(benchmark=ctx.benchmark, doc_id=doc_id, image=image, problem=with_image(text),
                      solution=solution, data_source=ctx.data_source, options=options,
                      category=_category(row, "category", ctx))

    yield from _rows_to_records(path, json_rows(path), "question_id", convert)


def parse_vstar_annotation(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """One `direct_attributes/*.json` / `relative_position/*.json` file of the original V* release:
    {question, options (correct one first), ...} beside an image with the same stem. The options
    keep their published order, so the answer is always "A" here (see docs/data.md)."""
    category = path.parent.name
    doc_id = f"{category}/{path.stem}"

    def convert(row: Mapping[str, Any]) -> Record:
        question = _field(row, "question", str)
        options = _field(row, "options", list)
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise RecordError(f"field 'options' must list at least two option texts, got {options!r:.120}")
        image_path = next((path.with_suffix(ext) for ext in V_STAR_IMAGE_EXTS if path.with_suffix(ext).is_file()),
                          None)
        if image_path is None:
            raise RecordError(f"no image beside the annotation; expected {path.stem} with one of "
                              f"{list(V_STAR_IMAGE_EXTS)}")
        image = read_checked_image(image_path)  # beside the annotation: not a path from the data
        return Record(benchmark=ctx.benchmark, doc_id=doc_id, image=image, problem=vstar_problem(question, options),
                      solution="A", data_source=ctx.data_source, options=tuple(options), category=category)

    try:
        check_size(path.stat().st_size, "annotation", "bytes")
        row: Any = parse_json_row(path.read_text(encoding="utf-8"), "annotation")
    except (OSError, UnicodeDecodeError) as e:
        row = RecordError(f"annotation cannot be read as UTF-8 JSON: {e}")
    except RecordError as e:
        row = e
    for item in _rows_to_records(path, [(0, row)], "", convert):
        yield dataclasses.replace(item, doc_id=doc_id) if isinstance(item, BadRecord) else item


# --------------------------------------------------------------------------------------------------
# HR-Bench (DreamMr/HR-Bench): parquet or VLMEvalKit TSV
# --------------------------------------------------------------------------------------------------

HRBENCH_COLUMNS = ("index", "question", "answer", "image")


def _letter_columns(row: Mapping[str, Any]) -> list[str]:
    """Options from the A, B, C, ... columns; a gap (A, B, D) is an error, not a silent truncation."""
    present = [letter for letter in LETTERS if letter in row and not is_missing(row[letter])]
    if present != list(LETTERS[: len(present)]):
        raise RecordError(f"option columns {present} do not run A, B, C, ... without a gap")
    if len(present) < 2:
        raise RecordError(f"expected at least two option columns A, B, ..., got {present}")
    return [_scalar_text(row[letter]) for letter in present]


def _hrbench_converter(path: Path, ctx: ParseContext) -> Callable[[Mapping[str, Any]], Record]:
    roots = [ctx.image_root] if ctx.image_root is not None else [path.parent]

    def convert(row: Mapping[str, Any]) -> Record:
        doc_id = _id(row, "index")
        question = _field(row, "question", str)
        options = _letter_columns(row)
        solution = _letter(_answer(row, "answer"), options, "answer")
        image = cell_image(row.get("image"), "image", roots, ctx.allow_absolute_images)
        return Record(benchmark=ctx.benchmark, doc_id=doc_id, image=image,
                      problem=hrbench_problem(question, options), solution=solution, data_source=ctx.data_source,
                      options=tuple(options), category=_category(row, "category", ctx))

    return convert


def parse_hrbench_parquet(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`hr_bench_{4k,8k}.parquet`: index, question, A-D, answer (letter), category (single/cross),
    cycle_category, image (base64 text, or bytes / an image struct)."""
    rows = parquet_rows(path, HRBENCH_COLUMNS, optional=[*LETTERS, "category", "cycle_category"], batch_size=8)
    yield from _rows_to_records(path, enumerate(rows), "index", _hrbench_converter(path, ctx))


def parse_hrbench_tsv(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`hr_bench_{4k,8k}.tsv` (VLMEvalKit layout): the same columns, image as base64 text."""
    yield from _rows_to_records(path, tsv_rows(path, HRBENCH_COLUMNS), "index",
                                _hrbench_converter(path, ctx))


# --------------------------------------------------------------------------------------------------
# MME-RealWorld: lmms-eval parquet shards, or the original MME_RealWorld.json + image folder
# --------------------------------------------------------------------------------------------------

_OPTION_PREFIX = re.compile(r"^\s*\(([A-Z])\)\s*(.*?)\s*$", re.DOTALL)


def _prefixed_options(raw: Sequence[Any], key: str) -> list[str]:
    """["(A) x", "(B) y"] -> ["x", "y"], insisting on the letters A, B, ... in order."""
    texts = []
    for k, item in enumerate(raw):
        m = _OPTION_PREFIX.match(item) if isinstance(item, str) else None
        if m is None or m.group(1) != LETTERS[k]:
            raise RecordError(f"field {key!r} item {k} is {item!r:.60}; expected '({LETTERS[k]}) <option text>'")
        texts.append(m.group(2))
    if len(texts) < 2:
        raise RecordError(f"field {key!r} must list at least two options, got {list(raw)!r:.120}")
    return texts


def parse_mme_parquet(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """One `data/train-*.parquet` shard of yifanzhang114/MME-RealWorld-Lmms-eval: index, question,
    "multi-choice options" (["(A) ...", ...]), answer (letter), category, l2-category, and the image
    as base64 text in column `bytes` (or `image`)."""
    names = parquet_columns(path)
    image_key = "bytes" if "bytes" in names or "image" not in names else "image"
    required = ("index", "question", "multi-choice options", "answer", image_key)

    def convert(row: Mapping[str, Any]) -> Record:
        doc_id = _id(row, "index")
        question = _field(row, "question", str)
        options = _prefixed_options(_field(row, "multi-choice options", list), "multi-choice options")
        solution = _letter(_answer(row, "answer"), options, "answer")
        image = cell_image(row.get(image_key), image_key, [path.parent], ctx.allow_absolute_images)
        return Record(benchmark=ctx.benchmark, doc_id=doc_id, image=image, problem=mme_problem(question, options),
                      solution=solution, data_source=ctx.data_source, options=tuple(options),
                      category=_category(row, "category", ctx))

    rows = parquet_rows(path, required, optional=["category", "l2-category"], batch_size=8)
    yield from _rows_to_records(path, enumerate(rows), "index", convert)


def parse_mme_json(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """The original `MME_RealWorld.json`: Question_id, Image (path in the unzipped image folder), Text,
    "Answer choices" (["(A) ...", ...]), "Ground truth" (letter), Task, Subtask, Category."""
    roots = json_image_roots(path, ctx)

    def convert(row: Mapping[str, Any]) -> Record:
        doc_id = _id(row, "Question_id")
        question = _field(row, "Text", str)
        options = _prefixed_options(_field(row, "Answer choices", list), "Answer choices")
        solution = _letter(_answer(row, "Ground truth"), options, "Ground truth")
        image = read_image_file(_field(row, "Image", str), roots, ctx.allow_absolute_images)
        parts = [_scalar_text(row[k]) for k in ("Task", "Subtask") if not is_missing(row.get(k))]
        return Record(benchmark=ctx.benchmark, doc_id=doc_id, image=image, problem=mme_problem(question, options),
                      solution=solution, data_source=ctx.data_source, options=tuple(options),
                      category="/".join(parts) or ctx.category)

    yield from _rows_to_records(path, json_rows(path), "Question_id", convert)


# --------------------------------------------------------------------------------------------------
# Mini-o3 cold-start SFT set: HF parquet shards, or the LLaMA-Factory JSON made from them
# --------------------------------------------------------------------------------------------------


def parse_coldstart_parquet(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """A `data/train-*.parquet` shard of Mini-o3/Mini-o3-Coldstart-Dataset: conversations (string),
    images (HF image structs), image_names, data_source, sample_index, rollout_index."""
    rows = parquet_rows(path, ("conversations", "images"),
                        optional=["data_source", "sample_index", "rollout_index"], batch_size=4)

    def convert(row: Mapping[str, Any]) -> ConversationRecord:
        turns = parse_conversations(row.get("conversations"))
        raw = _field(row, "images", list)
        check_image_count(turns, len(raw))
        images = [cell_image(img, f"images[{k}]", [path.parent], ctx.allow_absolute_images)
                  for k, img in enumerate(raw)]
        data_source = ctx.data_source if is_missing(row.get("data_source")) else str(row["data_source"])
        return ConversationRecord(row["_doc_id"], turns, tuple(images), data_source)

    def with_ids() -> Iterator[tuple[int, dict[str, Any]]]:
        for i, row in enumerate(rows):
            keys = [row.get("sample_index"), row.get("rollout_index")]
            source = ctx.data_source if is_missing(row.get("data_source")) else _scalar_text(row["data_source"])
            row["_doc_id"] = (f"{path.stem}/{i}" if any(map(is_missing, keys))
                              else "/".join([source, *map(_scalar_text, keys)]))
            yield i, row

    yield from _rows_to_records(path, with_ids(), "_doc_id", convert)


def parse_coldstart_json(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`Mini-o3-Coldstart.json` (the LLaMA-Factory file Mini-o3's preprocessing script writes):
    [{conversations, images: [paths]}]; paths are absolute there, so moved folders are found by tail.

    A row without an `id` is named by its index; a direct read names it `file[index]`, the name its
    truncation and error messages give, and lists its bad rows by file and row alone."""
    roots = json_image_roots(path, ctx)

    def convert(row: Mapping[str, Any]) -> ConversationRecord:
        if "conversations" not in row:
            raise RecordError(f"expected an object with 'conversations', got {type(row).__name__} without it")
        turns = parse_conversations(row["conversations"])
        refs = row.get("images") or []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise RecordError(f"field 'images' must be a list of image paths, got {refs!r:.120}")
        check_image_count(turns, len(refs))
        images = tuple(_image_file(ref, roots, ctx) for ref in refs)
        data_source = row.get("data_source") or ctx.data_source
        return ConversationRecord(str(row["_doc_id"]), turns, images, str(data_source))

    def with_ids() -> Iterator[tuple[int, Any]]:
        for i, row in json_rows(path):
            if isinstance(row, dict):
                given = row.get("id")
                named = isinstance(given, (str, int, float)) and not is_missing(given)
                row = {**row, "_doc_id": _scalar_text(given) if named else f"{path}[{i}]" if ctx.direct else str(i)}
            yield i, row

    yield from _rows_to_records(path, with_ids(), "id" if ctx.direct else "_doc_id", convert)
