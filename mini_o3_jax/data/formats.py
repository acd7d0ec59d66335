"""Parsers for each published benchmark / training-set format, reading the files as downloaded from the hub.

Every parser takes one source file and a `ParseContext` and yields, in file order, a `Record` (or a
`ConversationRecord` for the cold-start set) per usable row and a `BadRecord` per unusable one, so a
row is never dropped silently. Every per-row failure (bytes that are not UTF-8, an over-size or too
deeply nested row, a cut-short last line, a wrong type, an image path outside the image root) is such a
`BadRecord`, and the rows after it are still read. A file that cannot be read at all (not a JSON list,
missing columns) raises `RecordError` naming the file, since none of its rows could be trusted. Image
bytes are kept exactly as published; they are only checked to decode.

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
import os
import re
import reprlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

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
# sharegpt speaker -> chat role; LLaMA-Factory's tags (human/gpt) and the chat names both occur
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
COLDSTART_ROLES = tuple(SHAREGPT_ROLES)
# Bounds applied before any row text is parsed, so one hostile or corrupt row costs a bad-row report, not
# the run: a published row (a JSON line, a cold-start conversations string) is well under 1 MiB, and a
# sharegpt conversation is 3 brackets deep.
MAX_ROW_BYTES = 16 * 2**20
MAX_NESTING = 32

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
    missing image is not replaced by any same-named file. Every candidate lies inside a root for a
    normalised `ref` (see `resolve_image`), except an absolute `ref` itself, which comes first."""
    path = Path(ref)
    out = [path] if path.is_absolute() else [root / path for root in roots]
    parts = path.parts[1:] if path.is_absolute() else path.parts
    keep = 1 if len(parts) <= 2 else 2
    for k in range(1, len(parts) - keep + 1):
        out.extend(root / Path(*parts[k:]) for root in roots)
    return list(dict.fromkeys(out))


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    """Lexically under one of `roots` (symlinks are not followed: an HF cache snapshot is all symlinks)."""
    return any(path.is_relative_to(Path(os.path.abspath(root))) for root in roots)


def _shown_roots(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none)"


def resolve_image(ref: str, roots: Sequence[Path], allow_absolute: bool = False) -> Path:
    """The image file `ref` names, found inside `roots` only, so a row cannot make a reader open files
    elsewhere. A relative path that climbs out (`../`) is refused. An absolute path is read as is when it
    lies inside a root or `allow_absolute` is set; otherwise only its tails are looked up inside the roots
    (Mini-o3's cold-start JSON stores absolute paths from the machine that wrote it). RecordError names
    `ref` and what was tried."""
    if not ref or "\x00" in ref:
        raise RecordError(f"image path {ref!r} is empty or holds a NUL byte; expected a file path")
    norm = os.path.normpath(ref)
    absolute = os.path.isabs(norm)
    if not absolute and (norm == os.pardir or norm.startswith(os.pardir + os.sep)):
        raise RecordError(f"image path {ref!r} leaves the image root ({_shown_roots(roots)}); expected a path "
                          "inside it")
    tried = image_candidates(norm, roots)
    if absolute and not allow_absolute and not _inside(Path(norm), roots):
        tried = tried[1:]  # only the tails, each inside a root
        if not any(p.is_file() for p in tried) and Path(norm).is_file():
            raise RecordError(f"image path {ref!r} is absolute and outside the image root(s) "
                              f"({_shown_roots(roots)}); move the images under the root, or allow absolute "
                              "paths (allow_absolute_images=True, `mini-o3 data prepare "
                              "--allow-absolute-image-paths`)")
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        shown = ", ".join(str(p) for p in tried[:3]) + (f" (+{len(tried) - 3} more)" if len(tried) > 3 else "")
        raise RecordError(f"image file {ref!r} not found; tried {shown or 'nothing'}")
    return found


def read_checked_image(path: Path) -> bytes:
    """The file's bytes exactly as stored, after checking they decode; RecordError names the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecordError(f"image file {path}: cannot be read: {e}") from None
    try:
        check_image_bytes(data)
    except RecordError as e:
        raise RecordError(f"image file {path}: {e}") from None
    return data


def check_image_header(path: Path) -> None:
    """A cheap look (header only) that a file is an image, for readers that decode it later (SFT reads
    thousands); RecordError names the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                pass
    except Image.DecompressionBombError:
        return
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise RecordError(f"image file {path}: not an image ({type(e).__name__}: {str(e)[:120]})") from None


