"""Rows of a source file, read with bounds so one hostile or corrupt row costs a bad-row report, not the run.

JSON lists, JSON Lines, parquet and TSV files are read row by row: a row that cannot be read (bytes that
are not UTF-8, over-size, too deeply nested, cut short) comes back as the `RecordError` to report for it,
and the rows after it are still read. A file that cannot be read at all raises `RecordError` naming it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mini_o3_jax.data.records import RecordError

# Bounds applied before any row text is parsed: a published row (a JSON line, a cold-start conversations
# string) is well under 1 MiB, and a sharegpt conversation is 3 brackets deep.
MAX_ROW_BYTES = 16 * 2**20
MAX_NESTING = 32


def is_missing(value: Any) -> bool:
    """None, NaN (an empty parquet/TSV cell) or blank text."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


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


def check_size(size: int, what: str, unit: str = "characters") -> None:
    if size > MAX_ROW_BYTES:
        raise RecordError(f"{what} is {size} {unit} long, over the limit of {MAX_ROW_BYTES} for one row")


def json_error(e: Exception, what: str) -> RecordError:
    if isinstance(e, RecursionError):  # json's C decoder stops at the interpreter's recursion limit
        return RecordError(f"{what} is nested too deeply to parse (RecursionError)")
    return RecordError(f"{what} is not JSON: {e}")


def parse_json_row(text: str, what: str) -> Any:
    """One row's JSON text, bounded in size first; every failure is a RecordError naming `what`."""
    check_size(len(text), what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise json_error(e, what) from None


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
        check_size(raw, what, "bytes")  # `_bounded_lines` gives a count only for a line over the limit
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
            raise json_error(e, what) from None
        self.pos = end
        check_size(end - pos, what)
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

