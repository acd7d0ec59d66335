"""The rollout engine on 8 simulated devices (data 2 x fsdp 2 x tensor 2): weights in the trainer's layout move
once into the serving layout (whole over the 4 slot ways, split over `tensor`), the paged KV cache stays split
(pages over the slot ways, kv heads over `tensor`: asserted on the arrays' shardings), and every episode samples
exactly the tokens it does on one device. (The RL loop's case: a rollout from the trainer's sharded weights.)"""

from __future__ import annotations

import pytest

from tests.helpers import run_on_devices

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.data.records import Record
from mini_o3_jax.model.presets import model_config
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.parallel.mesh import make_mesh
from mini_o3_jax.parallel.rules import shard_state, state_shardings
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
from mini_o3_jax.rollout.sampler import Sampling
from tests.helpers import rand_image
from tests.hf_reference import qwen_tokenizer_dir

tok, proc = Tokenizer.from_pretrained(qwen_tokenizer_dir()), ImageProcessor()
env = EnvConfig(max_turns=2, max_context=1000, context_guard=200, min_pixels=3136, max_pixels=40000)
# one image size: one prompt shape, so the two runs compile few programs (sampled turns make the lengths ragged)
qs = [Record(benchmark="", doc_id="", image=rand_image(150, 160, i), problem=f"<image>\nQ{i}?", solution="",
             data_source="") for i in range(5)]
cfg = EngineConfig(slots=16, max_len=1024, decode_chunk=8, max_turn_tokens=8, sampling=Sampling(1.0), env=env,
                   page_size=16)
model = Qwen25VL(model_config("tiny"), rngs=nnx.Rngs(0), dtype=jnp.float32)

def run(m):
    engine = RolloutEngine(m, tok, proc, cfg)
    try:
        return engine.run(qs, samples=4, seed=7), engine
    finally:
        engine.close()

one, e1 = run(model)
mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
state = nnx.state(model)
nnx.update(model, shard_state(nnx.to_pure_dict(state), state_shardings(state, mesh)))  # the trainer's layout
embed_before = str(model.text.embed[...].sharding.spec)
eight, e8 = run(model)
print("RESULT " + json.dumps(dict(
    same=[bool(len(a.token_ids) == len(b.token_ids) and (a.token_ids == b.token_ids).all()) for a, b in zip(one, eight)],
    sampled=[int(t.sampled_tokens) for t in eight],
    embed_before=embed_before, embed_serving=str(e8.state["text"]["embed"][...].sharding.spec),
    embed_devices=len(e8.state["text"]["embed"][...].sharding.device_set),
    cache_one=e1.stats.cache_sharding, cache_eight=e8.stats.cache_sharding, ways=e8.ways,
    reshard_s=e8.reshard_s, peak_pages=e8.stats.peak_pages, extend_calls=e8.stats.extend_calls)))
"""


@pytest.fixture(scope="module")
def result():
    return run_on_devices(SCRIPT, devices=8, timeout=600)


def test_eight_devices_sample_what_one_does(result):
    assert len(result["same"]) == 20 and all(result["same"]), result
    assert sum(result["sampled"]) == 20 * 8  # each episode's turn ran to its 8-token budget (a random model)


def test_the_weights_move_to_the_serving_layout_and_the_cache_stays_split(result):
    assert "fsdp" in result["embed_before"]  # the trainer's layout: the embedding split over fsdp
    # the serving layout: whole over data x fsdp, split over tensor only
    assert result["embed_serving"] == "P('tensor', None)" and result["embed_devices"] == 8
    assert result["ways"] == 4 and result["reshard_s"] > 0
    # the pools' page axis over data x fsdp and kv heads over tensor: each device holds 1/8, none replicated
    assert result["cache_one"] == "" and result["cache_eight"] == "P(None, 'tensor', ('data', 'fsdp'))"
