"""Checkpoints in and out: HF safetensors <-> our params <-> Orbax.

* `load_hf(dir)` reads a HF Qwen2.5-VL checkpoint (one file or sharded; hub key layout
  `model.layers.*`/`visual.*` or the transformers 4.52+ in-memory layout
  `model.language_model.*`/`model.visual.*`) tensor by tensor from memory-mapped files straight
  into (optionally sharded) device arrays. A sharded load reads only each device's slice.
* `save_hf(model, dir)` writes a transformers/vLLM-loadable directory (config.json, safetensors
  shards + index), pulling one layer at a time from the device.
* `save_orbax` / `load_orbax` store our native format; `load_model(path)` accepts either.

Every mismatch (missing, unexpected or mis-shaped tensors) is collected and raised as one error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mini_o3_jax import storage
from mini_o3_jax.atomic_io import replace_dir, swap_into, temporary_sibling, write_json
from mini_o3_jax.errors import CheckpointError, CorruptCheckpointError
from mini_o3_jax.integrity import changed_arrays, quiet_closed_loop_noise, read_error_summary, state_checksums
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.qwen2_5_vl import DTYPES, Qwen25VL
from mini_o3_jax.model.safetensors_io import SafetensorsDir, iter_shards, write_safetensors
from mini_o3_jax.parallel.hosts import barrier, broadcast, is_main
from mini_o3_jax.parallel.rules import DEFAULT_RULES, Rules, state_shardings

# Files copied along with weights so that a converted/exported directory stays self-contained.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "generation_config.json",
    "agent.json",  # the environment a model was trained with (mini_o3_jax.agent.settings)
)
_BUFFERS = re.compile(r".*(rotary_emb|rotary_pos_emb)\.inv_freq$")
_NEW_LAYOUT = ((re.compile(r"^model\.language_model\."), "model."), (re.compile(r"^model\.visual\."), "visual."))


def canonical_key(key: str) -> str:
    """Map the transformers 4.52+ in-memory names onto the published hub names."""
    for pattern, repl in _NEW_LAYOUT:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one of our parameters relates to one HF tensor (per layer if `layers`)."""

    path: tuple[str, ...]
    hf: str  # hub key; "{i}" is the layer index for stacked params
    hf_shape: tuple[int, ...]  # per layer
    ours: tuple[int, ...]  # per layer
    linear: bool  # HF (out, in...) -> ours (in, out...) transpose; else a plain reshape
    layers: int | None = None

    def to_ours(self, w: np.ndarray) -> np.ndarray:
        if self.linear:
            return w.reshape(self.hf_shape[0], -1).T.reshape(self.ours)
        return w.reshape(self.ours)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        if self.linear:
            out = self.hf_shape[0]
            return a.reshape(-1, out).T.reshape(self.hf_shape)
        return a.reshape(self.hf_shape)

    def hf_keys(self) -> list[str]:
        return [self.hf] if self.layers is None else [self.hf.format(i=i) for i in range(self.layers)]


