"""The jitted train step: gradients of one loss over micro-batches, summed, then one AdamW update.

The model is split once into (graphdef, frozen, params): only `params` is differentiated and
optimised (SFT freezes the vision tower and merger, as released; RL trains everything). Because
batch weights carry the global normalisation, summing micro-batch gradients *is* the gradient of
the step's loss: no division by the accumulation count, identical for any micro-batch size.
Under a mesh every jitted function has explicit shardings: parameters (and their fp32 gradients) keep
their logical-axis shardings, the optimizer state is created sharded like the parameters, micro-batch
rows and ViT rows are split over the data-parallel axes (`act_batch`, `act_patches`) and pinned there at
every layer boundary; jit's SPMD partitioner inserts the collectives.

Mixed precision: the trainer keeps fp32 master parameters and fp32 AdamW moments, and sums micro-batch
gradients in fp32; the forward and backward run on a copy cast to the model's own dtype (bf16 at 7B). A
bf16-only update loses RL: at lr 1e-6 an AdamW step moves a weight by ~1e-6, below half a bf16 ulp of
nearly every weight, so ~98 % of weights never change (issue 19). For an fp32 model the casts are no-ops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.attention_backends import attention_backend
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.parallel.hosts import multi_host, row_share
from mini_o3_jax.parallel.rules import (
    DEFAULT_RULES,
    Rules,
    activation_sharding,
    batch_ways,
    logical_to_spec,
    shard_state,
    state_shardings,
)
from mini_o3_jax.train.batch import TrainBatch
from mini_o3_jax.train.logprobs import logprobs
from mini_o3_jax.train.losses import PPOConfig, ppo_loss, sft_loss

TRAINABLE = ("all", "language_model")


def _frozen_filter(trainable: str):
    if trainable not in TRAINABLE:
        raise ConfigError(f"trainable = {trainable!r}; expected one of {TRAINABLE}")
    if trainable == "all":
        return nnx.Not(nnx.Everything())
    return lambda path, _: bool(path) and path[0] == "visual"  # vision tower + patch merger


@dataclasses.dataclass(frozen=True)
class StepConfig:
    loss: str = "sft"  # "sft" | "ppo"
    ppo: PPOConfig = PPOConfig()
    trainable: str = "all"  # "all" | "language_model" (freeze vision tower and merger)
    logits_chunk: int = 512
    temperature: float = 1.0  # log-probs at this temperature (the rollout's)


class Trainer:
    """Holds (graphdef, frozen, params, opt_state) and the compiled step functions."""

    def __init__(
        self,
        model: Qwen25VL,
        optimizer: optax.GradientTransformation,
        config: StepConfig = StepConfig(),
        *,
        mesh: Mesh | None = None,
        rules: Rules = DEFAULT_RULES,
        attention: str = "auto",
    ):
        if config.loss not in ("sft", "ppo"):
            raise ConfigError(f"loss = {config.loss!r}; expected 'sft' or 'ppo'")
        self.config, self.optimizer, self.mesh, self.rules = config, optimizer, mesh, rules
        with attention_backend(attention):  # checked here, a ConfigError before any compile
            self.attention = attention
        self.model_config = model.config
        graphdef, frozen, params, (self.frozen_shardings, self.param_shardings) = self._split(model)
        self.graphdef = graphdef
        self.compute_dtype = jnp.dtype(model.dtype)  # what forward and backward run in
        self.frozen, self.params = frozen, _cast(params, jnp.float32)  # fp32 masters
        self.opt_shardings = optimizer_shardings(optimizer, self.params, self.param_shardings, mesh)
        # created where it lives: each moment shard on the device of its parameter shard (never whole on one)
        self.opt_state = _jit(mesh, optimizer.init, (self.param_shardings,), self.opt_shardings)(self.params)
        self.step = 0
        self.schedule: Callable[[int], Any] | None = None  # the optimizer's lr schedule, for logging
        self._programs: set[tuple] = {("init",)}  # distinct (function, input shapes): one compile each
        fns = step_functions(graphdef, config, self.compute_dtype, optimizer, mesh, self.param_shardings,
                             self.frozen_shardings, self.opt_shardings)
        self._grad_fn, self._logprob_fn, self._apply_fn, self._add = fns
        # multi-host: which share of each micro-batch's rows this host builds (`parallel.hosts.row_share`)
        self.row_share = row_share(mesh, rules, self.data_ways)

    def _tracing(self):
        return tracing(self.mesh, self.rules, self.attention)

    def _split(self, model: Qwen25VL) -> tuple[Any, Any, Any, tuple[Any, Any]]:
        """graphdef, frozen and trainable state of `model` as (sharded) pure dicts, and their shardings."""
        graphdef, frozen, params = nnx.split(model, _frozen_filter(self.config.trainable), ...)
        if self.mesh is None:
            return graphdef, nnx.to_pure_dict(frozen), nnx.to_pure_dict(params), (None, None)
        fs, ps = state_shardings(frozen, self.mesh, self.rules), state_shardings(params, self.mesh, self.rules)
        return graphdef, shard_state(nnx.to_pure_dict(frozen), fs), shard_state(nnx.to_pure_dict(params), ps), (fs, ps)

    @property
    def data_ways(self) -> int:
        """How many ways a micro-batch's rows are split (the mesh axes of `act_batch`; 1 without a mesh)."""
        return batch_ways(self.mesh, self.rules)

    def trainable_params(self, model: Qwen25VL) -> Any:
        """`model`'s trainable parameters, placed like the trainer's: a reference policy for `logprobs`."""
        return self._split(model)[2]

    # -- data placement ----------------------------------------------------------------------------
    def put(self, batch: TrainBatch) -> TrainBatch:
        """Host micro-batch -> device: rows split over the data-parallel axes, ViT rows likewise, pixels in
        the compute dtype. Multi-host: `batch` holds this host's rows only (`row_share`), and the global
        arrays are assembled from every host's (`jax.make_array_from_process_local_data`)."""
        pixels = batch.vision.pixels if batch.vision is not None else None
        if pixels is not None and not isinstance(pixels, jax.Array):  # half the upload for a bf16 model
            batch = batch._replace(vision=batch.vision._replace(pixels=np.asarray(pixels, self.compute_dtype)))
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        rows = int(np.asarray(batch.targets).shape[0]) * self.row_share[1]
        if rows % self.data_ways:
            raise ConfigError(f"a micro-batch of {rows} rows does not split over the {self.data_ways} data-parallel "
                              f"devices of mesh {dict(self.mesh.shape)}: set train.micro_batch to a multiple of "
                              f"{self.data_ways} (or -1: one row per device)")
        hosts = self.row_share[1]

        def place(x, axes):
            # the global shape: this host's rows (and their ViT rows) times the hosts that share them out
            shape = tuple(n * hosts if a in ("act_batch", "act_patches") and not isinstance(x, jax.Array) else n
                          for n, a in zip(np.shape(x), axes))
            sharding = NamedSharding(self.mesh, logical_to_spec(axes, shape, self.mesh, self.rules))
            if isinstance(x, jax.Array):  # device arrays (old log-probs) move device-to-device, never via the host
                return jax.device_put(x, sharding)
            if multi_host():
                return jax.make_array_from_process_local_data(sharding, np.asarray(x), shape)
            return jax.device_put(np.asarray(x), sharding)

        def by_rank(x, first="act_batch"):
            return place(x, (first,) + (None,) * (np.ndim(x) - 1))

        text = batch.text._replace(positions=place(batch.text.positions, (None, "act_batch", None)),
                                   input_ids=by_rank(batch.text.input_ids),
                                   segment_ids=by_rank(batch.text.segment_ids),
                                   image_rows=by_rank(batch.text.image_rows))
        vision = None
        if batch.vision is not None:
            v = batch.vision
            per_row = np.shape(v.window_first)[0] == np.shape(batch.targets)[0]  # one layout row per text row
            vision = v._replace(pixels=by_rank(v.pixels, "act_patches"), pos_hw=by_rank(v.pos_hw, "act_patches"),
                                window_seg=by_rank(v.window_seg, "act_patches"),
                                image_seg=by_rank(v.image_seg, "act_patches"), band=place(v.band, (None,)),
                                window_first=by_rank(v.window_first, "act_batch" if per_row else None))
        rest = {k: by_rank(getattr(batch, k)) for k in
                ("targets", "mask", "weights", "advantages", "old_logprobs", "ref_logprobs")}
        return TrainBatch(text=text, vision=vision, **rest)

    # -- compute -----------------------------------------------------------------------------------
    def logprobs(self, batch: TrainBatch, params: Any = None) -> jax.Array:
        """(B, L) log-probs of the targets under the current parameters, or under `params` (a reference
        policy from `trainable_params`; the frozen ones are shared), without gradient."""
        params = self.params if params is None else params
        self._seen("logprobs", params, batch)
        with self._tracing():
            return self._logprob_fn(params, self.frozen, self.put(batch))

    def grads(self, batches: Sequence[TrainBatch]) -> tuple[Any, dict[str, float]]:
        """Gradients and metrics summed over micro-batches (= the step's, as weights are global)."""
        if not batches:
            raise ValueError("a train step needs at least one micro-batch")
        grads, metrics = None, None
        for i, b in enumerate(batches):
            self._seen("grads", b)
            if i:
                self._seen("add")
            with self._tracing():
                g, m = self._grad_fn(self.params, self.frozen, self.put(b))
            grads = g if grads is None else self._add(grads, g)
            metrics = m if metrics is None else jax.tree.map(jnp.add, metrics, m)
        return grads, {k: float(v) for k, v in jax.device_get(metrics).items()}

    def train_step(self, batches: Sequence[TrainBatch]) -> dict[str, float]:
        """One optimizer step over all micro-batches; returns summed metrics + grad norm."""
        grads, metrics = self.grads(batches)
        self._seen("apply")
        self.params, self.opt_state, grad_norm = self._apply_fn(self.params, self.opt_state, grads)
        self.step += 1
        metrics["grad_norm"] = float(grad_norm)
        metrics["compiled_programs"] = float(self.compiled_programs)
        return metrics

    @property
    def compiled_programs(self) -> int:
        """Distinct programs the trainer's jitted functions have compiled so far (one per function and input
        shape): a run whose count keeps growing is compiling every few steps (issue 19: ~180 an RL step with
        unfixed shapes). Logged as `compiled_programs`."""
        return len(self._programs)

    def _seen(self, name: str, *trees: Any) -> None:
        shapes = tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x).__name__)))
                       for x in jax.tree.leaves(trees))
        self._programs.add((name, jax.tree.structure(trees), shapes))

    def learning_rate(self) -> float:
        """The learning rate the next update will use (nan if no schedule was attached)."""
        return float(self.schedule(self.step)) if self.schedule is not None else float("nan")

    # -- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpointed pytree (frozen weights are stored too: restore needs no base model)."""
        return {"params": self.params, "frozen": self.frozen, "opt_state": self.opt_state}

    def state_shardings(self) -> dict[str, Any] | None:
        """Where each array of `state()` lives (None without a mesh): the restore target's layout, so a
        checkpoint restores straight onto this trainer's mesh."""
        if self.mesh is None:
            return None
        return {"params": self.param_shardings, "frozen": self.frozen_shardings, "opt_state": self.opt_shardings}

    def load_state(self, state: dict[str, Any], step: int) -> None:
        self.params, self.frozen, self.opt_state = state["params"], state["frozen"], state["opt_state"]
        self.step = step

    def model(self) -> Qwen25VL:
        """A `Qwen25VL` holding the current weights in the model's dtype (for rollout, eval and export)."""
        return _merged(self.graphdef, _cast(self.params, self.compute_dtype), self.frozen)


