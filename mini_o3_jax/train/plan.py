"""`mini-o3 plan`: compile the trainer's real step functions for hardware this machine does not have.

The functions are `train.step.step_functions` (what `Trainer` runs), traced with the trainer's context
(activation shardings, attention backend) over an abstract model (`nnx.eval_shape`: no weights are
allocated) at the config's largest shapes, and compiled ahead of time either for the local devices or for
a TPU slice named like `v5p:2x4x4` through `jax.experimental.topologies` (needs libtpu: `pip install
"jax[tpu]==<jax version>"`, which runs on any CPU machine). What one chip holds is read from the compiled
program's buffer assignment (every allocation of device memory: arguments, outputs, the preallocated
temporaries), which is checked against the chip's HBM. `memory_analysis` is the fallback: libtpu 0.0.42's
`temp_size_in_bytes` is not the allocation (39.7 GB for a GRPO step whose buffer assignment reserves 26.5 GB).

Step time is estimated from the FLOPs the gradient program executes (`train.flops`: its jaxpr's matmuls and
splash kernels, every scanned layer and rematerialised forward counted, which XLA's `cost_analysis` does not
do) at a stated fraction of the chip's bf16 peak (`efficiency`); the estimated MFU is the model FLOPs (6 x
parameters x tokens + causal attention, the MFU convention) over that time at peak. Beside it, what libtpu's
own cost model predicts for the decoder's largest matmul on the chip, as a check on the assumed efficiency.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.presets import model_config
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.model.vision import BLOCK_KIND_SCOPE, VisionInputs
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.parallel.rules import Rules, batch_ways, logical_to_spec, state_shardings
from mini_o3_jax.train.batch import TrainBatch
from mini_o3_jax.train.flops import executed_flops
from mini_o3_jax.train.optim import OptimConfig, make_optimizer
from mini_o3_jax.train.settings import train_settings
from mini_o3_jax.train.step import _frozen_filter, optimizer_shardings, step_functions, tracing

GiB = 1 << 30
# per chip: HBM bytes and dense bf16 peak FLOP/s (vendor figures)
CHIPS = {"v5p": (95 * GiB, 459e12), "v6e": (32 * GiB, 918e12), "v5e": (16 * GiB, 197e12),
         "v4": (32 * GiB, 275e12)}
DEFAULT_TARGETS = ("v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v6e:4x8", "v6e:8x8", "v6e:16x16")


@dataclasses.dataclass
class PlanRow:
    target: str
    chips: int
    mesh: dict[str, int]
    loss: str
    rows: int  # micro-batch rows (over the whole mesh)
    length: int
    windows: int  # ViT windows of the micro-batch
    grads_bytes: int  # per chip: device memory the gradient program reserves (arguments, temporaries, outputs)
    opt_state_bytes: int  # per chip: resident beside it: the AdamW moments and the gradient accumulator
    apply_bytes: int  # per chip: the update program
    capacity: int | None
    model_flops: float  # per chip, one micro-batch, forward + backward: the useful work of the MFU convention
    executed_flops: float  # per chip: the gradient program's matmuls and attention kernels (`train.flops`)
    peak_flops: float | None
    efficiency: float  # assumed fraction of the bf16 peak that the executed matmuls and kernels reach
    cost_model_efficiency: float | None = None  # libtpu's cost model on the decoder's MLP matmul (TPU only)
    kernels: int = 0  # Pallas/Mosaic custom calls in the compiled gradient program (splash attention on TPU)
    error: str | None = None  # the compiler's refusal (e.g. more temporaries than HBM): does not fit
    logprob_bytes: int = 0  # per chip: the old-log-prob pass (RL), beside the moments; 0 when not compiled

    @property
    def peak_bytes(self) -> int:
        return max(self.grads_bytes + self.opt_state_bytes, self.apply_bytes, self.logprob_bytes)

    @property
    def fits(self) -> bool:
        return self.error is None and (self.hbm_fraction is None or self.hbm_fraction < 0.9)

    @property
    def hbm_fraction(self) -> float | None:
        return None if not self.capacity else self.peak_bytes / self.capacity

    @property
    def step_seconds(self) -> float | None:
        """Estimated seconds per micro-batch: executed FLOPs at `efficiency` x peak."""
        return None if not self.peak_flops else self.executed_flops / (self.peak_flops * self.efficiency)

    @property
    def mfu(self) -> float:
        """Estimated model FLOPs utilisation: model FLOPs over (estimated time x peak)."""
        return self.efficiency * self.model_flops / self.executed_flops


def _compile(lowered: Any) -> tuple[Any, int, str]:
    """(compiled, per-chip bytes reserved, where that figure is from): the sum of the default memory space's allocations in XLA's buffer
    assignment (dumped to a temporary directory for this compile), else memory_analysis' arguments + temporaries
    + outputs - aliases."""
    import glob
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        compiled = lowered.compile(compiler_options={"xla_dump_to": d, "xla_dump_hlo_as_text": True})
        files = sorted(glob.glob(f"{d}/*after_optimizations-buffer-assignment.txt"))
        text = ""
        if files:
            with open(files[-1], encoding="utf-8") as f:
                text = f.read()
    sizes = [int(n) for n, rest in re.findall(r"^allocation \d+: size (\d+),?(.*)$", text, re.M)
             if not rest.lstrip().startswith("color ")]
    if sizes:
        return compiled, sum(sizes), "buffer assignment"
    m = compiled.memory_analysis()
    return compiled, (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                      - m.alias_size_in_bytes), "memory_analysis"


def target_devices(target: str) -> tuple[list, str, tuple[int, float] | tuple[None, None]]:
    """(devices, platform, (HBM bytes, peak FLOP/s)) of `target`: "local" or a TPU topology name."""
    if target == "local":
        devices = jax.devices()
        stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
        return devices, devices[0].platform, ((stats or {}).get("bytes_limit"), None)
    from jax.experimental import topologies

    chip = target.split(":")[0]
    if chip not in CHIPS:
        raise ConfigError(f"plan target {target!r}: expected 'local' or a TPU topology such as v5p:2x4x4 "
                          f"(chips: {', '.join(CHIPS)})")
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=target)
    except Exception as e:  # no libtpu, a name libtpu does not know, or another process holding libtpu
        import importlib.util

        hint = "" if importlib.util.find_spec("libtpu") else \
            '; the TPU compiler comes with `pip install "jax[tpu]==' + jax.__version__ + '"`'
        raise ConfigError(f"plan target {target!r}: cannot describe the TPU topology "
                          f"({str(e).splitlines()[0]}){hint}") from None
    return list(topology.devices), "tpu", CHIPS[chip]


def _model_config(cfg: ml_collections.ConfigDict, preset: str) -> ModelConfig:
    """The model the config trains: its checkpoint's config (Orbax or HF), its `model` block, else `preset`
    (the released configs name no model: plan then sizes Qwen2.5-VL-7B)."""
    import json
    import os

    from mini_o3_jax.model.weights import ORBAX_META

    path = os.path.expanduser(cfg.model_path or "")
    if path and os.path.exists(os.path.join(path, ORBAX_META)):
        with open(os.path.join(path, ORBAX_META), encoding="utf-8") as f:
            return ModelConfig.from_config_dict(json.load(f)["config"])
    if path and os.path.exists(os.path.join(path, "config.json")):
        return ModelConfig.from_json_file(path)
    if "model" in cfg and not path:
        block = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else cfg.model
        return ModelConfig.from_config_dict(block)
    return model_config(preset)


def _struct(shape, dtype, mesh: Mesh, spec: PartitionSpec) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=NamedSharding(mesh, spec))


def _abstract(state: Any, shardings: Any, dtype=None) -> Any:
    pure = nnx.to_pure_dict(state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=s), pure, shardings)


def _per_chip(tree: Any) -> int:
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def abstract_batch(mcfg: ModelConfig, rows: int, length: int, windows: int, band: int, pixel_dtype,
                   mesh: Mesh, rules: Rules) -> TrainBatch:
    """A micro-batch of ShapeDtypeStructs laid out as `Trainer.put` places one."""
    def by(axes, shape, dtype):
        return _struct(shape, dtype, mesh, logical_to_spec(axes, shape, mesh, rules))

    rowwise = ("act_batch", None)
    text = TextInputs(by(rowwise, (rows, length), jnp.int32), by((None, "act_batch", None), (3, rows, length),
                                                                    jnp.int32),
                      by(rowwise, (rows, length), jnp.int32), by(rowwise, (rows, length), jnp.int32))
    p = windows * mcfg.vision.window_patches
    patches = ("act_patches", None)
    vision = VisionInputs(by(patches, (p, mcfg.vision.patch_dim), pixel_dtype), by(patches, (p, 2), jnp.int32),
                          by(("act_patches",), (p,), jnp.int32), by(("act_patches",), (p,), jnp.int32),
                          by((None,), (band,), jnp.int32), by(rowwise, (rows, windows // rows), jnp.int32))
    f32 = functools.partial(by, rowwise, (rows, length), jnp.float32)
    return TrainBatch(text, vision, by(rowwise, (rows, length), jnp.int32), f32(), f32(),
                      by(("act_batch",), (rows,), jnp.float32), f32(), f32())


def model_flops(mcfg: ModelConfig, rows: int, length: int, windows: int, trainable: str) -> float:
    """Forward + backward FLOPs of one micro-batch: 6 x params x tokens for the decoder (2 x forward, 4 x
    backward; a frozen ViT's backward computes no weight gradients: 4 x), plus causal attention."""
    t, v = mcfg.text, mcfg.vision
    layer = t.hidden_size * (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim \
        + t.num_attention_heads * t.head_dim * t.hidden_size + 3 * t.hidden_size * t.intermediate_size
    llm = t.num_hidden_layers * layer + t.hidden_size * t.vocab_size  # + the LM head
    tokens = rows * length
    attn = 6 * 2 * t.num_hidden_layers * rows * (length * length / 2) * t.num_attention_heads * t.head_dim
    vit_layer = v.hidden_size * 3 * v.hidden_size + v.hidden_size * v.hidden_size + 3 * v.hidden_size \
        * v.intermediate_size
    patches = windows * v.window_patches
    vit = (6 if trainable == "all" else 4) * v.depth * vit_layer * patches
    return 6 * llm * tokens + attn + vit


def plan(cfg: ml_collections.ConfigDict, loss: str, target: str, *, efficiency: float = 0.7,
         preset: str = "qwen2_5_vl_7b", length: int | None = None, windows: int | None = None,
         interpret: bool = False) -> PlanRow:
    """Compile the gradient and update programs of `cfg` for `target`; see the module docstring."""
    from mini_o3_jax.train.session import sharding_rules, step_config

    devices, platform, (capacity, peak) = target_devices(target)
    mesh = make_mesh(dict(cfg.mesh or {"fsdp": -1}), devices=devices)
    rules = sharding_rules(cfg)
    mcfg = _model_config(cfg, preset)
    scfg = step_config(cfg, loss)
    t = train_settings(cfg, loss)
    model = nnx.eval_shape(lambda: Qwen25VL(mcfg, dtype=cfg.dtype, rngs=nnx.Rngs(0), remat=cfg.remat))
    compute_dtype = jnp.dtype(model.dtype)
    graphdef, frozen, params = nnx.split(model, _frozen_filter(scfg.trainable), ...)
    fs, ps = state_shardings(frozen, mesh, rules), state_shardings(params, mesh, rules)
    params, frozen = _abstract(params, ps, jnp.float32), _abstract(frozen, fs)
    optimizer = make_optimizer(OptimConfig(), 1000)
    os_ = optimizer_shardings(optimizer, params, ps, mesh)
    opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             jax.eval_shape(optimizer.init, params), os_)
    grads_fn, logprob_fn, apply_fn, _ = step_functions(graphdef, scfg, compute_dtype, optimizer, mesh, ps, fs, os_)
    rows = t.batch_spec(0, batch_ways(mesh, rules)).micro_batch  # as the loops size micro-batches
    length = length or (max(t.lengths) if t.lengths else t.max_length)
    # ViT windows per row: the config's largest budget (12 images of the widest 2-Mpx shape) unless given
    windows = rows * (windows or (max(t.windows) if t.windows else max(t.min_windows, 16)))
    band = max(t.bands) if t.bands else 16
    pixel_dtype = compute_dtype if loss == "ppo" else jnp.float32  # RL reuses the rollout's patches
    batch = abstract_batch(mcfg, rows, length, windows, band, pixel_dtype, mesh, rules)
    attention = cfg.get("attention", "auto")
    if attention == "auto":
        attention = {"tpu": "splash", "gpu": "cudnn"}.get(platform, "xla")
    flops = model_flops(mcfg, rows, length, windows, scfg.trainable) / len(devices)
    resident = _per_chip(opt_state) + _per_chip(params)  # moments + the fp32 gradient sum of earlier micro-batches
    common = dict(target=target, chips=len(devices), mesh=dict(mesh.shape), loss=loss, rows=rows, length=length,
                  windows=windows, opt_state_bytes=resident, capacity=capacity, model_flops=flops,
                  peak_flops=peak, efficiency=efficiency,
                  cost_model_efficiency=_matmul_efficiency(devices[0], mcfg, length, peak) if platform == "tpu"
                  else None)
    with tracing(mesh, rules, attention, interpret=interpret):
        executed = executed_flops(grads_fn, params, frozen, batch,
                                  branch_weights=_vit_block_weights(mcfg)).total / len(devices)
        common["executed_flops"] = executed
        apply, apply_bytes, _ = _compile(apply_fn.lower(params, opt_state, params))
        try:
            grads, grads_bytes, _ = _compile(grads_fn.lower(params, frozen, batch))
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program larger than HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return PlanRow(**common, grads_bytes=0, apply_bytes=apply_bytes,
                           error=str(e).split("RESOURCE_EXHAUSTED: ")[-1].splitlines()[0])
        logprob_bytes = 0
        if loss == "ppo":  # the old-log-prob pass: same micro-batch, forward only, the moments resident
            logprob_bytes = _compile(logprob_fn.lower(params, frozen, batch))[1] + _per_chip(opt_state)
    return PlanRow(**common, grads_bytes=grads_bytes, apply_bytes=apply_bytes, logprob_bytes=logprob_bytes,
                   kernels=grads.as_text().count("tpu_custom_call"))


def _vit_block_weights(mcfg: ModelConfig):
    """`train.flops` branch weights of the ViT's per-block cond: (window, full) in the tower's proportions."""
    full = len(mcfg.vision.fullatt_block_indexes) / mcfg.vision.depth

    def weights(stack: str):
        return (1.0 - full, full) if BLOCK_KIND_SCOPE in stack else None
    return weights


def _matmul_efficiency(device, mcfg: ModelConfig, length: int, peak: float) -> float | None:
    """libtpu's cost-model time for the decoder's MLP up-projection (length x hidden @ hidden x intermediate,
    bf16) on one chip, as a fraction of peak: what the compiler itself expects of the step's dominant matmul."""
    t = mcfg.text
    sharding = NamedSharding(Mesh(np.array([device]), ("x",)), PartitionSpec())
    a = jax.ShapeDtypeStruct((length, t.hidden_size), jnp.bfloat16, sharding=sharding)
    b = jax.ShapeDtypeStruct((t.hidden_size, t.intermediate_size), jnp.bfloat16, sharding=sharding)
    cost = jax.jit(jnp.matmul).lower(a, b).compile().cost_analysis() or {}
    seconds = cost.get("optimal_seconds")
    return None if not seconds else 2.0 * length * t.hidden_size * t.intermediate_size / (seconds * peak)


def format_rows(rows: list[PlanRow]) -> str:
    """A Markdown table of plan rows."""
    head = ("| target | chips | mesh (data, fsdp, tensor) | step | micro-batch | per-chip HBM: gradient program + "
            "moments and gradient sum / update / old-log-prob pass | of capacity | TFLOP per chip: model / executed | "
            "est. time per micro-batch | est. MFU |\n"
            "|---|---:|---|---|---|---|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        frac = "n/a" if r.hbm_fraction is None else f"{100 * r.hbm_fraction:.0f} %" + (
            "" if r.hbm_fraction < 0.9 else " **over 90 %**")
        if r.error:
            frac = f"**does not fit**: {r.error}"
        step = "n/a" if r.step_seconds is None else f"{r.step_seconds:.2f} s"
        check = "" if r.cost_model_efficiency is None else f" (libtpu: {100 * r.cost_model_efficiency:.0f} %)"
        mesh = ", ".join(str(r.mesh[k]) for k in ("data", "fsdp", "tensor"))
        lines.append(f"| {r.target} | {r.chips} | {mesh} | {r.loss} | {r.rows} x {r.length} tokens, {r.windows} "
                     f"windows | {'-' if r.error else f'{(r.grads_bytes + r.opt_state_bytes) / GiB:.1f}'} / "
                     f"{r.apply_bytes / GiB:.1f} / "
                     f"{f'{r.logprob_bytes / GiB:.1f}' if r.logprob_bytes else '-'} GiB | "
                     f"{frac} | {r.model_flops / 1e12:.1f} / {r.executed_flops / 1e12:.1f} | {step} at "
                     f"{100 * r.efficiency:.0f} %{check} of peak | {100 * r.mfu:.0f} % |")
    return "\n".join(lines)


def loss_of(cfg: ml_collections.ConfigDict) -> str:
    """"ppo" for an RL config (it has a `ppo` block), else "sft"."""
    return "ppo" if "ppo" in cfg else "sft"


def write_results(rows: list[PlanRow], config_name: str, path: str) -> None:
    """Replace (or append) this config's plan section of bench/RESULTS.md."""
    import platform as host

    names = [r.target for r in rows]
    targets = "" if tuple(names) == DEFAULT_TARGETS else "".join(f" --target {n}" for n in names)
    begin, end = f"<!-- mini-o3 plan:{config_name}:begin -->", f"<!-- mini-o3 plan:{config_name}:end -->"
    body = (f"{begin}\n## `mini-o3 plan --config {config_name}`: compiled for the targets on a CPU machine\n\n"
            f"- jax {jax.__version__}; compiled on {host.machine()} with no accelerator (AOT, "
            "`jax.experimental.topologies`); per-chip HBM from the compiled programs' buffer assignment (gradient "
            "program + AdamW moments + the gradient sum of earlier micro-batches); model FLOPs = 6 x params x tokens"
            " + causal attention; executed FLOPs = the gradient program's matmuls and splash kernels, every layer and "
            "recomputed forward counted; time = executed FLOPs at the stated fraction of the chip's bf16 peak (in "
            "brackets: libtpu's cost model for the decoder's MLP matmul); est. MFU = model FLOPs / (time x peak)\n"
            f"- Reproduce: `mini-o3 plan --config {config_name}{targets} --write-results`\n\n{format_rows(rows)}\n{end}")
    write_section(path, begin, end, body)


def write_section(path: str, begin: str, end: str, body: str) -> None:
    """Replace the section of `path` between the markers `begin` and `end` (both in `body`), or append it."""
    import os

    text = "# Benchmark results\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    if begin in text and end in text:
        text = text[:text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
