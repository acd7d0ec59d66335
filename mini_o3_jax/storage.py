"""Run directories on a local or shared disk or on an object store (``gs://``, ``s3://``).

Pod workers rarely share a POSIX disk; they share a bucket. Checkpoints (Orbax, through tensorstore) and the
small files beside them (through etils ``epath``, backed by fsspec: ``gcsfs``/``s3fs``) are written to either
kind of path. This module is the one place that tells them apart: local paths are made absolute (and ``~``
expanded), URIs are kept as they are.
"""

from __future__ import annotations

import importlib.util
import os

from etils import epath

from mini_o3_jax.errors import ConfigError

#: scheme -> the fsspec package that serves it
BACKENDS = {"gs": "gcsfs", "s3": "s3fs"}


def is_uri(path: str | os.PathLike) -> bool:
    """Whether `path` names an object-store location (``gs://bucket/...``, ``s3://...``)."""
    scheme, sep, _ = os.fspath(path).partition("://")
    return bool(sep) and scheme in BACKENDS


def resolve(path: str | os.PathLike) -> str:
    """The path a run uses: a URI as given (no trailing slash), a local path absolute with ``~`` expanded."""
    text = os.fspath(path)
    if is_uri(text):
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(text))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`os.path.join` that keeps a URI's ``scheme://`` intact."""
    base = os.fspath(base)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def path(p: str | os.PathLike) -> epath.Path:
    """An ``epath.Path`` for a local path or a URI (the file API both kinds share)."""
    return epath.Path(resolve(p))


def files(directory: str | os.PathLike) -> list[epath.Path]:
    """Every file below `directory`, recursively, sorted (``epath.Path.walk`` drops a URI's scheme from the
    directories it yields, so it cannot be used on a bucket)."""
    found, todo = [], [path(directory)]
    while todo:
        for entry in todo.pop().iterdir():
            (todo if entry.is_dir() else found).append(entry)
    return sorted(found, key=os.fspath)


def require_backend(p: str | os.PathLike, what: str) -> str:
    """`resolve(p)`, after checking that the package serving its scheme is installed (one clear error instead of
    an ImportError from inside fsspec at the first write)."""
    text = resolve(p)
    if is_uri(text):
        scheme = text.split("://", 1)[0]
        package = BACKENDS[scheme]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"{what} = {text}: {scheme}:// paths need the `{package}` package "
                              f"(pip install {package}, or mini_o3_jax[cloud])")
    return text
