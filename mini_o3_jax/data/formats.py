"""Parsers for each published benchmark / training-set format, reading the files as downloaded from the hub.

Every parser takes one source file and a `ParseContext` and yields, in file order, a `Record` (or a
`ConversationRecord` for the cold-start set) per usable row and a `BadRecord` per unusable one, so a
row is never dropped silently. A file that cannot be read at all (not JSON, missing columns) raises
`RecordError` naming the file, since none of its rows could be trusted. Image bytes are kept exactly
as published; they are only checked to decode.

Problem text for multiple-choice sets follows each benchmark's own prompt (verified against
lmms-eval and the benchmark repos; see docs/data.md), with "<image>\\n" in front.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mini_o3_jax.data.records import (
    LETTERS,
    BadRecord,
    ConversationRecord,
    Record,
    RecordError,
    answer_letter,
    check_image_bytes,
    lettered,
    parse_options,
)

IMAGE = "<image>"
VSTAR_INSTRUCTION = "Answer with the option's letter from the given choices directly."
HRBENCH_INSTRUCTION = "Answer the option letter directly."
MME_CHOICES = " The choices are listed below:\n"
MME_INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
                   "Respond with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is: ")
V_STAR_IMAGE_EXTS = (".jpg", ".JPG", ".jpeg", ".png", ".webp")
COLDSTART_ROLES = ("system", "human", "user", "gpt", "assistant")

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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _field(row: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in row or _missing(row[key]):
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
    return ctx.category if _missing(value) else _scalar_text(value)


def _letter(answer: str, options: Sequence[str], key: str) -> str:
    try:
        return answer_letter(answer, options)
    except RecordError as e:
        raise RecordError(f"field {key!r}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Images: files, base64 cells, HF image structs
# --------------------------------------------------------------------------------------------------


def image_candidates(ref: str, roots: Sequence[Path]) -> list[Path]:
    """Where a relative (or moved absolute) image path may be: each root joined with the whole path,
    then with ever shorter tails of it (so "VisualProbe_Hard/data/x.jpg" is found when the folder
    was downloaded under another name). Tails keep a folder + file name when the path has one, so a
    missing image is not replaced by any same-named file."""
    path = Path(ref)
    out = [path] if path.is_absolute() else [root / path for root in roots]
    parts = path.parts[1:] if path.is_absolute() else path.parts
    keep = 1 if len(parts) <= 2 else 2
    for k in range(1, len(parts) - keep + 1):
        out.extend(root / Path(*parts[k:]) for root in roots)
    return list(dict.fromkeys(out))


def read_image_file(ref: str, roots: Sequence[Path]) -> bytes:
    """The file's bytes exactly as stored, after checking they decode; RecordError names the paths tried."""
    tried = image_candidates(ref, roots)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        shown = ", ".join(str(p) for p in tried[:3]) + (f" (+{len(tried) - 3} more)" if len(tried) > 3 else "")
        raise RecordError(f"image file {ref!r} not found; tried {shown}")
    try:
        data = found.read_bytes()
    except OSError as e:
        raise RecordError(f"image file {found}: cannot be read: {e}") from None
    try:
        check_image_bytes(data)
    except RecordError as e:
        raise RecordError(f"image file {found}: {e}") from None
    return data


_BASE64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def _b64(text: str, key: str) -> bytes:
    compact = "".join(text.split())
    if compact.isdigit() and len(compact) <= 64:
        raise RecordError(f"field {key!r} holds {compact!r}, a VLMEvalKit reference to another row's image; "
                          "expected the image itself (base64) - use the parquet file instead")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RecordError(f"field {key!r} is not valid base64 image data: {e}") from None