def read_image_file(ref: str, roots: Sequence[Path], allow_absolute: bool = False) -> bytes:
    """The bytes of the image `ref` names inside `roots` (`resolve_image`), checked to decode."""
    return read_checked_image(resolve_image(ref, roots, allow_absolute))


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


def cell_image(value: Any, key: str, roots: Sequence[Path] = (), allow_absolute: bool = False) -> bytes:
    """Encoded image bytes from a table cell: raw bytes, a base64 string (lmms-eval / VLMEvalKit
    tables), or an HF image struct {"bytes": ..., "path": ...} (a path is looked up inside `roots`).
    Checked to decode."""
    if isinstance(value, Mapping):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            if not isinstance(value["path"], str):
                raise RecordError(f"field {key!r} is an image struct whose path is {value['path']!r:.60}")
            return read_image_file(value["path"], roots, allow_absolute)
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


Row = tuple[int, Any]  # (row index in the file, the parsed row or the RecordError to report for it)

# Tokens for stepping over a malformed JSON list item and for the depth check before a Python-literal
# parse, neither of which may parse: a (possibly unterminated) string, a bracket, a comma, or a run of
# anything else. Possessive quantifiers keep the scan linear.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{},]|[^"\[\]{},]++', re.DOTALL)
_LITERAL_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"?|\'(?:[^\'\\]++|\\.)*+\'?|[\[\]{}()]|[^"\'\[\]{}()]++',
                            re.DOTALL)


def check_nesting(text: str, what: str) -> None:
    """Refuse a Python literal nested deeper than MAX_NESTING before `ast` recurses into it (strings
    skipped)."""
    depth = 0
    for m in _LITERAL_TOKEN.finditer(text):
        c = m.group()[0]
        if c in "[{(":
            depth += 1
            if depth > MAX_NESTING:
                raise RecordError(f"{what} is nested more than {MAX_NESTING} levels deep; refused unparsed (a record "
                                  "needs a few levels)")
        elif c in "]})":
            depth -= 1


def _check_size(size: int, what: str, unit: str = "characters") -> None:
    if size > MAX_ROW_BYTES:
        raise RecordError(f"{what} is {size} {unit} long, over the limit of {MAX_ROW_BYTES} for one row")


def _json_error(e: Exception, what: str) -> RecordError:
    if isinstance(e, RecursionError):  # json's C decoder stops at the interpreter's recursion limit
        return RecordError(f"{what} is nested too deeply to parse (RecursionError)")
    return RecordError(f"{what} is not JSON: {e}")