def weight_rules(cfg: ModelConfig) -> list[Rule]:
    """The complete HF <-> ours mapping for a config."""
    v, t = cfg.vision, cfg.text
    d, f, h, hd, nv = v.hidden_size, v.intermediate_size, v.num_heads, v.head_dim, v.depth
    u = v.merge_unit
    vis = ("visual", "blocks")
    rules = [
        Rule(("visual", "patch_embed"), "visual.patch_embed.proj.weight",
             (d, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size), (v.patch_dim, d), True),
        Rule(vis + ("norm1",), "visual.blocks.{i}.norm1.weight", (d,), (d,), False, nv),
        Rule(vis + ("qkv",), "visual.blocks.{i}.attn.qkv.weight", (3 * d, d), (d, 3, h, hd), True, nv),
        Rule(vis + ("qkv_bias",), "visual.blocks.{i}.attn.qkv.bias", (3 * d,), (3, h, hd), False, nv),
        Rule(vis + ("proj",), "visual.blocks.{i}.attn.proj.weight", (d, d), (h, hd, d), True, nv),
        Rule(vis + ("proj_bias",), "visual.blocks.{i}.attn.proj.bias", (d,), (d,), False, nv),
        Rule(vis + ("norm2",), "visual.blocks.{i}.norm2.weight", (d,), (d,), False, nv),
        Rule(vis + ("gate",), "visual.blocks.{i}.mlp.gate_proj.weight", (f, d), (d, f), True, nv),
        Rule(vis + ("gate_bias",), "visual.blocks.{i}.mlp.gate_proj.bias", (f,), (f,), False, nv),
        Rule(vis + ("up",), "visual.blocks.{i}.mlp.up_proj.weight", (f, d), (d, f), True, nv),
        Rule(vis + ("up_bias",), "visual.blocks.{i}.mlp.up_proj.bias", (f,), (f,), False, nv),
        Rule(vis + ("down",), "visual.blocks.{i}.mlp.down_proj.weight", (d, f), (f, d), True, nv),
        Rule(vis + ("down_bias",), "visual.blocks.{i}.mlp.down_proj.bias", (d,), (d,), False, nv),
        Rule(("visual", "merger", "norm"), "visual.merger.ln_q.weight", (d,), (d,), False),
        Rule(("visual", "merger", "fc1"), "visual.merger.mlp.0.weight", (u * d, u * d), (u * d, u * d), True),
        Rule(("visual", "merger", "fc1_bias"), "visual.merger.mlp.0.bias", (u * d,), (u * d,), False),
        Rule(("visual", "merger", "fc2"), "visual.merger.mlp.2.weight",
             (v.out_hidden_size, u * d), (u * d, v.out_hidden_size), True),
        Rule(("visual", "merger", "fc2_bias"), "visual.merger.mlp.2.bias", (v.out_hidden_size,),
             (v.out_hidden_size,), False),
    ]
    D, F, H, KV, HD, N = (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads,
                          t.head_dim, t.num_hidden_layers)
    lay = ("text", "layers")
    rules += [
        Rule(("text", "embed"), "model.embed_tokens.weight", (t.vocab_size, D), (t.vocab_size, D), False),
        Rule(lay + ("input_norm",), "model.layers.{i}.input_layernorm.weight", (D,), (D,), False, N),
        Rule(lay + ("q",), "model.layers.{i}.self_attn.q_proj.weight", (H * HD, D), (D, H, HD), True, N),
        Rule(lay + ("q_bias",), "model.layers.{i}.self_attn.q_proj.bias", (H * HD,), (H, HD), False, N),
        Rule(lay + ("k",), "model.layers.{i}.self_attn.k_proj.weight", (KV * HD, D), (D, KV, HD), True, N),
        Rule(lay + ("k_bias",), "model.layers.{i}.self_attn.k_proj.bias", (KV * HD,), (KV, HD), False, N),
        Rule(lay + ("v",), "model.layers.{i}.self_attn.v_proj.weight", (KV * HD, D), (D, KV, HD), True, N),
        Rule(lay + ("v_bias",), "model.layers.{i}.self_attn.v_proj.bias", (KV * HD,), (KV, HD), False, N),
        Rule(lay + ("o",), "model.layers.{i}.self_attn.o_proj.weight", (D, H * HD), (H, HD, D), True, N),
        Rule(lay + ("post_norm",), "model.layers.{i}.post_attention_layernorm.weight", (D,), (D,), False, N),
        Rule(lay + ("gate",), "model.layers.{i}.mlp.gate_proj.weight", (F, D), (D, F), True, N),
        Rule(lay + ("up",), "model.layers.{i}.mlp.up_proj.weight", (F, D), (D, F), True, N),
        Rule(lay + ("down",), "model.layers.{i}.mlp.down_proj.weight", (D, F), (F, D), True, N),
        Rule(("text", "norm"), "model.norm.weight", (D,), (D,), False),
    ]
    if not t.tie_word_embeddings:
        rules.append(Rule(("text", "lm_head"), "lm_head.weight", (t.vocab_size, D), (D, t.vocab_size), True))
    return rules


# ----------------------------------------------------------------------------- HF -> ours
def _check(rules: list[Rule], ckpt: SafetensorsDir, keymap: dict[str, str], cfg: ModelConfig) -> None:
    expected = {k: r.hf_shape for r in rules for k in r.hf_keys()}
    missing = sorted(k for k in expected if k not in keymap)
    optional = {"lm_head.weight"} if cfg.text.tie_word_embeddings else set()
    unexpected = sorted(k for k in keymap if k not in expected and k not in optional and not _BUFFERS.match(k))
    wrong = sorted(
        f"{keymap[k]}: {tuple(ckpt.shape(keymap[k]))} (expected {shape})"
        for k, shape in expected.items()
        if k in keymap and tuple(ckpt.shape(keymap[k])) != tuple(shape)
    )
    if missing or unexpected or wrong:
        def listing(title, items):
            if not items:
                return ""
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:20]) + more

        raise CheckpointError(
            f"{ckpt.path}: checkpoint does not match the Qwen2.5-VL config "
            f"({cfg.text.num_hidden_layers} text layers, hidden {cfg.text.hidden_size}, vocab {cfg.text.vocab_size}, "
            f"{cfg.vision.depth} vision blocks)"
            + listing("missing tensors", missing)
            + listing("unexpected tensors", unexpected)
            + listing("wrong shapes", wrong)
        )


