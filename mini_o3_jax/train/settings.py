"""The `train` block of an SFT or RL config as a typed dataclass (`config_files.from_block`).

    t = train_settings(cfg, "ppo")        # RLTrain: an unknown key is a ConfigError naming train.<key>
    c = checkpoint_settings(cfg)          # CheckpointConfig, the `checkpoint` block
    spec = t.batch_spec(tokenizer.endoftext_id)

The block mixes settings of three consumers: how examples are cut into micro-batches (`BatchSpec`), what the
trainer computes (`StepConfig`) and the loop's own knobs (steps, batch size, prompts per step...). The first
two keep their defaults in `BatchSpec` and `StepConfig`; the fields here point at them rather than restate.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from mini_o3_jax.config_files import from_block
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.train.batch import BatchSpec
from mini_o3_jax.train.step import StepConfig

# The released configs' fixed shape sets (7B, 32K-token trajectories of up to 12 images of <= 2 Mpx): 3 lengths,
# ViT windows per row up to 12 images x 254 (the most windows a 2-Mpx image spans, at an extreme aspect ratio;
# a typical one spans ~180), and full-attention bands of 192 (a typical 2-Mpx image) or 256 windows. At most
# 3 x 5 x 2 = 30 programs per step function, against ~180 with bucketed sizes.
SHAPES_7B = dict(lengths=(8192, 16384, 32768), windows=(256, 512, 1024, 2048, 3072), bands=(192, 256))
TOY_SHAPES = dict(lengths=[], windows=[], bands=[])  # toy runs: bucketed sizes


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What SFT and RL `train` blocks share."""

    steps: int = 0  # SFT: 0 derives it from epochs
    # rows per micro-batch over the whole mesh: a multiple of the data-parallel devices, or -1 for one row each
    micro_batch: int = -1
    min_length: int = BatchSpec.min_length
    max_length: int = BatchSpec.max_length
    min_windows: int = BatchSpec.min_windows
    # fixed shape sets (each empty: bucketed sizes); see BatchSpec
    lengths: tuple[int, ...] = ()
    windows: tuple[int, ...] = ()
    bands: tuple[int, ...] = ()
    loss_agg: str = "token-mean"
    trainable: str = StepConfig.trainable
    logits_chunk: int = StepConfig.logits_chunk
    # the log-probs' temperature: SFT trains at 1.0 unless this says; RL's is rollout.sampling.temperature (an
    # older RL config's train.temperature must agree with it: `session.logprob_temperature`)
    temperature: float | None = None

    def batch_spec(self, pad_id: int, data_ways: int = 1) -> BatchSpec:
        """`pad_id`: the tokenizer's `<|endoftext|>` (padding must be a row of the embedding); `data_ways`: the
        devices a micro-batch's rows are split over (`Trainer.data_ways`), which the rows must fill evenly."""
        rows = data_ways if self.micro_batch == -1 else self.micro_batch
        if rows < 1 or rows % data_ways:
            raise ConfigError(f"train.micro_batch = {self.micro_batch}: the rows of a micro-batch are split over "
                              f"{data_ways} data-parallel devices; use a multiple of {data_ways} or -1 (one row "
                              "per device)")
        return BatchSpec(micro_batch=rows, min_length=self.min_length, max_length=self.max_length,
                         min_windows=self.min_windows, pad_id=pad_id, lengths=_sizes(self.lengths, "lengths"),
                         windows=_sizes(self.windows, "windows"), bands=_sizes(self.bands, "bands"))


def _sizes(values, name: str) -> tuple[int, ...]:
    sizes = tuple(values or ())
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
        raise ConfigError(f"train.{name} = {list(sizes)}; expected positive integers")
    return tuple(sorted(sizes))


@dataclasses.dataclass(frozen=True)
class SFTTrain(TrainConfig):
    """Cold-start SFT (spec §3): `steps` or `epochs` over the data, `batch_size` sequences an optimizer step."""

    epochs: float = 3.0
    batch_size: int = 32


@dataclasses.dataclass(frozen=True)
class RLTrain(TrainConfig):
    """GRPO (spec §4): prompts a step, mini-batch updates, dynamic sampling, over-turn masking."""

    steps: int = 100
    prompts_per_step: int = 256
    mini_batch_prompts: int = 32
    dynamic_sampling: bool = True
    max_gen_batches: int = 256
    mask_exceeded: bool = True  # over-turn masking (actor.ignore_exceed)
    loss_agg: str = "seq-mean-token-mean"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """The `checkpoint` block: save every `every` steps (and at the end, and on preemption), keep the newest
    `keep`, write in the background (`async_save`) while training goes on."""

    every: int = 100
    keep: int = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        for name in ("every", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"checkpoint.{name} = {value!r}; expected an integer >= 1")
        if not isinstance(self.async_save, bool):
            raise ConfigError(f"checkpoint.async_save = {self.async_save!r}; expected true or false")


def checkpoint_settings(cfg: ml_collections.ConfigDict) -> CheckpointConfig:
    """`cfg.checkpoint` typed: an unknown key is a ConfigError naming checkpoint.<key>."""
    return from_block(CheckpointConfig, cfg.checkpoint, "checkpoint")


def train_settings(cfg: ml_collections.ConfigDict, loss: str) -> TrainConfig:
    """`cfg.train` as RLTrain (loss "ppo") or SFTTrain."""
    return from_block(RLTrain if loss == "ppo" else SFTTrain, cfg.train, "train")
