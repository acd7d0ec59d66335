"""`mini-o3 sft`: cold-start SFT (spec §3): loss on assistant tokens, vision tower and merger frozen.

The data order is a seeded permutation per epoch, so the position (epoch, offset) saved with each
checkpoint resumes the exact sequence of batches. Each step's micro-batches are built on a worker
thread while the previous step runs on the device.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.config_files import from_block
from mini_o3_jax.data.direct import read_sharegpt
from mini_o3_jax.data.records import BadRecord, describe_bad
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.parallel.hosts import agree_max, agree_sum
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import MINI_O3_MAX_PIXELS, MINI_O3_MIN_PIXELS, ImageProcessor
from mini_o3_jax.processing.inputs import PAD_ID
from mini_o3_jax.sft.data import sharegpt_trajectories
from mini_o3_jax.train.batch import (
    Example,
    TrainBatch,
    examples_from_trajectories,
    micro_batches,
    token_weights,
)
from mini_o3_jax.train.checkpoint import PreemptionGuard
from mini_o3_jax.train.metrics import StepTimer, tokens_per_second
from mini_o3_jax.train.session import open_session
from mini_o3_jax.train.settings import train_settings


@dataclasses.dataclass(frozen=True)
class SFTData:
    """The `data` block of an SFT config: a sharegpt file (`path`) or its prepared TFDS copy (`tfds_dir`),
    or, with neither, trajectories generated from a `toy.scene.PRESETS` scene (`synthetic`, the toy world's
    settings: `mini_o3_jax.toy.sources.sft_examples`)."""

    path: str = ""  # Mini-o3-Coldstart.json; with tfds_dir, the downloaded folder to prepare from
    image_root: str = ""  # "": the JSON file's folder, then its parent
    allow_absolute_images: bool = False  # True: also read absolute image paths outside image_root
    tfds_dir: str = ""
    min_pixels: int = MINI_O3_MIN_PIXELS
    max_pixels: int = MINI_O3_MAX_PIXELS
    synthetic: str = ""  # a toy scene preset; "": read path / tfds_dir
    synthetic_levels: tuple[str, ...] = ()  # the levels in turn; empty: all of the scene's
    # the expert's reasoning patterns and their weights (toy.expert.PATTERNS); empty: its default mix
    synthetic_patterns: Mapping[str, float] = dataclasses.field(default_factory=dict)
    system_prompt: bool = True  # keep the expert's system turn in generated trajectories


def sft_data(cfg: ml_collections.ConfigDict) -> SFTData:
    """`cfg.data` typed: an unknown key is a ConfigError naming data.<key>."""
    return from_block(SFTData, cfg.data, "data")


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def step_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based): consecutive slices of per-epoch permutations."""
    steps_per_epoch = n // batch_size
    epoch, k = divmod(step, steps_per_epoch)
    return [int(i) for i in epoch_order(n, epoch, seed)[k * batch_size:(k + 1) * batch_size]]


