"""Minimal safetensors reading (mmap, lazy, bf16-aware) and streaming writing.

The `safetensors` numpy backend cannot represent bfloat16, and its flax backend materialises whole
tensors on the default device. Reading the format directly (8-byte header length, JSON header,
raw little-endian data) gives zero-copy memory-mapped views: a sharded load touches only the
pages of its own slice, and no second copy of the checkpoint ever sits in host RAM.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from mini_o3_jax.errors import CheckpointError

DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
    """One .safetensors file: header parsed eagerly, tensors returned as read-only mmap views."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
                (n,) = struct.unpack("<Q", raw)
                if n > size - 8:
                    raise CheckpointError(f"{path}: truncated safetensors file (header of {n} bytes, file {size})")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: safetensors file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (bad header: {e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.header: dict[str, dict[str, Any]] = header
        for key, h in header.items():
            try:
                dtype, shape, (start, end) = h["dtype"], tuple(int(d) for d in h["shape"]), h["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {key}: malformed header entry {h!r}") from None
            if dtype not in DTYPES:
                raise CheckpointError(f"{path}: tensor {key}: unsupported dtype {dtype!r} (expected one of {sorted(DTYPES)})")
            want = int(np.prod(shape)) * DTYPES[dtype].itemsize
            if not 0 <= start <= end or end - start != want:
                raise CheckpointError(
                    f"{path}: tensor {key}: data_offsets {[start, end]} hold {end - start} bytes, but {dtype} "
                    f"{list(shape)} needs {want}"
                )
        self._data_start = 8 + n
        data_len = max((int(h["data_offsets"][1]) for h in header.values()), default=0)
        if self._data_start + data_len > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensors need {self._data_start + data_len} bytes, "
                f"file has {size} (re-download or re-export the checkpoint)"
            )
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros((0,), np.uint8)

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        name = self.header[key]["dtype"]
        if name not in DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key} has unsupported dtype {name}")
        return DTYPES[name]

    def get(self, key: str) -> np.ndarray:
        h = self.header[key]
        start, end = (int(x) for x in h["data_offsets"])
        buf = self._mmap[self._data_start + start:self._data_start + end]
        return buf.view(self.dtype(key)).reshape(self.shape(key))


class SafetensorsDir:
    """All tensors of a HF checkpoint directory (single file or sharded with an index)."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map: dict[str, str] = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: expected JSON with a 'weight_map' object ({e})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
            if missing:
                raise CheckpointError(f"{path}: shard files named in model.safetensors.index.json are missing: {missing}")
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
            if not files:
                raise CheckpointError(f"{path}: no *.safetensors files and no model.safetensors.index.json")
        self.files = {f: SafetensorsFile(os.path.join(path, f)) for f in files}
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files.values():
            for k in f.keys():
                self.where[k] = f

    def keys(self) -> list[str]:
        return list(self.where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.where[key].shape(key)

    def get(self, key: str) -> np.ndarray:
        return self.where[key].get(key)


def write_safetensors(
    path: str,
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    produce: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors to one safetensors file, asking `produce(name)` for one tensor at a time.

    The header is written from `specs` first, so only a single tensor is ever held in memory.
    The file appears atomically (written to a temporary name, then renamed).
    """
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        n = np.dtype(dtype).itemsize * int(np.prod(shape))
        header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as the reference writer does
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype in specs:
                arr = np.ascontiguousarray(produce(name), dtype=dtype)
                if arr.shape != tuple(shape):
                    raise ValueError(f"{name}: produced shape {arr.shape}, header says {tuple(shape)}")
                f.write(arr.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def iter_shards(sizes: Iterator[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Group tensor names into shards of at most `max_bytes` (a tensor never spans shards)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, n in sizes:
        if shards[-1] and used + n > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    return shards
