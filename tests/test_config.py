"""Model configs: presets match the published checkpoints; our hub-layout JSON means the same to transformers."""

from __future__ import annotations

import pytest
from transformers import Qwen2_5_VLConfig

from mini_o3_jax.model.config import ModelConfig
from mini_o3_jax.model.presets import model_config


@pytest.mark.parametrize("name,hidden,layers,heads,kv,inter,vocab,tied", [
    ("qwen2_5_vl_7b", 3584, 28, 28, 4, 18944, 152064, False),
    ("qwen2_5_vl_3b", 2048, 36, 16, 2, 11008, 151936, True),
])
def test_presets_are_the_released_shapes(name, hidden, layers, heads, kv, inter, vocab, tied):
    c = model_config(name)
    t, v = c.text, c.vision
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (hidden, layers, heads, kv)
    assert (t.intermediate_size, t.vocab_size, t.tie_word_embeddings, t.head_dim) == (inter, vocab, tied, 128)
    assert t.mrope_section == (16, 24, 24) and t.rope_theta == 1e6
    assert (v.depth, v.hidden_size, v.num_heads, v.intermediate_size, v.out_hidden_size) == (32, 1280, 16, 3420, hidden)
    assert v.fullatt_block_indexes == (7, 15, 23, 31) and v.window_patches == 64 and v.patch_dim == 1176


@pytest.mark.parametrize("name", ["qwen2_5_vl_7b", "qwen2_5_vl_3b", "tiny"])
def test_hub_layout_round_trip_and_transformers_agree(name):
    c = model_config(name)
    d = c.to_hf_dict()
    assert ModelConfig.from_hf_dict(d) == c
    hf = Qwen2_5_VLConfig.from_dict(d)
    tc, vc = hf.text_config, hf.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_key_value_heads, tc.vocab_size) == (
        c.text.hidden_size, c.text.num_hidden_layers, c.text.num_key_value_heads, c.text.vocab_size)
    assert list(tc.rope_parameters["mrope_section"]) == list(c.text.mrope_section)
    assert bool(hf.tie_word_embeddings) == c.text.tie_word_embeddings
    assert (vc.depth, vc.out_hidden_size, list(vc.fullatt_block_indexes)) == (
        c.vision.depth, c.vision.out_hidden_size, list(c.vision.fullatt_block_indexes))
    # transformers-5 nested layout (what save_pretrained writes) parses to the same config
    assert ModelConfig.from_hf_dict(hf.to_dict()) == c


def test_a_block_maps_onto_its_dataclass_key_for_field():
    """One converter for every block: nested groups become nested dataclasses, lists tuples, a missing key
    the dataclass default, and an unknown key one error naming the block's key and the closest field."""
    from mini_o3_jax.config_files import from_block, load_config, to_block
    from mini_o3_jax.errors import ConfigError
    from mini_o3_jax.rollout.engine import EngineConfig
    from mini_o3_jax.rollout.sampler import Sampling
    from mini_o3_jax.train.optim import OptimConfig

    assert from_block(OptimConfig, {"lr": 1e-3}, "optim") == OptimConfig(lr=1e-3)
    engine = from_block(EngineConfig, {"slots": 3, "sampling": {"top_k": 5, "banned_ids": [1, 2]}}, "rollout")
    assert engine == EngineConfig(slots=3, sampling=Sampling(top_k=5, banned_ids=(1, 2)))
    assert from_block(EngineConfig, to_block(engine), "rollout") == engine  # and back
    with pytest.raises(ConfigError, match=r"unknown setting optim\.lrr \(did you mean optim\.lr\?\)"):
        from_block(OptimConfig, {"lrr": 1e-3}, "optim")
    with pytest.raises(ConfigError, match=r"unknown setting rollout\.sampling\.temprature \(did you mean "
                                          r"rollout\.sampling\.temperature\?\)"):
        from_block(EngineConfig, {"sampling": {"temprature": 0.5}}, "rollout")
    with pytest.raises(ConfigError, match="optimizer schedule 'linear'"):  # the dataclass's own checks run
        from_block(OptimConfig, load_config("sft_coldstart", ["optim.schedule=linear"]).optim, "optim")