def run_sft(
    cfg: ml_collections.ConfigDict,
    load: Callable[[Sequence[int]], list[Trajectory]],
    num_examples: int,
    processor: ImageProcessor,
    model_config: ModelConfig | None = None,
    console=print,
    side_files_from: str | None = None,
    pad_id: int = PAD_ID,
    label: str = "sft",
) -> dict:
    """Train on examples fetched by index with `load(indices)`; returns the last step's metrics.
    `pad_id`: the tokenizer's `<|endoftext|>` (padding must be a row of the embedding); `label` names the
    progress bar (the toy recipe runs several SFT stages)."""
    t = train_settings(cfg, "sft")
    if num_examples < t.batch_size:
        raise ValueError(f"{num_examples} SFT examples is fewer than one batch ({t.batch_size})")
    steps_per_epoch = num_examples // t.batch_size
    total = t.steps or int(t.epochs * steps_per_epoch)
    session = open_session(cfg, "sft", total, console=console)
    trainer = session.trainer
    mcfg = model_config or trainer.model_config
    spec = t.batch_spec(pad_id, trainer.data_ways)
    share, hosts = trainer.row_share  # multi-host: this host's share of the examples and of each micro-batch
    spec = dataclasses.replace(spec, micro_batch=spec.micro_batch // hosts)

    def load_share(step: int) -> tuple[list[Example], int]:
        """This host's examples of step `step` (images processed; weights normalised on this host's counts)
        and how many of them were truncated to the cutoff. Runs on a worker thread: no collectives here."""
        trajs = load(step_indices(num_examples, step, t.batch_size, cfg.seed)[share::hosts])
        return examples_from_trajectories(trajs, processor, agg=t.loss_agg), sum(tr.truncated for tr in trajs)

    def build(loaded: tuple[list[Example], int]) -> tuple[list[TrainBatch], int, int]:
        """Micro-batches with the step's global loss normalisation, the samples truncated and the tokens, over
        all hosts (main thread: the hosts agree on the counts and on every micro-batch's sizes)."""
        examples, truncated = loaded
        tokens = sum(len(e.token_ids) for e in examples)
        if hosts == 1:
            return micro_batches(examples, mcfg, spec)[0], truncated, tokens
        seqs, toks, truncated, tokens = agree_sum(np.array(
            [len(examples), sum(float(e.loss_mask.sum()) for e in examples), truncated, tokens], np.float64))
        for e in examples:
            e.weights = token_weights([e.loss_mask], t.loss_agg, int(seqs), toks)[0]
        return micro_batches(examples, mcfg, spec, agree=agree_max)[0], int(truncated), int(tokens)

    metrics: dict = {}
    truncated_total = seen = 0
    timer = StepTimer()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    start = trainer.step
    pending = pool.submit(load_share, start) if start < total else None
    bar = tqdm(total=total, initial=start, desc=label, unit="step", disable=console is None)
    try:
        with PreemptionGuard() as guard:
            while trainer.step < total:
                batches, truncated, tokens = build(pending.result())
                if truncated and not truncated_total and console is not None:
                    console(f"{label}: samples longer than max_length={t.max_length} are truncated as LLaMA-Factory "
                            "does (metric 'truncated': samples cut in the step)")
                truncated_total += truncated
                seen += t.batch_size
                step = trainer.step
                pending = pool.submit(load_share, step + 1) if step + 1 < total else None
                timer.start()
                metrics = trainer.train_step(batches)
                seconds = timer.stop()
                metrics.update(step_time_s=seconds, tokens_per_s=tokens_per_second(tokens, seconds),
                               epoch=(step + 1) / steps_per_epoch, lr=float(trainer.learning_rate()),
                               truncated=truncated)
                session.writer.write(trainer.step, metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if session.checkpoint(trainer.step, total, {"kind": "sft"}, guard, console):
                    return metrics
    finally:
        bar.close()
        pool.shutdown(cancel_futures=True)
        if truncated_total and console is not None:
            console(f"{label}: {truncated_total} of the {seen} samples trained on in this run were truncated "
                    f"to max_length={t.max_length} tokens")
    session.finish(side_files_from)
    return metrics


def sft_from_file(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, processor: ImageProcessor,
                  console=print, side_files_from: str | None = None) -> dict:
    """SFT on a LLaMA-Factory sharegpt file (`cfg.data.path`, e.g. Mini-o3-Coldstart.json) or, with
    `cfg.data.tfds_dir`, on the prepared cold-start set (`cfg.data.path` then names the downloaded
    folder to prepare from when it is not prepared yet: the published parquet or the JSON)."""
    d = sft_data(cfg)
    absolute = d.allow_absolute_images
    bad: list[BadRecord] = []
    if d.tfds_dir:
        from mini_o3_jax.data import loader

        records = loader.coldstart_records(d.tfds_dir, source_dir=d.path or None, image_root=d.image_root or None,
                                           allow_absolute_images=absolute)
        bad = loader.bad_records("coldstart", d.tfds_dir)
    else:
        records = read_sharegpt(d.path, d.image_root or None, allow_absolute_images=absolute, bad=bad)
    if bad and console is not None:
        console(f"sft: {len(bad)} unusable row(s) skipped, {len(records)} kept:\n{describe_bad(bad, 10)}")

    def load(indices):
        return list(sharegpt_trajectories([records[i] for i in indices], tokenizer, processor,
                                          max_length=cfg.train.max_length, min_pixels=d.min_pixels,
                                          max_pixels=d.max_pixels))

    return run_sft(cfg, load, len(records), processor, console=console, side_files_from=side_files_from,
                   pad_id=tokenizer.endoftext_id)
