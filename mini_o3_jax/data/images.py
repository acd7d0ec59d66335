"""Images named or embedded by data rows: found inside the image root only, and checked to decode.

A row's image is a file path (resolved by one rule for every reader, so no row can make a reader open a
file outside the image root), an embedded cell (raw bytes, base64 text or an HF image struct), or the
file beside an annotation. Bytes are kept exactly as published; they are only checked.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mini_o3_jax.data.records import RecordError
from mini_o3_jax.data.rows import is_missing


def check_image_bytes(data: bytes) -> None:
    """Raise RecordError unless `data` is an image PIL can identify (header + structure, no full decode).

    Images above PIL's decompression-bomb limit count as readable: the bytes are kept exactly as
    published and the size rule is applied where the image is loaded (`processing.image.load_image`).
    """
    if not data:
        raise RecordError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
    except Image.DecompressionBombError:
        return
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError, ...)
        detail = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", str(e))  # PIL names the BytesIO by address
        raise RecordError(f"image bytes ({len(data)} bytes, starting {data[:8]!r}) do not decode as an image: "
                          f"{type(e).__name__}: {detail}") from None


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
    elif is_missing(value):
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


def checked_path(ref: str, roots: Sequence[Path], allow_absolute: bool = False) -> str:
    """The image file `ref` names inside `roots` (`resolve_image`), header-checked and kept as a path:
    what a run reading its own file keeps, loading each image when it uses it."""
    path = resolve_image(ref, roots, allow_absolute)
    check_image_header(path)
    return str(path)
