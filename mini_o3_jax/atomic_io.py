"""Writes that a kill cannot leave half done: a reader sees the old file/directory or the new one, never a mix.

Files go to a temporary sibling, are flushed and fsynced, then `os.replace`d over the target (atomic on POSIX
within one filesystem). Directories are written whole under a temporary sibling and swapped in by rename; the
old directory is moved aside first and deleted only after the new one is in place.

On an object store (``gs://``, ``s3://``: `storage.is_uri`) an object write is already all-or-nothing; the same
calls write it directly and "rename" a directory the way the store can (copy, then delete), old copy aside first.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_o3_jax import storage


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **kw: Any) -> None:
    """Replace `path` with `json.dumps(obj, **kw)` atomically (indent=2 unless given)."""
    kw.setdefault("indent", 2)
    write_text(path, json.dumps(obj, **kw) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, fresh: int) -> int:
    """The mode `path` would have if created normally: its current mode when it exists, else `fresh` & ~umask.

    mkstemp/mkdtemp create 0600/0700 entries; without this, every atomically written file or checkpoint
    directory became private to its writer (unreadable to a shared serving or eval account)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return fresh & ~_umask()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    if storage.is_uri(path):
        storage.path(path).write_bytes(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), _default_mode(path, 0o666))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on normal exit it becomes `path`.

    If the body raises (or the process dies), `path` keeps its old contents and the temporary directory is
    removed (or, after a kill, left as `.<name>.tmp-*` beside it, never mistaken for the checkpoint). The swap is
    two renames; a kill between them (microseconds) leaves the old copy whole as `.<name>.old-*`."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_into(tmp, path)


def temporary_sibling(path: str | os.PathLike, name: str | None = None) -> os.PathLike:
    """A new empty directory beside `path` (`.<name>.tmp-*`, or `name` when given: a multi-host save whose
    hosts must all write into the one directory process 0 named), with the permissions `path` would get."""
    if storage.is_uri(path):
        target = storage.path(path)
        tmp = target.parent / (name or f".{target.name}.tmp-{secrets.token_hex(8)}")
        tmp.mkdir(parents=True)  # a no-op on most stores: a "directory" is the prefix its objects share
        return tmp
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if name is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    else:
        tmp = path.parent / name
        tmp.mkdir()
    os.chmod(tmp, _default_mode(path, 0o777) if path.is_dir() else 0o777 & ~_umask())
    return tmp


def swap_into(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the finished directory `tmp` be `path` (two renames; the old `path` is removed after)."""
    if storage.is_uri(path):
        target = storage.path(path)
        old = target.parent / f".{target.name}.old-{secrets.token_hex(8)}"
        if target.exists():
            target.rename(old)
        storage.path(tmp).rename(target)
        if old.exists():
            old.rmtree()
        return
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