def _materialise(rule: Rule, ckpt: SafetensorsDir, keymap: dict[str, str], dtype, index=None) -> np.ndarray:
    """Our array for `rule` (or its `index` slice), built one HF tensor at a time."""
    np_dtype = np.dtype(dtype)
    if rule.layers is None:
        arr = rule.to_ours(ckpt.get(keymap[rule.hf]))
        return np.asarray(arr[index] if index is not None else arr, dtype=np_dtype)
    lsl, rest = (index[0], index[1:]) if index is not None else (slice(None), ())
    layers = range(rule.layers)[lsl]
    full = (rule.layers,) + rule.ours
    out_shape = (len(layers),) + tuple(len(range(n)[s]) for n, s in zip(full[1:], rest)) + full[1 + len(rest):]
    out = np.empty(out_shape, dtype=np_dtype)
    for j, i in enumerate(layers):
        w = rule.to_ours(ckpt.get(keymap[rule.hf.format(i=i)]))
        out[j] = w[tuple(rest)] if rest else w
    return out


def load_hf(
    path: str | os.PathLike,
    *,
    dtype: str | jnp.dtype | None = None,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    remat: str = "none",
    unroll: bool = False,
) -> Qwen25VL:
    """Load a HF Qwen2.5-VL checkpoint directory into a `Qwen25VL` (sharded over `mesh` if given).

    `dtype` defaults to the checkpoint's own (`torch_dtype`/`dtype` in config.json, else bf16).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a HF checkpoint with config.json + *.safetensors)")
    cfg = ModelConfig.from_json_file(path)
    ckpt = SafetensorsDir(path)
    keymap: dict[str, str] = {}
    for key in ckpt.keys():
        keymap.setdefault(canonical_key(key), key)
    wrules = weight_rules(cfg)
    _check(wrules, ckpt, keymap, cfg)
    if dtype is None:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        dtype = raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"
        dtype = dtype if dtype in DTYPES else "bfloat16"
    jdtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, dtype=jdtype, rngs=nnx.Rngs(0), remat=remat, unroll=unroll))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    shardings = state_shardings(state, mesh, rules) if mesh is not None else None
    for rule in wrules:
        target = _get(pure, rule.path)
        if mesh is None:
            value = jax.device_put(_materialise(rule, ckpt, keymap, jdtype))
        else:
            value = jax.make_array_from_callback(
                target.shape, _get(shardings, rule.path),
                lambda idx, rule=rule: _materialise(rule, ckpt, keymap, jdtype, idx),
            )
        _set(pure, rule.path, value)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _get(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


# ----------------------------------------------------------------------------- ours -> HF
def hf_tensors(model: Qwen25VL) -> Iterator[tuple[str, Rule, int | None]]:
    for rule in weight_rules(model.config):
        if rule.layers is None:
            yield rule.hf, rule, None
        else:
            for i in range(rule.layers):
                yield rule.hf.format(i=i), rule, i


def save_hf(
    model: Qwen25VL,
    path: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    max_shard_bytes: int = 4 * 1024**3,
    side_files_from: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Write a HF-loadable Qwen2.5-VL directory (hub key layout) from `model`."""
    path = os.path.expanduser(os.fspath(path))
    # The export is written whole into a temporary sibling and renamed into place: a failure or a kill
    # half-way leaves the previous export in `path` untouched (and never a mix of old and new shards).
    with replace_dir(path) as tmp:
        _write_hf(model, str(tmp), dtype, max_shard_bytes, progress)
        if side_files_from is not None:
            copy_side_files(side_files_from, tmp)
        _carry_over(path, tmp, skip=_is_weight_file)
        if not os.path.exists(os.path.join(tmp, "generation_config.json")):
            cfg = model.config
            gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": [cfg.eos_token_id, cfg.bos_token_id],
                   "pad_token_id": cfg.bos_token_id}
            write_json(os.path.join(tmp, "generation_config.json"), gen)
    return path


