"""`mini-o3 plan --rollout`: what the RL config's rollout holds per chip on a TPU slice (or the local devices).

The RL loop rolls out on each host's own chips (`rl.loop._rollout_model`): weights in the serving layout (whole
on every chip: `rollout/serving.py`), the trainer's weights and AdamW moments still resident beside them, and
the paged KV pool in what is left (`rollout/pages.pool_pages`: 90 % of the free memory when `rollout.pages` is
0). The decode program is compiled ahead of time for one host's chips at that pool size (`jax.experimental.
topologies`, as `train.plan` does), and its workspace beyond its arguments (the pages it gathers, scores,
logits) is read from the compiled buffer assignment and checked against the 10 % kept free. A text extend chunk
is compiled the same way. The table says how many slots each chip serves, how many pages it holds, and so how
many whole `max_len` episodes fit at once, and how long each slot's cache may be on average before a slot waits.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import PartitionSpec as P

from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.parallel.rules import state_shardings
from mini_o3_jax.rollout.cache import PagedKVCache, page_bytes
from mini_o3_jax.rollout.sampler import Sampling, decode, extend
from mini_o3_jax.rollout.serving import Serving, serving_rules
from mini_o3_jax.train.plan import (
    GiB,
    _abstract,
    _compile,
    _model_config,
    _per_chip,
    _struct,
    target_devices,
    write_section,
)

FRACTION = 0.9  # of the free memory the pool may take (`pool_pages`)
ROLLOUT_TARGETS = ("v5p:2x4x4", "v6e:8x8")


@dataclasses.dataclass
class RolloutPlanRow:
    target: str
    chips: int
    chips_per_host: int
    slots_per_chip: int
    max_len: int
    page_size: int
    page_bytes: int
    weights_bytes: int  # per chip: the serving copy of the weights
    trainer_bytes: int  # per chip: the trainer's fp32 parameters and AdamW moments, resident during the rollout
    capacity: int | None
    pages_per_chip: int = 0  # the pool (null page included)
    decode_workspace: int = 0  # per chip: the decode program's memory beyond its arguments
    extend_workspace: int = 0  # per chip: a text extend chunk's
    extend_tokens: int = 0
    kernels: int = 0  # Pallas/Mosaic custom calls in the compiled decode program (the paged prefix kernel on TPU)
    error: str | None = None

    @property
    def kv_tokens(self) -> int:
        return (self.pages_per_chip - 1) * self.page_size

    @property
    def episodes(self) -> float:
        """Whole `max_len` episodes the chip's pool holds at once."""
        return self.kv_tokens / self.max_len

    @property
    def tokens_per_slot(self) -> int:
        """The mean cached length per slot the pool sustains with every slot busy (no waiting below it)."""
        return self.kv_tokens // max(self.slots_per_chip, 1)

    @property
    def kept_free(self) -> int:
        return self.capacity - self.weights_bytes - self.trainer_bytes - self.pages_per_chip * self.page_bytes

    @property
    def fits(self) -> bool:
        return (self.error is None and self.pages_per_chip > self.max_len // self.page_size
                and max(self.decode_workspace, self.extend_workspace) <= self.kept_free)


def _host_devices(devices: list) -> list:
    first = getattr(devices[0], "process_index", 0)
    return [d for d in devices if getattr(d, "process_index", 0) == first]


