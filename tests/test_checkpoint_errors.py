"""Bad checkpoints and configs fail with ONE clear error that names the file/key and the expectation.

A tiny HF checkpoint is saved once per module; every test corrupts its own copy under tmp_path.
Also covers the happy paths that sit next to the error paths: both config.json layouts, a tied
checkpoint that still ships `lm_head.weight`, `load_model` format detection and re-exporting into a
directory that already holds an export.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import jax
import numpy as np
import pytest
from flax import nnx

from mini_o3_jax.errors import CheckpointError, ConfigError, MiniO3Error
from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.qwen2_5_vl import forward_logits
from mini_o3_jax.model.weights import load_hf, load_model, load_orbax, save_hf, save_orbax
from mini_o3_jax.processing.inputs import build_inputs
from tests.hf_reference import tiny_hf_model

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"  # (64, 64): heads * head_dim x hidden
GATE = "model.layers.1.mlp.gate_proj.weight"  # (128, 64): intermediate x hidden
UP_BIAS = "visual.blocks.1.mlp.up_proj.bias"
EXTRA = "model.layers.99.foo.weight"


# ----------------------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="module")
def hf_untied():
    return tiny_hf_model(tied=False, seed=0)


@pytest.fixture(scope="module")
def src(hf_untied, tmp_path_factory):
    """A pristine single-file checkpoint (never modified)."""
    d = str(tmp_path_factory.mktemp("src"))
    hf_untied.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def src_sharded(hf_untied, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("src_sharded"))
    hf_untied.save_pretrained(d, max_shard_size="8MB")
    return d


@pytest.fixture(scope="module")
def ref_model(src):
    return load_hf(src, dtype="float32")


@pytest.fixture
def ckpt(src, tmp_path):
    """A private copy of the checkpoint, free to corrupt."""
    d = tmp_path / "ckpt"
    shutil.copytree(src, d)
    return d


def rewrite_tensors(d, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = os.path.join(d, "model.safetensors")
    sd = load_file(path)
    edit(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"format": "pt"})


def edit_config(d, edit) -> None:
    """Rewrite config.json after `edit(cfg_dict)` mutated it in place."""
    path = os.path.join(d, "config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)


def raises_one(exc_type, fn, *args, **kwargs) -> str:
    """Call `fn`, require exactly `exc_type` (one of ours, a ValueError) and return its message."""
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, (MiniO3Error, ValueError))
    return str(info.value)


def pure_params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model))


def assert_same_params(a, b) -> None:
    pa, pb = pure_params(a), pure_params(b)
    la, lb = jax.tree_util.tree_leaves_with_path(pa), jax.tree_util.tree_leaves_with_path(pb)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y)),
                                      err_msg=jax.tree_util.keystr(path))


def tiny_logits(model) -> np.ndarray:
    """Logits for a short sequence with one 4x4-patch image (no tokenizer needed)."""
    cfg = model.config
    ids = np.array([151644, 872, 198, cfg.vision_start_token_id] + [cfg.image_token_id] * 4
                   + [cfg.vision_end_token_id, 3838, 374, 419, 30], np.int64)
    grid = np.array([[1, 4, 4]], np.int64)
    pixels = np.random.default_rng(0).normal(size=(16, cfg.vision.patch_dim)).astype(np.float32)
    batch = build_inputs([ids], [pixels], [grid], cfg)
    return np.asarray(forward_logits(model, batch.text, batch.vision))[0, : len(ids)]


# ----------------------------------------------------------------------------- directory layout
def test_directory_does_not_exist(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    msg = raises_one(CheckpointError, load_hf, missing, dtype="float32")
    assert str(missing) in msg and "not a directory" in msg and "config.json" in msg


def test_config_but_no_safetensors(ckpt):
    os.remove(ckpt / "model.safetensors")
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert str(ckpt) in msg and "*.safetensors" in msg


def test_missing_config_json(ckpt):
    os.remove(ckpt / "config.json")
    msg = raises_one(ConfigError, load_hf, ckpt, dtype="float32")
    assert os.path.join(str(ckpt), "config.json") in msg and "not found" in msg


# ----------------------------------------------------------------------------- config.json
def test_config_not_valid_json(ckpt):
    (ckpt / "config.json").write_text('{"model_type": "qwen2_5_vl", ')
    msg = raises_one(ConfigError, load_hf, ckpt, dtype="float32")
    assert os.path.join(str(ckpt), "config.json") in msg and "not valid JSON" in msg


def test_config_mrope_section_wrong_sum(ckpt):
    def edit(c):
        c["text_config"]["rope_parameters"]["mrope_section"] = [2, 3, 4]  # sums to 9, head_dim/2 = 8

    edit_config(ckpt, edit)
    msg = raises_one(ConfigError, load_hf, ckpt, dtype="float32")
    assert "config.json" in msg and "mrope_section" in msg and "[2, 3, 4]" in msg
    assert "head_dim/2 = 8" in msg


def test_config_missing_vision_config(ckpt):
    edit_config(ckpt, lambda c: c.pop("vision_config"))
    msg = raises_one(ConfigError, load_hf, ckpt, dtype="float32")
    assert "config.json" in msg and "vision_config" in msg


def test_config_wrong_model_type(ckpt):
    edit_config(ckpt, lambda c: c.update(model_type="qwen2_vl"))
    msg = raises_one(ConfigError, load_hf, ckpt, dtype="float32")
    assert "config.json" in msg and "'qwen2_vl'" in msg and "expected 'qwen2_5_vl'" in msg


def test_config_not_an_object():
    msg = raises_one(ConfigError, ModelConfig.from_hf_dict, [1, 2], source="x/config.json")
    assert "x/config.json" in msg and "JSON object" in msg


@pytest.mark.parametrize("where,field,value", [("text_config", "hidden_size", "64x"),
                                               ("vision_config", "depth", None)])
def test_config_non_numeric_field_names_field(src, where, field, value):
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        d = json.load(f)
    d[where][field] = value
    msg = raises_one(ConfigError, ModelConfig.from_hf_dict, d, source="ckpt/config.json")
    assert "ckpt/config.json" in msg and field in msg


def test_nested_and_flat_config_layouts_agree(src):
    """transformers-5 nested layout (text_config + rope_parameters) == flat hub layout (rope_scaling)."""
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        nested = json.load(f)
    assert "text_config" in nested and "rope_parameters" in nested["text_config"]
    t, v = nested["text_config"], nested["vision_config"]
    flat = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **{k: t[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                             "max_position_embeddings", "hidden_act", "bos_token_id", "eos_token_id")},
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_config": {
            "depth": v["depth"], "hidden_act": "silu", "hidden_size": v["hidden_size"],
            "intermediate_size": v["intermediate_size"], "num_heads": v["num_heads"], "in_chans": 3,
            "out_hidden_size": v["out_hidden_size"], "patch_size": 14, "spatial_patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": v["fullatt_block_indexes"], "tokens_per_second": v["tokens_per_second"],
        },
    }
    a = ModelConfig.from_hf_dict(nested)
    b = ModelConfig.from_hf_dict(flat)
    assert a == b
    assert a.text.mrope_section == (2, 3, 3) and a.text.rope_theta == 1e6 and a.text.head_dim == 16
    assert a.text.num_key_value_heads == 2 and a.vision.depth == 3 and a.vision.fullatt_block_indexes == (1,)
    assert ModelConfig.from_hf_dict(a.to_hf_dict()) == a  # and our writer's (flat) layout reads back


# ----------------------------------------------------------------------------- truncated files
@pytest.mark.parametrize("cut", ["half", "last_bytes"])
def test_truncated_safetensors(ckpt, cut):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    keep = len(data) // 2 if cut == "half" else len(data) - 5
    assert keep > 8 + n  # the header itself is intact in both cases: only tensor data is short
    path.write_bytes(data[:keep])
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert str(path) in msg and "truncated" in msg
    assert f"file has {keep}" in msg and f"need {len(data)} bytes" in msg


def test_truncated_inside_header(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert str(path) in msg and "truncated" in msg


def test_truncated_shard_of_sharded_checkpoint(src_sharded, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(src_sharded, d)
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-3])
    msg = raises_one(CheckpointError, load_hf, d, dtype="float32")
    assert str(shard) in msg and "truncated" in msg


def test_header_inconsistent_with_data_offsets(ckpt):
    path = ckpt / "model.safetensors"
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].decode()
    entry = header.index('"model.norm.weight"')
    fixed = header[:entry] + header[entry:].replace('"F32"', '"F16"', 1)  # 64 x F16 needs 128 of 256 bytes
    assert len(fixed) == n
    raw[8:8 + n] = fixed.encode()
    path.write_bytes(bytes(raw))
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert str(path) in msg and "model.norm.weight" in msg


# ----------------------------------------------------------------------------- sharded index
def test_sharded_index_names_deleted_shard(src_sharded, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(src_sharded, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    os.remove(d / shards[1])
    msg = raises_one(CheckpointError, load_hf, d, dtype="float32")
    assert str(d) in msg and "model.safetensors.index.json" in msg and shards[1] in msg
    assert shards[0] not in msg.replace(shards[1], "")


def test_sharded_index_not_json(src_sharded, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(src_sharded, d)
    (d / "model.safetensors.index.json").write_text("{")
    msg = raises_one(CheckpointError, load_hf, d, dtype="float32")
    assert "model.safetensors.index.json" in msg and "weight_map" in msg


# ----------------------------------------------------------------------------- tensor mismatches
@pytest.mark.parametrize("how", ["drop_row", "transpose"])
def test_wrong_shape(ckpt, how):
    key, actual = (Q_PROJ, (63, 64)) if how == "drop_row" else (GATE, (64, 128))
    expected = (64, 64) if how == "drop_row" else (128, 64)

    def edit(sd):
        sd[key] = sd[key][:-1].clone() if how == "drop_row" else sd[key].T.clone()

    rewrite_tensors(ckpt, edit)
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert str(ckpt) in msg and "wrong shapes (1)" in msg
    assert f"{key}: {actual} (expected {expected})" in msg
    assert "missing tensors" not in msg and "unexpected tensors" not in msg


def test_missing_tensor(ckpt):
    rewrite_tensors(ckpt, lambda sd: sd.pop(UP_BIAS))
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert "missing tensors (1)" in msg and UP_BIAS in msg
    assert msg.index("missing tensors") < msg.index(UP_BIAS)


def test_unexpected_tensor(ckpt):
    import torch

    rewrite_tensors(ckpt, lambda sd: sd.update({EXTRA: torch.zeros(3, 4)}))
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert "unexpected tensors (1)" in msg and EXTRA in msg
    assert "missing tensors" not in msg


def test_several_problems_reported_together(ckpt):
    import torch

    def edit(sd):
        sd.pop(UP_BIAS)
        sd[Q_PROJ] = sd[Q_PROJ][:-1].clone()
        sd[EXTRA] = torch.zeros(2)

    rewrite_tensors(ckpt, edit)
    with pytest.raises(CheckpointError) as info:
        load_hf(ckpt, dtype="float32")
    msg = str(info.value)
    for section, item in [("missing tensors (1)", UP_BIAS), ("unexpected tensors (1)", EXTRA),
                          ("wrong shapes (1)", f"{Q_PROJ}: (63, 64) (expected (64, 64))")]:
        assert section in msg and item in msg
        assert msg.index(section) < msg.index(item)


def test_many_problems_are_capped_but_counted(ckpt):
    rewrite_tensors(ckpt, lambda sd: [sd.pop(k) for k in [k for k in sd if k.startswith("visual.blocks.")]])
    msg = raises_one(CheckpointError, load_hf, ckpt, dtype="float32")
    assert "missing tensors (36)" in msg and "... and 16 more" in msg  # 3 blocks x 12 tensors


def test_tied_checkpoint_with_lm_head_is_accepted(tmp_path):
    hf = tiny_hf_model(tied=True, seed=1)
    plain, extra = tmp_path / "tied", tmp_path / "tied_with_head"
    hf.save_pretrained(plain)
    shutil.copytree(plain, extra)

    def add_head(sd):
        assert "lm_head.weight" not in sd
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()

    rewrite_tensors(extra, add_head)
    a, b = load_hf(plain, dtype="float32"), load_hf(extra, dtype="float32")
    assert a.config.text.tie_word_embeddings and not hasattr(b.text, "lm_head")
    assert_same_params(a, b)


# ----------------------------------------------------------------------------- Orbax / load_model
def test_load_orbax_on_hf_directory(src, tmp_path):
    msg = raises_one(CheckpointError, load_orbax, src)
    assert os.path.abspath(src) in msg and "mini_o3.json" in msg and "Orbax" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = raises_one(CheckpointError, load_orbax, empty)
    assert str(empty) in msg and "Orbax" in msg


def test_load_orbax_params_missing(ref_model, tmp_path):
    path = save_orbax(ref_model, tmp_path / "orbax")
    shutil.rmtree(os.path.join(path, "params"))
    msg = raises_one(CheckpointError, load_orbax, path)
    assert path in msg and "Orbax params" in msg


def test_load_orbax_corrupt_meta(tmp_path):
    d = tmp_path / "orbax"
    d.mkdir()
    (d / "mini_o3.json").write_text('{"config": ')
    msg = raises_one(CheckpointError, load_orbax, d)
    assert "mini_o3.json" in msg


def test_load_model_detects_format(src, ref_model, tmp_path):
    orbax_dir = save_orbax(ref_model, tmp_path / "orbax")
    from_hf = load_model(src, dtype="float32")
    from_orbax = load_model(orbax_dir)
    assert from_orbax.dtype == from_hf.dtype == np.float32
    assert_same_params(from_hf, from_orbax)
    np.testing.assert_array_equal(tiny_logits(from_orbax), tiny_logits(from_hf))


def test_load_model_on_empty_directory(tmp_path):
    with pytest.raises(MiniO3Error) as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)


# ----------------------------------------------------------------------------- re-export
@pytest.fixture(scope="module")
def other_model(src):
    """A second model with the same config and different weights."""
    model = load_hf(src, dtype="float32")
    graphdef, state = nnx.split(model)
    pure = jax.tree.map(lambda x: -0.5 * x + 0.01, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_save_hf_over_older_export(ref_model, other_model, tmp_path):
    out = tmp_path / "export"
    save_hf(ref_model, out, dtype="float32", max_shard_bytes=16 * 1024**2)  # sharded first export
    assert (out / "model.safetensors.index.json").exists()
    assert_same_params(load_hf(out, dtype="float32"), ref_model)

    save_hf(other_model, out, dtype="float32")  # single-file export on top of it
    names = listing(out)
    assert "model.safetensors" in names and "model.safetensors.index.json" not in names
    assert not [n for n in names if n.startswith("model-")], names  # no stale shards
    assert not [n for n in names if n.endswith(".tmp")], names
    assert_same_params(load_hf(out, dtype="float32"), other_model)

    save_hf(ref_model, out, dtype="float32", max_shard_bytes=16 * 1024**2)  # and back to sharded
    names = listing(out)
    assert "model.safetensors" not in names and not [n for n in names if n.endswith(".tmp")], names
    assert_same_params(load_hf(out, dtype="float32"), ref_model)


def test_interrupted_save_hf_keeps_older_export(ref_model, other_model, tmp_path):
    out = tmp_path / "export"
    save_hf(ref_model, out, dtype="float32")
    seen = []

    def fail_midway(name):
        seen.append(name)
        if len(seen) == 5:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_hf(other_model, out, dtype="float32", progress=fail_midway)
    assert_same_params(load_hf(out, dtype="float32"), ref_model)  # today: CheckpointError, no safetensors
    assert not [n for n in listing(out) if n.endswith(".tmp")], listing(out)