def _write_hf(model: Qwen25VL, path: str, dtype: str, max_shard_bytes: int,
              progress: Callable[[str], None] | None) -> None:
    """Safetensors shards (+ index when sharded) and config.json into the empty directory `path`."""
    np_dtype = np.dtype(DTYPES[dtype])
    _, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    entries = {name: (rule, i) for name, rule, i in hf_tensors(model)}

    def produce(name: str) -> np.ndarray:
        rule, i = entries[name]
        arr = _get(pure, rule.path)
        arr = arr if i is None else arr[i]
        if progress:
            progress(name)
        return rule.to_hf(np.asarray(jax.device_get(arr)).astype(np.float32)).astype(np_dtype)

    specs = [(name, rule.hf_shape, np_dtype) for name, (rule, _) in entries.items()]
    sizes = {name: int(np.prod(shape)) * np_dtype.itemsize for name, shape, _ in specs}
    shards = iter_shards(((n, sizes[n]) for n, _, _ in specs), max_shard_bytes)
    spec_by_name = {s[0]: s for s in specs}
    if len(shards) == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), specs, produce)
    else:
        weight_map = {}
        for k, names in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(path, fname), [spec_by_name[n] for n in names], produce)
            weight_map.update({n: fname for n in names})
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        write_json(os.path.join(path, "model.safetensors.index.json"), index)
    write_json(os.path.join(path, "config.json"), model.config.to_hf_dict(torch_dtype=dtype))


def _is_weight_file(name: str) -> bool:
    return name.endswith(".safetensors") or name == "model.safetensors.index.json"


def _carry_over(old: str, new: str | os.PathLike, skip: Callable[[str], bool]) -> list[str]:
    """Copy the entries of the directory being replaced that the new write did not produce and `skip` does
    not claim (tokenizer files, notes, a checkpoint of the other format), so replacing loses nothing else."""
    if storage.is_uri(old):
        return _carry_over_uri(old, new, skip)
    if not os.path.isdir(old):
        return []
    carried = []
    for name in sorted(os.listdir(old)):
        src, dst = os.path.join(old, name), os.path.join(new, name)
        if skip(name) or os.path.lexists(dst) or name.startswith(".new."):  # .new.*: staging of older versions
            continue
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
        carried.append(name)
    return carried


def _carry_over_uri(old: str, new: str | os.PathLike, skip: Callable[[str], bool]) -> list[str]:
    """`_carry_over` on an object store: every object below a carried entry is copied."""
    old_dir, new_dir = storage.path(old), storage.path(new)
    if not old_dir.is_dir():
        return []
    carried = []
    for entry in sorted(old_dir.iterdir(), key=lambda p: p.name):
        if skip(entry.name) or (new_dir / entry.name).exists() or entry.name.startswith(".new."):
            continue
        for src in storage.files(entry) if entry.is_dir() else [entry]:
            rel = os.path.relpath(os.fspath(src), os.fspath(old_dir))
            (new_dir / rel).write_bytes(src.read_bytes())
        carried.append(entry.name)
    return carried