def rollout_plan(cfg: ml_collections.ConfigDict, target: str, *, preset: str = "qwen2_5_vl_7b",
                 extend_tokens: int | None = None) -> RolloutPlanRow:
    """Size and compile the rollout of RL config `cfg` for `target`; see the module docstring."""
    from mini_o3_jax.model.attention_backends import attention_backend, resolve
    from mini_o3_jax.rl.loop import rollout_settings
    from mini_o3_jax.train.optim import OptimConfig, make_optimizer
    from mini_o3_jax.train.session import sharding_rules
    from mini_o3_jax.train.step import optimizer_shardings

    r = rollout_settings(cfg)
    # the longest extend the engine makes: one chunked-prefill piece, or a whole max_len prompt without chunking
    extend_tokens = extend_tokens or r.prefill_chunk or r.max_len
    devices, platform, (capacity, _) = target_devices(target)
    host = _host_devices(devices)
    mcfg = _model_config(cfg, preset)
    model = nnx.eval_shape(lambda: Qwen25VL(mcfg, dtype=cfg.dtype, rngs=nnx.Rngs(0)))
    dtype = jnp.dtype(model.dtype)
    graphdef, state = nnx.split(model)

    # the trainer's resident state over the whole slice (its layout), per chip
    train_mesh = make_mesh(dict(cfg.mesh or {"fsdp": -1}), devices=devices)
    rules = sharding_rules(cfg)
    params = _abstract(state, state_shardings(state, train_mesh, rules), jnp.float32)
    optimizer = make_optimizer(OptimConfig(), 1000)
    os_ = optimizer_shardings(optimizer, params, state_shardings(state, train_mesh, rules), train_mesh)
    moments = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           jax.eval_shape(optimizer.init, params), os_)
    trainer_bytes = _per_chip(params) + _per_chip(moments)

    # the serving copy on one host's chips
    mesh = make_mesh({"data": len(host)}, devices=host)
    serving = Serving(mesh, ("data",))
    weights = _abstract(state, state_shardings(state, mesh, serving_rules(rules)))
    per_page = page_bytes(mcfg.text, r.page_size, dtype)
    row = RolloutPlanRow(target=target, chips=len(devices), chips_per_host=len(host),
                         slots_per_chip=r.slots // len(host), max_len=r.max_len, page_size=r.page_size,
                         page_bytes=per_page, weights_bytes=_per_chip(weights), trainer_bytes=trainer_bytes,
                         capacity=capacity, extend_tokens=extend_tokens)
    if r.slots % len(host):
        row.error = f"rollout.slots = {r.slots} does not split over {len(host)} chips"
        return row
    per_slot = -(-r.max_len // r.page_size)
    free = (capacity or 0) - row.weights_bytes - trainer_bytes
    full = row.slots_per_chip * per_slot + 1
    row.pages_per_chip = r.pages // len(host) if r.pages else min(full, int(free * FRACTION) // per_page)
    if capacity and row.pages_per_chip * per_page > free * FRACTION:
        row.error = (f"rollout.pages = {r.pages}: {row.pages_per_chip * per_page / GiB:.1f} GiB of pages per chip, "
                     f"{free / GiB:.1f} GiB free")
        return row
    if row.pages_per_chip <= per_slot:
        row.error = f"{max(row.pages_per_chip, 0)} pages fit per chip, fewer than one {r.max_len}-token episode"
        return row

    t = mcfg.text
    slots, pages = r.slots, row.pages_per_chip * len(host)
    pool = _struct((t.num_hidden_layers, t.num_key_value_heads, pages, r.page_size, t.head_dim), dtype, mesh,
                   P(None, None, "data"))
    by_slot = functools.partial(_struct, mesh=mesh, spec=P("data"))
    cache = PagedKVCache(pool, pool, by_slot((slots,), jnp.int32), by_slot((slots,), jnp.int32),
                         _struct((slots, per_slot), jnp.int32, mesh, P("data")))
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), slots))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=by_slot((slots,), jnp.int32).sharding)
    sampling = Sampling(max_token_id=t.vocab_size - 1)
    vec = by_slot((slots,), jnp.int32)
    flags = by_slot((slots,), jnp.bool_)
    stop_table = _struct((8, t.vocab_size), jnp.int32, mesh, P())
    try:
        # traced for the target's kernels (the paged prefix kernel on TPU), not this machine's
        backend = resolve(platform)
        with attention_backend(backend):
            lowered = decode.lower(graphdef, weights, cache, vec, flags, vec, _struct((2,), jnp.int32, mesh, P()),
                                   keys, sampling, r.decode_chunk, stop_table, vec, kv_len=r.max_len, serving=serving)
        row.decode_workspace, row.kernels = _workspace(lowered)
        rows = len(host)  # one chunk per chip, the longest prompt chunk the config allows
        by_row = functools.partial(_struct, mesh=mesh, spec=P("data"))
        text = TextInputs(by_row((rows, extend_tokens), jnp.int32),
                          _struct((3, rows, extend_tokens), jnp.int32, mesh, P(None, "data")),
                          by_row((rows, extend_tokens), jnp.int32), by_row((rows, extend_tokens), jnp.int32))
        with attention_backend(backend):
            lowered = extend.lower(graphdef, weights, cache, text, None, by_row((rows,), jnp.int32),
                                   by_row((rows,), jnp.int32),
                                   jax.ShapeDtypeStruct((rows,), keys.dtype,
                                                        sharding=by_row((rows,), jnp.int32).sharding),
                                   sampling, serving=serving)
        row.extend_workspace = _workspace(lowered)[0]
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        row.error = str(e).split("RESOURCE_EXHAUSTED: ")[-1].splitlines()[0]
    return row


