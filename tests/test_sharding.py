"""The same model code runs sharded: 8 fake CPU devices, a (data, fsdp, tensor) = (1, 4, 2) mesh.

Fake host devices must be configured before JAX initialises, so the sharded checks run once in a
subprocess that prints a JSON summary; the tests below assert on it. The rule table
(`logical_to_spec`) and `make_mesh` validation are unit-tested in process.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.parallel.mesh import AXES, make_mesh
from mini_o3_jax.parallel.rules import DEFAULT_RULES, logical_to_spec, rules_from_config
from tests.helpers import run_on_devices

LOGITS_TOL = 1e-5

SCRIPT = r'''
import json, os, sys, time
t0 = time.time()
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.qwen2_5_vl import forward_logits
from mini_o3_jax.model.weights import load_hf, load_orbax, save_orbax
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.parallel.rules import logical_to_spec
from mini_o3_jax.processing.inputs import build_inputs
from tests.hf_reference import hf_processor, tiny_hf_model

out = {"devices": len(jax.devices()), "platform": jax.devices()[0].platform}
tmp = sys.argv[1]  # a pytest tmp dir
d = os.path.join(tmp, "hf")
tiny_hf_model(tied=False, seed=0).save_pretrained(d)
ref = load_hf(d, dtype="float32")
mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
sh = load_hf(d, dtype="float32", mesh=mesh)
out["mesh"] = dict(mesh.shape)
try:  # 2 kv heads (and 2 vision heads) cannot split 4 ways: refused, not replicated
    load_hf(d, dtype="float32", mesh=make_mesh({"data": 1, "fsdp": 2, "tensor": 4}))
    out["heads_refused"] = None
except ConfigError as e:
    out["heads_refused"] = str(e)

def leaves(model):
    return jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))

def compare_params(a, b):
    la, lb = leaves(a), leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    bad = [jax.tree_util.keystr(p) for (p, x), (_, y) in zip(la, lb)
           if x.dtype != y.dtype or not np.array_equal(np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y)))]
    return len(la), bad

def describe(x):
    s = x.sharding
    return {"spec": [None if e is None else (list(e) if isinstance(e, tuple) else e) for e in s.spec]
            if isinstance(s, NamedSharding) else None,
            "kind": type(s).__name__, "shape": list(x.shape), "shard": list(s.shard_shape(x.shape)),
            "n_devices": len(s.device_set)}

params = {jax.tree_util.keystr(p): describe(x) for p, x in leaves(sh)}
out["params"] = params
out["n_params"], out["param_mismatch"] = compare_params(ref, sh)
out["unsharded_kinds"] = sorted({describe(x)["kind"] for _, x in leaves(ref)})

# ---- one image through the jitted forward, inputs replicated
proc = hf_processor()
rng = np.random.default_rng(0)
img = Image.fromarray(rng.integers(0, 256, (196, 252, 3), dtype=np.uint8))
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
enc = proc(text=[text], images=[img], return_tensors="np")
ids, pv, grid = enc["input_ids"][0], enc["pixel_values"], enc["image_grid_thw"]
n = len(ids)
batch = build_inputs([ids], [pv], [grid], ref.config)
l0 = np.asarray(forward_logits(ref, batch.text, batch.vision))[0, :n]
rep = NamedSharding(mesh, P())
y = forward_logits(sh, jax.device_put(batch.text, rep), jax.device_put(batch.vision, rep))
out["logits_n_devices"] = len(y.sharding.device_set)
l1 = np.asarray(y)[0, :n]
out["diff_replicated"] = float(np.abs(l1 - l0).max())
out["logits_absmax"] = float(np.abs(l0).max())

# ---- four sequences, the text batch sharded over ("data", "fsdp")
batch2 = build_inputs([ids] * 4, [pv] * 4, [grid] * 4, ref.config)
def batch_sharding(x):
    axes = ("batch", "length") if x.ndim == 2 else (None, "batch", "length")
    return NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh))
text2 = jax.tree.map(lambda x: jax.device_put(x, batch_sharding(x)), batch2.text)
out["batch_spec"] = describe(text2.input_ids)["spec"]
out["positions_spec"] = describe(text2.positions)["spec"]
y2 = np.asarray(forward_logits(sh, text2, jax.device_put(batch2.vision, rep)))
out["diff_batch_sharded"] = float(max(np.abs(y2[i, :n] - l0).max() for i in range(4)))

# ---- Orbax: save from the sharded model, restore onto another mesh and onto no mesh
orbax_dir = save_orbax(sh, os.path.join(tmp, "orbax"))
mesh8 = make_mesh({"fsdp": 8})
r8 = load_orbax(orbax_dir, mesh=mesh8)
out["orbax8_embed"] = describe(r8.text.embed[...])
out["orbax8_q"] = describe(r8.text.layers.q[...])
out["orbax8_mismatch"] = compare_params(ref, r8)[1]
rep8 = NamedSharding(mesh8, P())
out["diff_orbax8"] = float(np.abs(np.asarray(forward_logits(
    r8, jax.device_put(batch.text, rep8), jax.device_put(batch.vision, rep8)))[0, :n] - l0).max())
r0 = load_orbax(orbax_dir)
out["orbax0_embed"] = describe(r0.text.embed[...])
out["orbax0_mismatch"] = compare_params(ref, r0)[1]
out["diff_orbax0"] = float(np.abs(np.asarray(forward_logits(r0, batch.text, batch.vision))[0, :n] - l0).max())

# ---- make_mesh over the 8 real devices
out["mesh_fill"] = dict(make_mesh({"data": 2, "tensor": -1}).shape)
out["mesh_default"] = dict(make_mesh().shape)
errors = {}
for name, shape in [("indivisible", {"fsdp": 3, "tensor": -1}), ("too_few", {"fsdp": 4, "tensor": 4})]:
    try:
        make_mesh(shape)
        errors[name] = None
    except Exception as e:
        errors[name] = [type(e).__name__, str(e), isinstance(e, ConfigError)]
out["mesh_errors"] = errors
out["seconds"] = round(time.time() - t0, 1)
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return run_on_devices(SCRIPT, str(tmp_path_factory.mktemp("sharded")))


# ----------------------------------------------------------------------------- subprocess results
def test_eight_fake_devices(summary):
    assert summary["devices"] == 8 and summary["platform"] == "cpu"
    assert summary["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}


def test_parameters_really_sharded(summary):
    p = summary["params"]
    embed, q, k, o = (p[f"['text']{s}"] for s in ("['embed']", "['layers']['q']", "['layers']['k']",
                                                   "['layers']['o']"))
    assert embed["spec"] == ["tensor", "fsdp"]  # vocab over tensor, embed over fsdp
    assert embed["shape"] == [152064, 64] and embed["shard"] == [152064 // 2, 64 // 4]
    # q: (layers, embed, heads, head_dim) = (2, 64, 4, 16): embed over fsdp, heads over tensor
    assert q["spec"] == [None, "fsdp", "tensor", None]
    assert q["shard"] == [2, 16, 2, 16] and q["shape"] == [2, 64, 4, 16]
    assert o["spec"] == [None, "tensor", None, "fsdp"] and o["shard"] == [2, 2, 16, 16]
    assert k["spec"] == [None, "fsdp", "tensor", None] and k["shard"] == [2, 16, 1, 16]
    assert p["['text']['lm_head']"]["spec"] == ["fsdp", "tensor"]
    # 2 vision heads over 2-way tensor; the vision MLP is tensor-sharded
    assert p["['visual']['blocks']['qkv']"]["spec"] == [None, "fsdp", None, "tensor", None]
    assert p["['visual']['blocks']['up']"]["spec"] == [None, "fsdp", "tensor"]
    assert all(v["kind"] == "NamedSharding" and v["n_devices"] == 8 for v in p.values())
    assert sum(v["shard"] != v["shape"] for v in p.values()) >= len(p) - 3  # nearly everything is split


def test_heads_that_do_not_divide_the_tensor_axis_are_refused(summary):
    msg = summary["heads_refused"]
    assert msg is not None, "a (1, 2, 4) mesh with 2 kv heads loaded: heads were silently replicated"
    assert "2 kv heads do not divide over mesh axis tensor = 4" in msg and "text.layers.k" in msg


def test_sharded_parameters_equal_unsharded_bit_for_bit(summary):
    assert summary["n_params"] == len(summary["params"]) >= 30
    assert summary["param_mismatch"] == []
    assert summary["unsharded_kinds"] == ["SingleDeviceSharding"]


def test_sharded_forward_matches_unsharded(summary):
    assert summary["logits_n_devices"] == 8  # the forward really ran over the mesh
    assert summary["logits_absmax"] > 0.1
    assert summary["diff_replicated"] <= LOGITS_TOL, summary["diff_replicated"]


def test_batch_sharded_inputs(summary):
    assert summary["batch_spec"] == ["fsdp", None]  # size-1 `data` dropped
    assert summary["positions_spec"] == [None, "fsdp", None]
    assert summary["diff_batch_sharded"] <= LOGITS_TOL, summary["diff_batch_sharded"]


def test_orbax_restores_onto_another_mesh_and_no_mesh(summary):
    e8, q8 = summary["orbax8_embed"], summary["orbax8_q"]
    assert e8["spec"] == [None, "fsdp"] and e8["shard"] == [152064, 8] and e8["n_devices"] == 8
    assert q8["spec"] == [None, "fsdp", None, None] and q8["shard"] == [2, 8, 4, 16]
    assert summary["orbax8_mismatch"] == [] and summary["diff_orbax8"] <= LOGITS_TOL
    assert summary["orbax0_embed"]["kind"] == "SingleDeviceSharding"
    assert summary["orbax0_mismatch"] == [] and summary["diff_orbax0"] <= LOGITS_TOL


def test_make_mesh_on_eight_devices(summary):
    assert summary["mesh_fill"] == {"data": 2, "fsdp": 1, "tensor": 4}
    assert summary["mesh_default"] == {"data": 1, "fsdp": 8, "tensor": 1}
    name, msg, ours = summary["mesh_errors"]["indivisible"]
    assert ours and "8 devices" in msg and "not divisible by 3" in msg
    name, msg, ours = summary["mesh_errors"]["too_few"]
    assert ours and "needs 16 devices, have 8" in msg


# ----------------------------------------------------------------------------- logical_to_spec
def amesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), AXES)


def spec(axes, shape, mesh, rules=DEFAULT_RULES) -> PartitionSpec:
    return logical_to_spec(axes, shape, mesh, rules)


def test_spec_plain_mapping():
    m = amesh(2, 2, 4)
    assert spec(("layers", "embed", "heads", "head_dim"), (2, 64, 8, 16), m) == PartitionSpec(
        None, "fsdp", "tensor", None)
    assert spec(("batch", "length"), (8, 32), m) == PartitionSpec(("data", "fsdp"), None)
    assert spec(("vocab", "embed"), (1024, 64), m) == PartitionSpec("tensor", "fsdp")


def test_spec_divisibility_falls_back_to_replication():
    m = amesh(2, 2, 4)
    assert spec(("batch",), (2,), m) == PartitionSpec(None)  # 2 rows on data*fsdp = 4
    assert spec(("vocab", "embed"), (151936 + 2, 63), m) == PartitionSpec(None, None)
    # a fallback does not consume the mesh axis: a later dimension may still use it
    assert spec(("vocab", "mlp"), (6, 128), m) == PartitionSpec(None, "tensor")


@pytest.mark.parametrize("name,size,words", [("heads", 28, "28 heads"), ("kv_heads", 4, "4 kv heads"),
                                             ("vision_heads", 6, "6 vision heads")])
def test_heads_that_do_not_divide_are_a_config_error(name, size, words):
    # Qwen2.5-VL-7B: 28 heads, 4 kv heads; an 8-way tensor axis would copy every head to every device
    with pytest.raises(ConfigError) as info:
        spec((name, "head_dim"), (size, 128), amesh(1, 1, 8))
    assert f"{words} do not divide over mesh axis tensor = 8" in str(info.value)
    assert spec((name,), (size,), amesh(1, 8, 1)) == PartitionSpec(None)  # no tensor axis: nothing to refuse


def test_rules_from_config_overrides_and_refuses_unknown_names():
    rules = dict(rules_from_config({"act_length": "tensor", "embed": None, "mlp": ["fsdp", "tensor"]}))
    assert rules["act_length"] == "tensor" and rules["embed"] is None and rules["mlp"] == ("fsdp", "tensor")
    assert rules["heads"] == "tensor"  # the rest as DEFAULT_RULES
    assert spec(("act_batch", "act_length"), (4, 64), amesh(1, 4, 2), tuple(rules.items())) == PartitionSpec(
        "fsdp", "tensor")
    assert rules_from_config(None) == tuple(DEFAULT_RULES)
    with pytest.raises(ConfigError, match="sharding.embd: unknown logical axis"):
        rules_from_config({"embd": "fsdp"})
    with pytest.raises(ConfigError, match="'model' is not a mesh axis"):
        rules_from_config({"embed": "model"})


def test_spec_never_uses_a_mesh_axis_twice():
    m = amesh(1, 2, 4)
    assert spec(("embed", "embed"), (64, 64), m) == PartitionSpec("fsdp", None)
    assert spec(("mlp", "heads"), (128, 8), m) == PartitionSpec("tensor", None)
    assert spec(("batch", "embed"), (4, 64), m) == PartitionSpec("fsdp", None)
    s = spec(("merger_in", "merger_hidden", "embed", "vocab"), (64, 64, 64, 64), m)
    used = [a for e in s for a in ((e,) if isinstance(e, str) else (e or ()))]
    assert sorted(used) == ["fsdp", "tensor"] and len(used) == len(set(used))


def test_spec_drops_size_one_mesh_axes():
    m = amesh(1, 4, 1)
    assert spec(("batch", "length"), (8, 16), m) == PartitionSpec("fsdp", None)  # not ("data", "fsdp")
    assert spec(("vocab", "embed"), (1024, 64), m) == PartitionSpec(None, "fsdp")
    assert spec(("heads",), (3,), amesh(4, 1, 1)) == PartitionSpec(None)
    assert spec(("batch",), (8,), amesh(8, 1, 1)) == PartitionSpec("data")


def test_spec_unknown_or_unnamed_axes_replicate():
    m = amesh(2, 2, 2)
    assert spec((None, "no_such_axis", "length", "layers"), (4, 4, 4, 4), m) == PartitionSpec(None, None, None, None)
    custom = (("embed", ("fsdp", "tensor")), ("length", "data"))
    assert spec(("embed", "length"), (64, 6), m, custom) == PartitionSpec(("fsdp", "tensor"), "data")
    assert spec(("embed",), (6,), m, custom) == PartitionSpec(None)  # 6 % (2*2) != 0


def test_spec_on_a_real_single_device_mesh():
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), AXES)
    assert spec(("vocab", "embed"), (1024, 64), mesh) == PartitionSpec(None, None)
    assert spec(("batch", "length"), (8, 16), mesh) == PartitionSpec(None, None)


# ----------------------------------------------------------------------------- make_mesh
def test_make_mesh_single_device():
    mesh = make_mesh(devices=jax.devices()[:1])
    assert mesh.axis_names == AXES and dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh({"tensor": -1}, devices=jax.devices()[:1]).shape)["tensor"] == 1


def test_make_mesh_unknown_axis():
    with pytest.raises(ConfigError) as info:
        make_mesh({"model": 2, "fsdp": -1})
    assert "'model'" in str(info.value) and "data" in str(info.value) and "tensor" in str(info.value)


def test_make_mesh_two_wildcards():
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        make_mesh({"fsdp": -1, "tensor": -1})


def test_make_mesh_indivisible_device_count():
    # the checks run before any Mesh is built, so stand-in "devices" are enough to exercise them
    with pytest.raises(ConfigError, match="6 devices are not divisible by 4"):
        make_mesh({"tensor": 4, "fsdp": -1}, devices=np.arange(6))
    with pytest.raises(ConfigError, match="needs 4 devices, have 6"):
        make_mesh({"fsdp": 2, "tensor": 2}, devices=np.arange(6))


def test_make_mesh_zero_axis():
    with pytest.raises(ConfigError, match="fsdp"):
        make_mesh({"fsdp": 0, "tensor": -1}, devices=np.arange(8))