def tracing(mesh: Mesh | None, rules: Rules, attention: str = "auto", interpret: bool = False):
    """The context the step functions are traced in: activation shardings and the attention backend."""
    stack = contextlib.ExitStack()
    stack.enter_context(activation_sharding(mesh, rules))
    stack.enter_context(attention_backend(attention, interpret=interpret))
    return stack


def _jit(mesh: Mesh | None, fn, in_shardings, out_shardings, donate: tuple[int, ...] = ()):
    """jit with explicit shardings under a mesh (None entries: the argument's own, e.g. a batch's)."""
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate)
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate)


def optimizer_shardings(optimizer: optax.GradientTransformation, params: Any, param_shardings: Any,
                        mesh: Mesh | None) -> Any:
    """The optimizer state's shardings: moments like their parameters, counters replicated (None: no mesh).
    `params` may be abstract (`jax.ShapeDtypeStruct`s)."""
    if mesh is None:
        return None
    abstract = jax.eval_shape(optimizer.init, params)
    return optax.tree_map_params(optimizer, lambda _, s: s, abstract, param_shardings,
                                 transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
                                 is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def step_functions(graphdef, config: StepConfig, compute_dtype, optimizer: optax.GradientTransformation,
                   mesh: Mesh | None, param_shardings: Any, frozen_shardings: Any, opt_shardings: Any):
    """The trainer's jitted functions (grads, logprobs, apply, add), with their shardings: what `Trainer` runs
    and what `mini-o3 plan` compiles for a target it does not have."""
    ps, fs, os_ = param_shardings, frozen_shardings, opt_shardings
    rep = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    grads = _jit(mesh, functools.partial(_grads, graphdef, config, compute_dtype), (ps, fs, None), (ps, rep))
    logps = _jit(mesh, functools.partial(_logprobs_only, graphdef, config, compute_dtype), (ps, fs, None), None)
    apply = _jit(mesh, functools.partial(_apply, optimizer), (ps, os_, ps), (ps, os_, rep), donate=(0, 1))
    add = _jit(mesh, lambda a, b: jax.tree.map(jnp.add, a, b), (ps, ps), ps, donate=(0,))
    return grads, logps, apply, add


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    """Floating leaves of `tree` as `dtype` (shardings kept; a no-op where they already are)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _merged(graphdef, params, frozen) -> Qwen25VL:
    return nnx.merge(graphdef, frozen, params)


def _loss_fn(graphdef, cfg: StepConfig, compute_dtype, params, frozen, batch: TrainBatch):
    # the cast is inside the differentiated function: its transpose hands back fp32 gradients for the masters
    model = _merged(graphdef, _cast(params, compute_dtype), frozen)
    want_entropy = cfg.loss == "ppo" and cfg.ppo.entropy_coef != 0
    logp, entropy = logprobs(model, batch, chunk=cfg.logits_chunk, temperature=cfg.temperature,
                             with_entropy=want_entropy)
    if cfg.loss == "sft":
        return sft_loss(logp, batch)
    return ppo_loss(logp, batch, cfg.ppo, entropy)


def _grads(graphdef, cfg: StepConfig, compute_dtype, params, frozen, batch: TrainBatch):
    frozen = jax.lax.stop_gradient(frozen)
    (_, metrics), grads = jax.value_and_grad(
        functools.partial(_loss_fn, graphdef, cfg, compute_dtype), has_aux=True)(params, frozen, batch)
    return grads, metrics


def _logprobs_only(graphdef, cfg: StepConfig, compute_dtype, params, frozen, batch: TrainBatch):
    model = _merged(graphdef, _cast(params, compute_dtype), frozen)
    return logprobs(model, batch, chunk=cfg.logits_chunk, temperature=cfg.temperature)[0]


def _apply(optimizer: optax.GradientTransformation, params, opt_state, grads):
    norm = optax.tree_utils.tree_norm(grads)  # what the deprecated optax.global_norm computes
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, norm
