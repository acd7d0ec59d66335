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