def cell_image(value: Any, key: str, roots: Sequence[Path] = ()) -> bytes:
    """Encoded image bytes from a table cell: raw bytes, a base64 string (lmms-eval / VLMEvalKit
    tables), or an HF image struct {"bytes": ..., "path": ...}. Checked to decode."""
    if isinstance(value, Mapping):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            return read_image_file(value["path"], roots)
        else:
            raise RecordError(f"field {key!r} is an image struct with neither bytes nor path")
    if isinstance(value, str):
        data = _b64(value, key)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if _BASE64.fullmatch(data) and len(data) % 4 == 0 and not _looks_like_image(data):
            data = _b64(data.decode("ascii"), key)  # base64 text stored in a binary column
    elif _missing(value):
        raise RecordError(f"missing field {key!r}")
    else:
        raise RecordError(f"field {key!r} must hold image bytes, base64 text or an image struct, "
                          f"got {type(value).__name__}")
    try:
        check_image_bytes(data)
    except RecordError as e:
        raise RecordError(f"field {key!r}: {e}") from None
    return data


def _looks_like_image(data: bytes) -> bool:
    try:
        check_image_bytes(data)
    except RecordError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------------


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(index, row) of a JSON list or a JSONL file; a JSONL line that is not JSON comes back as the
    RecordError to report for that row."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        yield i, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield i, RecordError(f"line {i + 1} is not JSON: {e}")
        return
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: cannot be read as JSON: {e}") from None
    if not isinstance(rows, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    yield from enumerate(rows)


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for files that are not parquet
        raise RecordError(f"{path}: cannot be read as parquet: {e}") from None


def parquet_columns(path: Path) -> list[str]:
    return list(_parquet_file(path).schema_arrow.names)


def parquet_rows(path: Path, required: Sequence[str], optional: Iterable[str] = (),
                 batch_size: int = 16) -> Iterator[dict[str, Any]]:
    """Rows of a parquet file as dicts, a few at a time (benchmarks embed large images), reading only
    the needed columns. RecordError names the file and the missing columns."""
    pf = _parquet_file(path)
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise RecordError(f"{path}: missing column(s) {missing}; the file has {names}")
    columns = list(dict.fromkeys([*required, *(c for c in optional if c in names)]))
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        yield from batch.to_pylist()


def tsv_rows(path: Path, required: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of a VLMEvalKit-style TSV (pandas `to_csv(sep="\\t")`), streamed; cells hold base64 images
    far above csv's default field limit."""
    csv.field_size_limit(2**31 - 1)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise RecordError(f"{path}: missing column(s) {missing}; the header has {reader.fieldnames}")
        yield from reader


def _rows_to_records(path: Path, rows: Iterable[tuple[int, Any]], id_key: str,
                     convert: Callable[[Mapping[str, Any]], Record | ConversationRecord]) -> Iterator[Parsed]:
    """Convert rows one by one; a row's RecordError becomes a BadRecord naming file, row and doc_id."""
    for i, row in rows:
        doc_id = ""
        if isinstance(row, Mapping) and not _missing(row.get(id_key)):
            doc_id = _scalar_text(row[id_key])
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, Mapping):
                raise RecordError(f"expected an object with fields, got {type(row).__name__}")
            yield convert(row)
        except RecordError as e:
            yield BadRecord(str(path), i, doc_id, str(e))


# --------------------------------------------------------------------------------------------------
# Mini-o3 JSON: VisualProbe, DeepEyes_train_4K, Mini-o3's V* val.json, synthetic sets
# --------------------------------------------------------------------------------------------------


def json_image_roots(path: Path, ctx: ParseContext) -> list[Path]:
    """$BASE_IMAGE_DIR candidates: an explicit image_root, else the JSON's folder, then its parent."""
    return [ctx.image_root] if ctx.image_root is not None else [path.parent, path.parent.parent]


def parse_minio3_json(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """Mini-o3's RL/val format: a list (or JSONL) of {images: [one path], doc_id, problem, solution,
    data_source}. With `ctx.options_in_problem` (V*), "(A) ..." lines are lifted into `options` and a
    solution given as an option text is mapped to its letter."""
    roots = json_image_roots(path, ctx)

    def convert(row: Mapping[str, Any]) -> Record:
        images = _field(row, "images", list)
        if len(images) != 1 or not isinstance(images[0], str):
            raise RecordError(f"field 'images' must be a list with exactly one image path, got {images!r:.120}")
        doc_id = _id(row, "doc_id")
        problem = _field(row, "problem", str)
        if problem.count(IMAGE) != 1:
            raise RecordError(f"field 'problem' must contain exactly one {IMAGE!r} placeholder, "
                              f"found {problem.count(IMAGE)}")
        solution = _answer(row, "solution")
        data_source = row.get("data_source") or ctx.data_source
        if not isinstance(data_source, str):
            raise RecordError(f"field 'data_source' must be a string, got {data_source!r:.60}")
        options: tuple[str, ...] = tuple(parse_options(problem)) if ctx.options_in_problem else ()
        if options:
            solution = _letter(solution, options, "solution")
        image = read_image_file(images[0], roots)
        return Record(ctx.benchmark, doc_id, image, problem, solution, data_source, options,
                      _category(row, "category", ctx))

    yield from _rows_to_records(path, _json_rows(path), "doc_id", convert)


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
        image = read_image_file(_field(row, "image", str), roots)
        return Record(ctx.benchmark, doc_id, image, with_image(text), solution, ctx.data_source, options,
                      _category(row, "category", ctx))

    yield from _rows_to_records(path, _json_rows(path), "question_id", convert)


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
        image = read_image_file(str(image_path), [])
        return Record(ctx.benchmark, doc_id, image, vstar_problem(question, options), "A", ctx.data_source,
                      tuple(options), category)

    try:
        row: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        row = RecordError(f"annotation is not JSON: {e}")
    for item in _rows_to_records(path, [(0, row)], "", convert):
        yield dataclasses.replace(item, doc_id=doc_id) if isinstance(item, BadRecord) else item


# --------------------------------------------------------------------------------------------------
# HR-Bench (DreamMr/HR-Bench): parquet or VLMEvalKit TSV
# --------------------------------------------------------------------------------------------------

HRBENCH_COLUMNS = ("index", "question", "answer", "image")


def _letter_columns(row: Mapping[str, Any]) -> list[str]:
    """Options from the A, B, C, ... columns; a gap (A, B, D) is an error, not a silent truncation."""
    present = [letter for letter in LETTERS if letter in row and not _missing(row[letter])]
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
        image = cell_image(row.get("image"), "image", roots)
        return Record(ctx.benchmark, doc_id, image, hrbench_problem(question, options), solution,
                      ctx.data_source, tuple(options), _category(row, "category", ctx))

    return convert


def parse_hrbench_parquet(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`hr_bench_{4k,8k}.parquet`: index, question, A-D, answer (letter), category (single/cross),
    cycle_category, image (base64 text, or bytes / an image struct)."""
    rows = parquet_rows(path, HRBENCH_COLUMNS, optional=[*LETTERS, "category", "cycle_category"], batch_size=8)
    yield from _rows_to_records(path, enumerate(rows), "index", _hrbench_converter(path, ctx))


def parse_hrbench_tsv(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`hr_bench_{4k,8k}.tsv` (VLMEvalKit layout): the same columns, image as base64 text."""
    yield from _rows_to_records(path, enumerate(tsv_rows(path, HRBENCH_COLUMNS)), "index",
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
        image = cell_image(row.get(image_key), image_key, [path.parent])
        return Record(ctx.benchmark, doc_id, image, mme_problem(question, options), solution, ctx.data_source,
                      tuple(options), _category(row, "category", ctx))

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
        image = read_image_file(_field(row, "Image", str), roots)
        parts = [_scalar_text(row[k]) for k in ("Task", "Subtask") if not _missing(row.get(k))]
        return Record(ctx.benchmark, doc_id, image, mme_problem(question, options), solution, ctx.data_source,
                      tuple(options), "/".join(parts) or ctx.category)

    yield from _rows_to_records(path, _json_rows(path), "Question_id", convert)


# --------------------------------------------------------------------------------------------------
# Mini-o3 cold-start SFT set: HF parquet shards, or the LLaMA-Factory JSON made from them
# --------------------------------------------------------------------------------------------------


def parse_conversations(value: Any) -> list[dict[str, str]]:
    """sharegpt turns from a list or from its string form (JSON, or the Python repr Mini-o3 stored)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                raise RecordError(f"field 'conversations' is a string that is neither JSON nor a Python "
                                  f"list literal: {type(e).__name__}: {e}") from None
    if not isinstance(value, list) or not value:
        raise RecordError(f"field 'conversations' must be a non-empty list of turns, got {value!r:.80}")
    turns = []
    for k, turn in enumerate(value):
        if not isinstance(turn, Mapping) or turn.get("from") not in COLDSTART_ROLES or not isinstance(
                turn.get("value"), str):
            raise RecordError(f"conversations turn {k} is {turn!r:.80}; expected {{'from': one of "
                              f"{list(COLDSTART_ROLES)}, 'value': text}}")
        turns.append({"from": turn["from"], "value": turn["value"]})
    return turns


def _conversation_record(doc_id: str, turns: list[dict[str, str]], images: list[bytes],
                         data_source: str) -> ConversationRecord:
    placeholders = sum(t["value"].count(IMAGE) for t in turns if t["from"] in ("human", "user"))
    if placeholders != len(images):
        raise RecordError(f"{placeholders} {IMAGE} placeholder(s) in the human turns but {len(images)} image(s); "
                          "expected one image per placeholder")
    return ConversationRecord(doc_id, turns, tuple(images), data_source)


def parse_coldstart_parquet(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """A `data/train-*.parquet` shard of Mini-o3/Mini-o3-Coldstart-Dataset: conversations (string),
    images (HF image structs), image_names, data_source, sample_index, rollout_index."""
    rows = parquet_rows(path, ("conversations", "images"),
                        optional=["data_source", "sample_index", "rollout_index"], batch_size=4)

    def convert(row: Mapping[str, Any]) -> ConversationRecord:
        turns = parse_conversations(row.get("conversations"))
        raw = _field(row, "images", list)
        images = [cell_image(img, f"images[{k}]", [path.parent]) for k, img in enumerate(raw)]
        data_source = ctx.data_source if _missing(row.get("data_source")) else str(row["data_source"])
        return _conversation_record(row["_doc_id"], turns, images, data_source)

    def with_ids() -> Iterator[tuple[int, dict[str, Any]]]:
        for i, row in enumerate(rows):
            keys = [row.get("sample_index"), row.get("rollout_index")]
            source = ctx.data_source if _missing(row.get("data_source")) else _scalar_text(row["data_source"])
            row["_doc_id"] = (f"{path.stem}/{i}" if any(map(_missing, keys))
                              else "/".join([source, *map(_scalar_text, keys)]))
            yield i, row

    yield from _rows_to_records(path, with_ids(), "_doc_id", convert)


def parse_coldstart_json(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """`Mini-o3-Coldstart.json` (the LLaMA-Factory file Mini-o3's preprocessing script writes):
    [{conversations, images: [paths]}]; paths are absolute there, so moved folders are found by tail."""
    roots = json_image_roots(path, ctx)

    def convert(row: Mapping[str, Any]) -> ConversationRecord:
        turns = parse_conversations(row.get("conversations"))
        refs = row.get("images") or []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise RecordError(f"field 'images' must be a list of image paths, got {refs!r:.120}")
        images = [read_image_file(ref, roots) for ref in refs]
        data_source = row.get("data_source") or ctx.data_source
        return _conversation_record(str(row["_doc_id"]), turns, images, str(data_source))

    def with_ids() -> Iterator[tuple[int, Any]]:
        for i, row in _json_rows(path):
            if isinstance(row, dict):
                row = {**row, "_doc_id": _scalar_text(row["id"]) if not _missing(row.get("id")) else str(i)}
            yield i, row

    yield from _rows_to_records(path, with_ids(), "_doc_id", convert)