def parse_json_row(text: str, what: str) -> Any:
    """One row's JSON text, bounded in size first; every failure is a RecordError naming `what`."""
    _check_size(len(text), what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise _json_error(e, what) from None


def _bounded_lines(f: Any, limit: int) -> Iterator[bytes | int]:
    """Lines of a binary file, or the byte count of a line over `limit` (skipped without holding it)."""
    while line := f.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while line and not line.endswith(b"\n"):
            line = f.readline(2**20)
            size += len(line)
        yield size


def _jsonl_line(raw: bytes | int, i: int) -> Any:
    """One JSONL line parsed, or a RecordError for it: over-size, not UTF-8, not JSON (or cut short)."""
    what = f"line {i + 1}"
    if isinstance(raw, int):
        _check_size(raw, what, "bytes")  # `_bounded_lines` gives a count only for a line over the limit
    assert isinstance(raw, bytes)
    try:
        text = raw.decode("utf-8-sig" if i == 0 else "utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{what} is not UTF-8 text: {e}") from None
    try:
        return parse_json_row(text, what)
    except RecordError as e:
        if raw.endswith(b"\n"):
            raise
        raise RecordError(f"{e} (the file ends inside this line: truncated?)") from None


def _jsonl_rows(path: Path) -> Iterator[Row]:
    try:
        f = path.open("rb")
    except OSError as e:
        raise RecordError(f"{path}: cannot be read: {e}") from None
    with f:
        for i, raw in enumerate(_bounded_lines(f, MAX_ROW_BYTES)):
            if isinstance(raw, int) or raw.strip():
                try:
                    yield i, _jsonl_line(raw, i)
                except RecordError as e:
                    yield i, e


def _whole_json(text: str, path: Path) -> RecordError:
    """The file-level error for JSON that is not a list of records, as json reports it."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        return RecordError(f"{path}: not a JSON file ({e})")
    return RecordError(f"{path}: expected a JSON list of records, got {type(value).__name__}")


def _check_utf8(text: str, what: str) -> None:
    """Text decoded with "surrogateescape" holds U+DC80..U+DCFF exactly where the bytes were not UTF-8."""
    bad = re.search("[\udc80-\udcff]", text)
    if bad:
        raise RecordError(f"{what} is not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x} at character "
                          f"{bad.start()})")


def _item_end(text: str, pos: int) -> int:
    """Where the list item starting at `pos` ends (its top-level ',' or ']', or the end of the text),
    found by bracket depth with strings skipped: how a malformed item is stepped over."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text, pos):
        c = m.group()[0]
        if c in "[{":
            depth += 1
        elif c in ",]" and not depth:
            return m.start()
        elif c in "]}":
            depth -= 1
    return len(text)


_SPACE = re.compile(r"\s*")


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # \s* always matches


class _ListReader:
    """The items of a JSON list file, each parsed on its own by json's C decoder, so one malformed,
    over-size, too deep or non-UTF-8 item is reported alone and the ones after it are still read."""

    def __init__(self, text: str, start: int, clean_utf8: bool) -> None:
        self.text, self.pos, self.clean = text, start + 1, clean_utf8
        self.decoder = json.JSONDecoder()
        self._counted, self._lines = 0, 1

    def line(self, pos: int) -> int:
        """1-based line of `pos`, counted on from the last call (positions only move forward)."""
        self._lines += self.text.count("\n", self._counted, pos)
        self._counted = pos
        return self._lines

    def item(self, i: int) -> Any:
        """Parse item `i` at `self.pos` and move past it; a RecordError says why it is unusable."""
        text, pos = self.text, self.pos
        what = f"list item {i} (line {self.line(pos)})"
        try:
            value, end = self.decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as e:
            self.pos = _item_end(text, pos)
            if self.pos == len(text):
                raise RecordError(f"{what}: the file ends inside it (truncated?)") from None
            raise _json_error(e, what) from None
        self.pos = end
        _check_size(end - pos, what)
        if not self.clean:
            _check_utf8(text[pos:end], what)
        return value

    def rows(self) -> Iterator[Row]:
        text, i = self.text, 0
        self.pos = _skip_space(text, self.pos)
        while not text.startswith("]", self.pos):
            try:
                yield i, self.item(i)
            except RecordError as e:
                yield i, e
                if self.pos >= len(text):
                    return
            i += 1
            self.pos = _skip_space(text, self.pos)
            if self.pos >= len(text):
                yield i, RecordError(f"the file ends after list item {i - 1}, before the list is closed (truncated?)")
                return
            if text[self.pos] not in ",]":  # a missing comma: step over what follows as one bad item
                what = f"list item {i} (line {self.line(self.pos)})"
                found = text[self.pos:self.pos + 20]
                self.pos = _item_end(text, self.pos)
                yield i, RecordError(f"{what}: expected ',' or ']' after item {i - 1}, found {found!r}")
                i += 1
                if self.pos >= len(text):
                    return
            if text[self.pos] == ",":
                self.pos = _skip_space(text, self.pos + 1)
        rest = text[self.pos + 1:].strip()
        if rest:
            yield i, RecordError(f"data after the end of the list: {rest[:40]!r}")


def _json_list_rows(path: Path) -> Iterator[Row]:
    """Rows of a JSON list file (`_ListReader`). A file that is not a JSON list at all raises
    RecordError naming it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecordError(f"{path}: cannot be read: {e}") from None
    try:
        text, clean = data.decode("utf-8"), True
    except UnicodeDecodeError:  # keep the bad bytes as U+DC80..U+DCFF: only their item is refused
        text, clean = data.decode("utf-8", "surrogateescape"), False
    text = text.removeprefix("\ufeff")
    start = _skip_space(text, 0)
    if not text.startswith("[", start):
        raise _whole_json(text, path)
    yield from _ListReader(text, start, clean).rows()


def json_rows(path: Path) -> Iterator[Row]:
    """(index, row) of a JSON list or a JSONL file; a row that cannot be read (not UTF-8, over-size,
    too deep, not JSON, cut short) comes back as the RecordError to report for it."""
    return _jsonl_rows(path) if path.suffix == ".jsonl" else _json_list_rows(path)


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


def tsv_rows(path: Path, required: Sequence[str]) -> Iterator[Row]:
    """(index, row) of a VLMEvalKit-style TSV (pandas `to_csv(sep="\\t")`), streamed; cells hold base64
    images far above csv's default field limit. A row with bytes that are not UTF-8, or that csv cannot
    split, comes back as the RecordError to report for it."""
    csv.field_size_limit(2**31 - 1)
    try:
        f = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as e:
        raise RecordError(f"{path}: cannot be read: {e}") from None
    with f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise RecordError(f"{path}: missing column(s) {missing}; the header has {reader.fieldnames}")
        i = 0
        while True:
            try:
                row: Any = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row = RecordError(f"row {i + 1} cannot be split into cells: {e}")
            if isinstance(row, dict):
                try:
                    _check_utf8("\t".join(str(v) for v in row.values()), f"row {i + 1}")
                except RecordError as e:
                    row = e
            yield i, row
            i += 1


# Errors a malformed row can raise inside a converter besides RecordError (a value of an unexpected
# type deep in a cell, a cell too deep to print): still that row's problem, never the run's.
ROW_ERRORS = (RecordError, TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError,
              OverflowError, UnicodeError)


def _rows_to_records(path: Path, rows: Iterable[Row], id_key: str,
                     convert: Callable[[Mapping[str, Any]], Record | ConversationRecord]) -> Iterator[Parsed]:
    """Convert rows one by one; a row's error becomes a BadRecord naming file, row and doc_id."""
    for i, row in rows:
        doc_id = ""
        try:
            if isinstance(row, Mapping) and not _missing(row.get(id_key)):
                doc_id = _scalar_text(row[id_key])[:200]
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, Mapping):
                raise RecordError(f"expected an object with fields, got {type(row).__name__}")
            yield convert(row)
        except RecordError as e:
            yield BadRecord(str(path), i, doc_id, str(e))
        except ROW_ERRORS as e:
            yield BadRecord(str(path), i, doc_id, f"cannot be read: {type(e).__name__}: {str(e)[:200]}")