def _workspace(lowered) -> tuple[int, int]:
    """A program's memory beyond its arguments (the weights it reads, the pool): the buffer assignment's total less
    the arguments (an unused weight, the ViT's in decode, is not one); and its Pallas/Mosaic kernel calls."""
    compiled, total, _ = _compile(lowered)
    return (max(0, total - compiled.memory_analysis().argument_size_in_bytes),
            compiled.as_text().count("tpu_custom_call"))


def format_rollout_rows(rows: list[RolloutPlanRow]) -> str:
    head = ("| target | chips (per host) | slots per chip | per-chip HBM: serving weights / trainer state / KV pool / "
            "decode, extend workspace | pages per chip | KV tokens per chip | whole episodes at once | mean tokens "
            "per slot before waiting | Pallas kernels in decode | fits |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        pool = r.pages_per_chip * r.page_bytes
        verdict = ("yes" if r.fits else f"**no**: {r.error or 'workspace beyond the memory kept free'}")
        lines.append(
            f"| {r.target} | {r.chips} ({r.chips_per_host}) | {r.slots_per_chip} | {r.weights_bytes / GiB:.1f} / "
            f"{r.trainer_bytes / GiB:.1f} / {pool / GiB:.1f} / {r.decode_workspace / GiB:.2f}, "
            f"{r.extend_workspace / GiB:.2f} GiB of {(r.capacity or 0) / GiB:.0f} | {r.pages_per_chip:,} x "
            f"{r.page_size} | {r.kv_tokens:,} | {r.episodes:.1f} x {r.max_len:,} | {r.tokens_per_slot:,} | {r.kernels} | {verdict} |")
    return "\n".join(lines)


def write_rollout_results(rows: list[RolloutPlanRow], config_name: str, path: str) -> None:
    """Replace (or append) this config's rollout plan section of bench/RESULTS.md."""
    import platform as host

    names = [r.target for r in rows]
    targets = "" if tuple(names) == ROLLOUT_TARGETS else "".join(f" --target {n}" for n in names)
    begin = f"<!-- mini-o3 plan --rollout:{config_name}:begin -->"
    end = f"<!-- mini-o3 plan --rollout:{config_name}:end -->"
    r = rows[0]
    body = (f"{begin}\n## `mini-o3 plan --config {config_name} --rollout`: the rollout per chip, compiled on a CPU "
            f"machine\n\n- jax {jax.__version__}; compiled on {host.machine()} with no accelerator (AOT, "
            "`jax.experimental.topologies`). Each host rolls out on its own chips: the weights whole on every chip "
            "(serving layout), the trainer's fp32 parameters and AdamW moments resident beside them, the paged KV "
            f"pool ({r.page_size}-token pages, {r.page_bytes / 2**20:.1f} MiB each) in 90 % of what is left; decode "
            f"({r.max_len:,}-token window) and a {r.extend_tokens:,}-token text extend (one `rollout.prefill_chunk` piece) compiled for one host's "
            "chips, their workspace (memory beyond their arguments) from the buffer assignment, checked against the "
            "10 % kept free. Traced with the target's attention kernels: on TPU the paged prefix kernel (`model/"
            "paged_kernel.py`) reads each slot's filled pages in place ('Pallas kernels in decode': its calls in the "
            "compiled program; the scanned layers make it one). 'Mean tokens per slot': the average cached length per slot the pool sustains with "
            "every slot busy; past it slots wait for pages (continuous batching refills as episodes end).\n"
            f"- Reproduce: `mini-o3 plan --config {config_name} --rollout{targets} --write-results`\n\n"
            f"{format_rollout_rows(rows)}\n{end}")
    write_section(path, begin, end, body)