def test_the_tiny_configs_are_a_local_mode_of_the_main_ones():
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.errors import ConfigError

    for main, tiny in (("rl_grpo", "rl_tiny"), ("sft_coldstart", "sft_tiny")):
        local = load_config(f"configs/{main}.py:tiny")
        assert local.to_dict() == load_config(tiny).to_dict()
        assert local.out_dir == f"runs/{tiny}" and load_config(main).out_dir == f"runs/{main}"
        with pytest.raises(ConfigError, match="unknown mode"):
            load_config(f"{main}:huge")
    with pytest.raises(ConfigError, match="takes no argument"):
        load_config("qwen2_5_vl_tiny:tiny")


def test_data_and_checkpoint_blocks_are_typed_and_strict():
    """`data` (SFTData / RLData) and `checkpoint` (CheckpointConfig) are read once through the converter: an
    unknown key is one error naming data.<key> / checkpoint.<key>, and the dataclass's checks run."""
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.errors import ConfigError
    from mini_o3_jax.rl.loop import rl_data
    from mini_o3_jax.sft.loop import sft_data
    from mini_o3_jax.train.settings import CheckpointConfig, checkpoint_settings

    sft = sft_data(load_config("sft_tiny"))
    assert (sft.synthetic, sft.synthetic_levels, dict(sft.synthetic_patterns)) == ("toy", (), {"direct": 1.0})
    assert (sft.system_prompt, sft.min_pixels, sft.max_pixels) == (False, 3136, 12_544)
    rl = rl_data(load_config("rl_tiny", ["data.image_root=imgs"]))
    assert (rl.synthetic, rl.synthetic_levels, rl.image_root, rl.tfds_dir) == ("toy", ("hard",), "imgs", "data/tfds")
    assert checkpoint_settings(load_config("rl_grpo")) == CheckpointConfig(every=25)
    assert checkpoint_settings(load_config("sft_coldstart")) == CheckpointConfig()

    for name, read in (("sft_coldstart", sft_data), ("rl_grpo", rl_data)):
        cfg = load_config(name)
        cfg.data.imge_root = "x"
        with pytest.raises(ConfigError, match=r"unknown setting data\.imge_root \(did you mean data\.image_root\?\)"):
            read(cfg)
    cfg = load_config("rl_grpo")
    cfg.checkpoint.evry = 5
    with pytest.raises(ConfigError, match=r"unknown setting checkpoint\.evry \(did you mean checkpoint\.every\?\)"):
        checkpoint_settings(cfg)
    with pytest.raises(ConfigError, match=r"checkpoint\.every = 0; expected an integer >= 1"):
        checkpoint_settings(load_config("sft_coldstart", ["checkpoint.every=0"]))


def test_the_released_blocks_are_their_dataclasses_defaults_where_the_release_keeps_them():
    """Each default lives once, in its dataclass: the released configs build env / ppo / optim from it."""
    from mini_o3_jax.agent.environment import EnvConfig
    from mini_o3_jax.config_files import from_block, load_config
    from mini_o3_jax.rl.loop import rollout_settings
    from mini_o3_jax.train.losses import PPOConfig
    from mini_o3_jax.train.optim import OptimConfig

    rl = load_config("rl_grpo")
    assert from_block(EnvConfig, rl.env, "env") == EnvConfig()
    assert from_block(PPOConfig, rl.ppo, "ppo") == PPOConfig()
    assert from_block(OptimConfig, rl.optim, "optim") == OptimConfig()
    assert (rollout_settings(rl).slots, rollout_settings(rl).workers, rl.rollout.samples) == (64, 8, 16)
    assert "max_token_id" not in rl.env and "env" not in rl.rollout and "banned_ids" not in rl.rollout.sampling
    sft = from_block(OptimConfig, load_config("sft_coldstart").optim, "optim")
    assert sft == OptimConfig(lr=1e-5, schedule="cosine", warmup_ratio=0.1, weight_decay=0.0)