# --------------------------------------------------------------------------------------------------
# Mini-o3 JSON: VisualProbe, DeepEyes_train_4K, Mini-o3's V* val.json, synthetic sets
# --------------------------------------------------------------------------------------------------


def json_image_roots(path: Path, ctx: ParseContext | None = None) -> list[Path]:
    """$BASE_IMAGE_DIR candidates: an explicit image_root, else the JSON's folder, then its parent
    (never the filesystem root, which would let any relative path be read)."""
    if ctx is not None and ctx.image_root is not None:
        return [ctx.image_root]
    folder = Path(os.path.abspath(path.parent))
    return [folder] if folder.parent == folder.parent.parent else [folder, folder.parent]


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
        image = read_image_file(images[0], roots, ctx.allow_absolute_images)
        return Record(ctx.benchmark, doc_id, image, problem, solution, data_source, options,
                      _category(row, "category", ctx))

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
        return Record(ctx.benchmark, doc_id, image, with_image(text), solution, ctx.data_source, options,
                      _category(row, "category", ctx))

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
        return Record(ctx.benchmark, doc_id, image, vstar_problem(question, options), "A", ctx.data_source,
                      tuple(options), category)

    try:
        _check_size(path.stat().st_size, "annotation", "bytes")
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
        image = cell_image(row.get("image"), "image", roots, ctx.allow_absolute_images)
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
        image = read_image_file(_field(row, "Image", str), roots, ctx.allow_absolute_images)
        parts = [_scalar_text(row[k]) for k in ("Task", "Subtask") if not _missing(row.get(k))]
        return Record(ctx.benchmark, doc_id, image, mme_problem(question, options), solution, ctx.data_source,
                      tuple(options), "/".join(parts) or ctx.category)

    yield from _rows_to_records(path, json_rows(path), "Question_id", convert)


# --------------------------------------------------------------------------------------------------
# Mini-o3 cold-start SFT set: HF parquet shards, or the LLaMA-Factory JSON made from them
# --------------------------------------------------------------------------------------------------