def copy_side_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy tokenizer/processor/generation files that exist in `src` into `dst`."""
    copied = []
    for name in SIDE_FILES:
        s, d = storage.join(storage.resolve(src), name), storage.join(storage.resolve(dst), name)
        if s != d and storage.path(s).exists():
            if storage.is_uri(s) or storage.is_uri(d):  # object stores: one read, one all-or-nothing write
                storage.path(d).write_bytes(storage.path(s).read_bytes())
            else:
                shutil.copyfile(s, d)
            copied.append(name)
    return copied


# ----------------------------------------------------------------------------- Orbax
ORBAX_META = "mini_o3.json"


def save_orbax(model: Qwen25VL, path: str | os.PathLike, side_files_from: str | os.PathLike | None = None) -> str:
    """Save params with Orbax next to `mini_o3.json` (the model config, file sizes and array checksums) and
    tokenizer files.

    The checkpoint is written whole into a temporary sibling directory and renamed into place, so a kill
    mid-write leaves any previous checkpoint at `path` intact. Files of the old directory that this save does
    not write (tokenizer files, notes) are carried over. Multi-host: every host writes its shards into the one
    temporary directory process 0 names; process 0 alone writes the small files and swaps it into place."""
    import secrets

    import orbax.checkpoint as ocp

    path = storage.require_backend(path, "checkpoint path")
    pure = nnx.to_pure_dict(nnx.split(model)[1])
    checksums = state_checksums(pure)  # on every host: computed on the devices
    token = broadcast(secrets.randbits(62))  # process 0's: the directory every host writes into
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{token:016x}")
    try:
        if is_main():
            temporary_sibling(path, os.path.basename(tmp))
        barrier("save_orbax:created")
        params_dir = os.path.join(tmp, "params")
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(params_dir, pure)
        ckptr.wait_until_finished()
        if is_main():
            meta = {"config": model.config.to_config_dict(), "dtype": jnp.dtype(model.dtype).name, "format": 1,
                    "files": _file_sizes(params_dir), "checksums": checksums}
            write_json(os.path.join(tmp, ORBAX_META), meta)
            if side_files_from is not None:
                copy_side_files(side_files_from, tmp)
            _carry_over(path, tmp, skip=lambda name: name in ("params", ORBAX_META))
            swap_into(tmp, path)
    except BaseException:
        if is_main():
            with contextlib.suppress(OSError):
                storage.path(tmp).rmtree(missing_ok=True)
        raise
    barrier("save_orbax:done")
    return path


def _file_sizes(directory: str) -> dict[str, int]:
    """{path relative to `directory`: size} of every file below it (a local directory or an object-store prefix)."""
    base = os.fspath(storage.path(directory))
    return dict(sorted((os.path.relpath(os.fspath(f), base), f.stat().length) for f in storage.files(directory)))


def _check_files(params_dir: str, expected: dict[str, int]) -> None:
    """Name the first missing or resized params file before Orbax trips over it with a TensorStore error."""

    for rel, size in expected.items():
        full = storage.join(params_dir, rel)
        try:
            stat = storage.path(full).stat()  # one request on a bucket
            actual = None if stat.is_directory else stat.length
        except FileNotFoundError:
            actual = None
        if actual is None:
            raise CorruptCheckpointError(f"{full}: missing (the checkpoint was written with {len(expected)} files "
                                         "under params/; re-run `mini-o3 convert` or restore a copy)")
        if actual != size:
            what = "truncated" if actual < size else "has grown"
            raise CorruptCheckpointError(f"{full}: {what}: {actual} bytes, written as {size} "
                                         "(re-run `mini-o3 convert` or restore a copy)")


def load_orbax(
    path: str | os.PathLike,
    *,
    dtype: str | jnp.dtype | None = None,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    remat: str = "none",
    unroll: bool = False,
) -> Qwen25VL:
    """Restore a `save_orbax` checkpoint, resharding onto `mesh` (or the default device).

    Damaged files are one `CorruptCheckpointError` naming the file (missing/resized), the Orbax read error
    (unreadable data) or the arrays whose contents fail the checksums written at save time (altered bytes)."""
    import orbax.checkpoint as ocp


    path = storage.require_backend(path, "checkpoint path")
    meta_path = storage.join(path, ORBAX_META)
    if not storage.path(meta_path).exists():
        raise CheckpointError(f"{path}: no {ORBAX_META} (not a mini_o3_jax Orbax checkpoint)")
    try:
        meta = json.loads(storage.path(meta_path).read_text(encoding="utf-8"))
        cfg = ModelConfig.from_config_dict(meta["config"])
        stored = DTYPES[meta["dtype"]]
        files, checksums = dict(meta.get("files") or {}), dict(meta.get("checksums") or {})
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{meta_path}: expected JSON with 'config' (model config) and 'dtype' ({type(e).__name__}: {e})"
        ) from None
    params_dir = storage.join(path, "params")
    if not storage.path(params_dir).is_dir():
        raise CheckpointError(f"{params_dir}: missing: cannot restore Orbax params")
    _check_files(params_dir, files)
    jdtype = stored if dtype is None else (DTYPES[dtype] if isinstance(dtype, str) else dtype)
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, dtype=stored, rngs=nnx.Rngs(0), remat=remat, unroll=unroll))
    graphdef, state = nnx.split(abstract)
    target = nnx.to_pure_dict(state)
    if mesh is not None:
        shardings = state_shardings(state, mesh, rules)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
    quiet_closed_loop_noise()
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir, target)
    except Exception as e:  # Orbax raises bare Exception for failed array reads
        raise CorruptCheckpointError(f"{params_dir}: cannot restore Orbax params ({read_error_summary(e)})") from None
    changed = changed_arrays(checksums, restored)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise CorruptCheckpointError(
            f"{params_dir}: corrupt: {', '.join(changed[:3])}{more} read back different from what was saved "
            "(checksum mismatch: a data file was altered; re-run `mini-o3 convert` or restore a copy)"
        )
    if jdtype != stored:
        restored = jax.tree.map(lambda x: x.astype(jdtype), restored)
        abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, dtype=jdtype, rngs=nnx.Rngs(0), remat=remat, unroll=unroll))
        graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def load_model(path: str | os.PathLike, **kwargs) -> Qwen25VL:
    """Load either checkpoint format: an Orbax dir from `mini-o3 convert` or a HF directory (`~` expanded)."""
    path = storage.resolve(path)
    if storage.is_uri(path) or os.path.exists(os.path.join(path, ORBAX_META)):  # HF checkpoints are read locally
        return load_orbax(path, **kwargs)
    return load_hf(path, **kwargs)
