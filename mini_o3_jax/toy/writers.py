"""Toy puzzles and expert trajectories written as files in Mini-o3's released formats.

    write_benchmark("data", "hard", 100, seed=0, config=SceneConfig.tiny())
    write_coldstart("data/coldstart", 500, seed=0, config=SceneConfig.tiny())
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.toy.expert import expert_trajectory
from mini_o3_jax.toy.puzzles import Puzzle, iter_puzzles, make_puzzle
from mini_o3_jax.toy.rng import derive
from mini_o3_jax.toy.scene import LEVELS, PRESETS, SceneConfig

__all__ = ["SAMPLE_PUZZLE", "write_all", "write_benchmark", "write_coldstart", "write_sample_puzzle"]
# The puzzle packaged as mini_o3_jax/assets/sample_puzzle.{png,json}, which `mini-o3 infer` runs the packaged
# toy model on when given no --image (tests/test_sample_puzzle.py checks the two still agree).
SAMPLE_PUZZLE: Mapping[str, Any] = {"preset": "toy", "level": "easy", "seed": 0}


@contextlib.contextmanager
def _json_list(path: str) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Yields `add(record)`: a JSON list written one record at a time, byte for byte what
    `json.dump(records, f, indent=1)` writes, so a split of any size is written with one record in memory.

    Why a temporary name: the file appears (by `os.replace`) only when complete, so an interrupted run
    never leaves a truncated list for `read_prompts` / `read_sharegpt`, nor a stale one that looks new.
    """
    partial, count = f"{path}.partial", 0
    with open(partial, "w", encoding="utf-8") as f:

        def add(record: Mapping[str, Any]) -> None:
            nonlocal count
            # json.dump nests each item one indent level deeper: the item's own lines, shifted by one space
            # (no raw newline can occur inside a JSON string, so every "\n" is a line break).
            f.write(("[\n " if count == 0 else ",\n ") + json.dumps(record, indent=1).replace("\n", "\n "))
            count += 1

        try:
            yield add
        except BaseException:
            f.close()
            os.remove(partial)
            raise
        f.write("\n]" if count else "[]")
    os.replace(partial, path)


def _progress(total: int | None, desc: str, show: bool) -> Any:
    """A tqdm bar on stderr (a no-op one unless `show`)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="puzzle", disable=not show, dynamic_ncols=True)


def write_benchmark(out_dir: str | os.PathLike, level_or_split: str, n: int, seed: int = 0,
                    config: SceneConfig | None = None, progress: bool = False) -> str:
    """Write `n` puzzles as Mini-o3's RL/val JSON (`read_prompts` reads it) plus PNG images.

    `level_or_split`: "easy" / "medium" / "hard" -> `out_dir/synthetic_<level>/val.json`
    (data_source `synthetic_<level>`); "train" -> `out_dir/synthetic_train/train.json`, levels in
    turn (data_source `synthetic_train`). Image paths are relative to the JSON's folder. Puzzles are
    made, written and released one at a time (memory does not grow with `n`); `progress` shows a bar.
    Returns the JSON path.
    """
    if level_or_split not in (*LEVELS, "train"):
        raise ConfigError(f"level_or_split = {level_or_split!r}; expected one of {(*LEVELS, 'train')}")
    config = config or SceneConfig()
    name = f"synthetic_{level_or_split}"
    root = os.path.join(os.fspath(out_dir), name)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    path = os.path.join(root, "train.json" if level_or_split == "train" else "val.json")
    with _json_list(path) as add, _progress(n, name, progress) as bar:
        for p in iter_puzzles(level_or_split, n, seed, config):
            rel = f"images/{p.doc_id}.png"
            p.image.save(os.path.join(root, rel))
            add({"images": [rel], "doc_id": p.doc_id, "problem": p.problem, "solution": p.answer,
                 "data_source": name})
            bar.update()
    return path


def write_coldstart(out_dir: str | os.PathLike, puzzles_or_n: Iterable[Puzzle] | int, seed: int = 0,
                    config: SceneConfig | None = None, weights: Mapping[str, float] | None = None,
                    progress: bool = False) -> str:
    """Write expert trajectories as `out_dir/Mini-o3-Coldstart.json` (LLaMA-Factory sharegpt:
    `conversations` as a JSON string, relative image paths) with PNGs under
    `out_dir/images/minio3_coldstart_<i>/`. An int draws that many puzzles, levels in turn, made and
    released one at a time; `progress` shows a bar."""
    config = config or SceneConfig()
    if isinstance(puzzles_or_n, int):
        total: int | None = puzzles_or_n
        puzzles: Iterable[Puzzle] = iter_puzzles("coldstart", puzzles_or_n, seed, config)
    else:
        puzzles = puzzles_or_n
        total = len(puzzles_or_n) if isinstance(puzzles_or_n, Sequence) else None
    root = os.fspath(out_dir)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "Mini-o3-Coldstart.json")
    with _json_list(path) as add, _progress(total, "coldstart", progress) as bar:
        for i, p in enumerate(puzzles):
            traj = expert_trajectory(p, seed=derive("coldstart-expert", seed, i), weights=weights)
            folder = f"images/minio3_coldstart_{i}"
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            paths = []
            for k, im in enumerate(traj.images):
                rel = f"{folder}/{'original_image' if k == 0 else f'observation_{k}'}.png"
                im.save(os.path.join(root, rel))
                paths.append(rel)
            add({"conversations": json.dumps(traj.conversations), "images": paths})
            bar.update()
    return path


def write_all(out_dir: str | os.PathLike, n: int = 100, seed: int = 0, preset: str = "default",
              progress: bool = False) -> list[str]:
    """Everything `mini-o3 data synthetic` writes: `n` test questions per level, a training split of
    `3 n` (levels in turn) and `n` cold-start trajectories, all from one preset, streamed to disk one
    puzzle at a time (`progress`: a bar per level and split). Returns the paths."""
    if preset not in PRESETS:
        raise ConfigError(f"preset = {preset!r}; expected one of {sorted(PRESETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n = {n!r}; expected a whole number of questions per level, at least 1")
    config = PRESETS[preset]()
    paths = [write_benchmark(out_dir, level, n, seed, config, progress=progress) for level in config.levels]
    paths.append(write_benchmark(out_dir, "train", 3 * n, seed, config, progress=progress))
    paths.append(write_coldstart(os.path.join(os.fspath(out_dir), "coldstart"), n, seed, config, progress=progress))
    return paths


def write_sample_puzzle(out_dir: str | os.PathLike, preset: str = SAMPLE_PUZZLE["preset"],
                        level: str = SAMPLE_PUZZLE["level"], seed: int = SAMPLE_PUZZLE["seed"]) -> tuple[str, str]:
    """One puzzle as `sample_puzzle.png` and `sample_puzzle.json` (question, answer and how it was made).

    Why a file: `infer` ships the sample as a packaged asset instead of importing the toy generator, so
    the production path does not depend on the toy world. Returns the (PNG, JSON) paths.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset = {preset!r}; expected one of {sorted(PRESETS)}")
    p = make_puzzle(seed, level, PRESETS[preset]())
    root = os.fspath(out_dir)
    os.makedirs(root, exist_ok=True)
    png, meta = os.path.join(root, "sample_puzzle.png"), os.path.join(root, "sample_puzzle.json")
    p.image.save(png)
    with open(meta, "w", encoding="utf-8") as f:
        json.dump({"preset": preset, "level": level, "seed": seed, "question": p.question, "answer": p.answer},
                  f, indent=1)
        f.write("\n")
    return png, meta