def _conversation_value(text: str) -> Any:
    """A conversations string parsed as JSON, else as the Python literal Mini-o3 stored (`repr` of the
    list), only after bounding its size and depth: `ast.literal_eval`, never `eval`."""
    what = "field 'conversations'"
    _check_size(len(text), what)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError as e:
        raise _json_error(e, what) from None
    check_nesting(text, what)  # ast recurses in Python: refuse deep text unparsed
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise RecordError(f"{what} is a string that is neither JSON nor a Python list literal: "
                          f"{type(e).__name__}: {str(e)[:120]}") from None


def check_turn_order(turns: Sequence[Mapping[str, str]]) -> None:
    """LLaMA-Factory's sharegpt rule: an optional system turn, then human and gpt turns alternating,
    from human to gpt."""
    roles = [SHAREGPT_ROLES[t["from"]] for t in turns]
    if roles and roles[0] == "system":
        roles = roles[1:]
    if not roles or roles[0] != "user" or roles[-1] != "assistant":
        raise RecordError(f"conversations roles are {roles}; expected human/gpt turns starting with human and "
                          "ending with gpt")
    for i, role in enumerate(roles):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise RecordError(f"conversations turn {i} is {role!r}; expected human and gpt turns to alternate")


def parse_conversations(value: Any) -> list[dict[str, str]]:
    """sharegpt turns from a list or from its string form (JSON, or the Python repr Mini-o3 stored),
    checked turn by turn and for turn order. The one parser behind `data prepare` and SFT."""
    if isinstance(value, str):
        value = _conversation_value(value)
    if not isinstance(value, list) or not value:
        raise RecordError(f"field 'conversations' must be a non-empty list of turns, got {type(value).__name__} "
                          f"{_short(value)}")
    turns = []
    for k, turn in enumerate(value):
        if not isinstance(turn, Mapping) or turn.get("from") not in COLDSTART_ROLES or not isinstance(
                turn.get("value"), str):
            raise RecordError(f"conversations turn {k} is {_short(turn)}; expected {{'from': one of "
                              f"{list(COLDSTART_ROLES)}, 'value': text}}")
        turns.append({"from": turn["from"], "value": turn["value"]})
    check_turn_order(turns)
    return turns


def _short(value: Any) -> str:
    """A bounded repr for error messages (a cell may be huge or deeply nested)."""
    try:
        return f"{reprlib.repr(value):.80}"
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def check_image_count(turns: Sequence[Mapping[str, str]], n_images: int) -> None:
    """One image per `<image>` placeholder in the human turns, so no image is trained without its tokens."""
    placeholders = sum(t["value"].count(IMAGE) for t in turns if t["from"] in ("human", "user"))
    if placeholders != n_images:
        raise RecordError(f"{placeholders} {IMAGE} placeholder(s) in the human turns but {n_images} image(s); "
                          "expected one image per placeholder")


def _conversation_record(doc_id: str, turns: list[dict[str, str]], images: list[bytes],
                         data_source: str) -> ConversationRecord:
    check_image_count(turns, len(images))
    return ConversationRecord(doc_id, turns, tuple(images), data_source)


def parse_coldstart_parquet(path: Path, ctx: ParseContext) -> Iterator[Parsed]:
    """A `data/train-*.parquet` shard of Mini-o3/Mini-o3-Coldstart-Dataset: conversations (string),
    images (HF image structs), image_names, data_source, sample_index, rollout_index."""
    rows = parquet_rows(path, ("conversations", "images"),
                        optional=["data_source", "sample_index", "rollout_index"], batch_size=4)

    def convert(row: Mapping[str, Any]) -> ConversationRecord:
        turns = parse_conversations(row.get("conversations"))
        raw = _field(row, "images", list)
        images = [cell_image(img, f"images[{k}]", [path.parent], ctx.allow_absolute_images)
                  for k, img in enumerate(raw)]
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
        images = [read_image_file(ref, roots, ctx.allow_absolute_images) for ref in refs]
        data_source = row.get("data_source") or ctx.data_source
        return _conversation_record(str(row["_doc_id"]), turns, images, str(data_source))

    def with_ids() -> Iterator[tuple[int, Any]]:
        for i, row in json_rows(path):
            if isinstance(row, dict):
                given = row.get("id")
                row = {**row, "_doc_id": _scalar_text(given) if isinstance(given, (str, int, float)) and not
                       _missing(given) else str(i)}
            yield i, row

    yield from _rows_to_records(path, with_ids(), "_doc_id", convert)
