"""The KV-cached sampler against a full forward and against transformers' `generate`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_o3_jax.model.qwen2_5_vl import TextInputs
from mini_o3_jax.model.weights import load_hf
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.inputs import build_inputs
from mini_o3_jax.rollout.cache import copy_slots, init_cache
from mini_o3_jax.rollout.sampler import Sampling, decode, extend, kv_window, sample_tokens
from mini_o3_jax.rollout.stops import kmp_automaton, stop_table, truncate_at_stop
from tests.helpers import full_logits, make_inputs, rand_image
from tests.hf_reference import hf_processor, qwen_tokenizer_dir, tiny_hf_model

GREEDY = Sampling(temperature=0.0)
ONE_IMAGE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the sign?"}]}]
OBS = [{"role": "user", "content": [{"type": "text", "text": "Observation 1:"}, {"type": "image"}]}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf = tiny_hf_model(tied=False, seed=3)
    d = str(tmp_path_factory.mktemp("sampler"))
    hf.save_pretrained(d)
    model = load_hf(d, dtype="float32")
    return hf, model, hf_processor()


def chunk_inputs(model, ids, pixel_values, grid, start):
    batch = build_inputs([ids], [pixel_values], [grid], model.config, starts=[start])
    text = TextInputs(*(jnp.asarray(a) for a in batch.text))
    vision = None if batch.vision is None else jax.tree.map(jnp.asarray, batch.vision)
    return text, vision, int(batch.rope_deltas[0])


class Slot:
    """Host mirror of one cache slot, driving extend/decode the way the engine will."""

    def __init__(self, model, cache, slot, key=0):
        self.model, self.cache, self.slot = model, cache, slot
        self.graphdef, self.state = nnx.split(model)
        self.length, self.delta = 0, 0
        self.ids: list[int] = []
        self.pixels, self.grids = [], []
        self.keys = jax.random.split(jax.random.key(key), cache.num_slots)
        self.pending = None

    def extend(self, ids, pixel_values=None, grid=None, sampling=GREEDY):
        ids = list(ids) if self.pending is None else [self.pending, *ids]
        text, vision, chunk_delta = chunk_inputs(self.model, np.asarray(ids), pixel_values, grid, self.length + self.delta)
        self.delta = chunk_delta - self.length
        self.cache, tok, logits = extend(self.graphdef, self.state, self.cache, text, vision, jnp.array([self.slot]),
                                         jnp.array([self.delta]), self.keys[self.slot][None], sampling)
        self.length += len(ids)
        self.ids += ids
        if pixel_values is not None:
            self.pixels.append(pixel_values)
            self.grids.append(grid)
        self.pending = int(tok[0])
        return np.asarray(logits[0], np.float64)


def test_greedy_single_turn_equals_transformers_generate(setup):
    hf, model, processor = setup
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 0)])
    steps = 12
    cache = init_cache(model.config.text, slots=2, max_len=1024, dtype=jnp.float32)
    s = Slot(model, cache, slot=1)
    s.extend(ids, pv, grid)
    live = jnp.array([False, True])
    cache, toks, pending, live, stopped, _ = decode(
        s.graphdef, s.state, s.cache, jnp.array([0, s.pending]), live, jnp.array([0, 100]), jnp.array([-7]),
        s.keys, GREEDY, steps)
    ours = [s.pending] + [int(t) for t in np.asarray(toks[1])]
    assert np.asarray(toks[0]).tolist() == [-1] * steps  # the idle slot samples nothing
    t_ids = torch.as_tensor(ids).long()[None]
    with torch.no_grad():
        ref = hf.generate(
            input_ids=t_ids, attention_mask=torch.ones_like(t_ids), pixel_values=torch.as_tensor(pv),
            image_grid_thw=torch.as_tensor(grid).long(), mm_token_type_ids=(t_ids == 151655).long(),
            max_new_tokens=steps + 1, do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, len(ids):].tolist()
    assert ours == ref


def test_incremental_logits_equal_one_full_forward(setup):
    """Prompt + image, decode, extend with two observations carrying crops, decoding in between."""
    _, model, processor = setup
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 1)])
    obs_ids, obs_pv, obs_grid = make_inputs(processor, OBS, [rand_image(140, 252, 2)])
    obs_ids = obs_ids[list(obs_ids).index(151644, 1):]  # drop the default system turn: just the observation
    cache = init_cache(model.config.text, slots=3, max_len=2048, dtype=jnp.float32)
    s = Slot(model, cache, slot=2)
    got = {}  # position -> logits predicting the token at position + 1

    def step(*args):
        logits = s.extend(*args)
        got[s.length - 1] = logits  # the last position written now predicts the pending token

    step(ids, pv, grid)
    for _ in range(4):  # single-token extends are decode steps with logits we can see
        step([])
    step(obs_ids, obs_pv, obs_grid)  # pending token + observation text + second image (crop 1)
    for _ in range(3):
        step([])
    obs2_ids, obs2_pv, obs2_grid = make_inputs(processor, OBS, [rand_image(476, 168, 3)])
    step(obs2_ids[list(obs2_ids).index(151644, 1):], obs2_pv, obs2_grid)  # crop 2, another aspect
    for _ in range(2):
        step([])
    seq = np.asarray(s.ids + [s.pending])
    ref = full_logits(model, seq, s.pixels, s.grids)
    assert len(s.grids) == 3
    for pos, logits in got.items():
        diff = np.abs(logits - ref[pos]).max()
        assert diff <= 1e-4, (pos, diff)
    print(f"[parity] incremental vs full forward over {len(seq)} tokens, 3 images: "
          f"{max(np.abs(v - ref[p]).max() for p, v in got.items()):.2e}")
    # and the ids chosen are the full forward's greedy choices
    for pos in got:
        assert seq[pos + 1] == ref[pos].argmax()


def two_busy_slots(model, processor, max_len: int, b_tail: list[int]) -> tuple[Slot, Slot]:
    """Slots 0 and 1 of one cache, each prefilled with its own image prompt; slot b then extended by
    `b_tail`, so the two sit at different lengths."""
    ids_a, pv_a, grid_a = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 4)])
    ids_b, pv_b, grid_b = make_inputs(processor, ONE_IMAGE, [rand_image(196, 560, 5)])
    a = Slot(model, init_cache(model.config.text, slots=2, max_len=max_len, dtype=jnp.float32), slot=0)
    a.extend(ids_a, pv_a, grid_a)
    b = Slot(model, a.cache, slot=1)
    b.graphdef, b.state = a.graphdef, a.state
    b.extend(ids_b, pv_b, grid_b)
    b.extend(b_tail)
    return a, b


def test_decode_matches_full_forward_with_two_busy_slots(setup):
    _, model, processor = setup
    a, b = two_busy_slots(model, processor, 1024, [])  # b.extend([]): slot b is one token ahead
    ids_a, ids_b = a.ids, b.ids[:-1]
    steps = 6
    cache, toks, pending, live, stopped, _ = decode(
        a.graphdef, a.state, b.cache, jnp.array([a.pending, b.pending]), jnp.array([True, True]),
        jnp.array([100, 3]), jnp.array([-7]), a.keys, GREEDY, steps)
    toks = np.asarray(toks)
    assert (toks[1, 3:] == -1).all() and not bool(live[1]) and bool(live[0])  # b used its budget of 3
    assert np.asarray(cache.length).tolist() == [len(ids_a) + steps, len(ids_b) + 1 + 3]
    for slot, s, n in ((0, a, steps), (1, b, 3)):
        seq = np.asarray(s.ids + [s.pending] + toks[slot, :n].tolist())
        ref = full_logits(model, seq[:-1], s.pixels, s.grids)
        np.testing.assert_array_equal(seq[len(s.ids) + 1:], ref[len(s.ids):].argmax(-1))


def test_kv_window_is_a_power_of_two_prefix_covering_the_need():
    assert [kv_window(n, 4096) for n in (0, 10, 256, 257, 300, 1024, 1025, 4000, 9000)] == \
        [256, 256, 256, 512, 512, 1024, 2048, 4096, 4096]
    assert kv_window(100, 4096, minimum=64) == 128 and kv_window(300, 384) == 384


def test_decode_over_a_cache_prefix_equals_decode_over_the_whole_row(setup):
    """The engine decodes over `kv_window` positions; with slots at different lengths and T=1 sampling
    the tokens and the written cache equal a decode over the full 2048-position row, while a window
    shorter than a slot changes them (the prefix is really what is attended)."""
    _, model, processor = setup
    steps, t1 = 24, Sampling(temperature=1.0)

    def run(kv_len):
        a, b = two_busy_slots(model, processor, 2048, [1, 2, 3])
        cache, toks, *_ = decode(a.graphdef, a.state, b.cache, jnp.array([a.pending, b.pending]),
                                 jnp.array([True, True]), jnp.array([100, 100]), jnp.array([-7]), a.keys, t1, steps,
                                 kv_len=kv_len)
        return np.asarray(toks), np.asarray(cache.k), max(a.length, b.length)

    full, k_full, longest = run(None)
    window = kv_window(longest + steps, 2048)
    assert window < 2048
    part, k_part, _ = run(window)
    np.testing.assert_array_equal(part, full)
    np.testing.assert_allclose(k_part, k_full, rtol=1e-5, atol=1e-6)
    short, _, _ = run(16)
    assert (short != full).any()


def test_stop_tokens_end_a_slot(setup):
    _, model, processor = setup
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 6)])
    cache = init_cache(model.config.text, slots=1, max_len=1024, dtype=jnp.float32)
    s = Slot(model, cache, slot=0)
    s.extend(ids, pv, grid)
    _, free, *_ = decode(s.graphdef, s.state, s.cache, jnp.array([s.pending]), jnp.array([True]),
                         jnp.array([50]), jnp.array([-7]), s.keys, GREEDY, 5)
    third = int(free[0, 2])
    cache = init_cache(model.config.text, slots=1, max_len=1024, dtype=jnp.float32)
    s = Slot(model, cache, slot=0)
    s.extend(ids, pv, grid)
    _, toks, pending, live, stopped, _ = decode(s.graphdef, s.state, s.cache, jnp.array([s.pending]),
                                             jnp.array([True]), jnp.array([50]), jnp.array([third]), s.keys, GREEDY, 5)
    assert np.asarray(toks[0]).tolist()[:3] == np.asarray(free[0]).tolist()[:3]
    assert (np.asarray(toks[0, 3:]) == -1).all() and bool(stopped[0]) and not bool(live[0])
    assert int(pending[0]) == third


def test_copy_slots_shares_one_prefill(setup):
    _, model, processor = setup
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 7)])
    cache = init_cache(model.config.text, slots=4, max_len=1024, dtype=jnp.float32)
    s = Slot(model, cache, slot=0)
    s.extend(ids, pv, grid)
    cache = copy_slots(s.cache, jnp.array([0, 0, 0]), jnp.array([1, 2, 3]))
    assert np.asarray(cache.length).tolist() == [len(ids)] * 4
    np.testing.assert_array_equal(np.asarray(cache.k[:, 3]), np.asarray(cache.k[:, 0]))
    pending = jnp.full((4,), s.pending)
    _, toks, *_ = decode(s.graphdef, s.state, cache, pending, jnp.ones(4, bool), jnp.full(4, 20), jnp.array([-7]),
                         s.keys, GREEDY, 4)
    toks = np.asarray(toks)
    assert (toks == toks[0]).all()  # greedy: four copies continue identically


def test_sampling_distribution_and_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000, jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    freq = np.bincount(np.asarray(sample_tokens(logits, keys, Sampling())), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    top2 = np.bincount(np.asarray(sample_tokens(logits, keys, Sampling(top_k=2))), minlength=4) / 4000
    np.testing.assert_allclose(top2, [0.625, 0.375, 0, 0], atol=0.03)
    top_p = np.bincount(np.asarray(sample_tokens(logits, keys, Sampling(top_p=0.7))), minlength=4) / 4000
    np.testing.assert_allclose(top_p, [0.625, 0.375, 0, 0], atol=0.03)  # 0.5 + 0.3 reaches 0.7
    cold = np.asarray(sample_tokens(logits, keys, Sampling(temperature=0.1)))
    assert (cold == 0).mean() > 0.99
    assert (np.asarray(sample_tokens(logits, keys, GREEDY)) == 0).all()
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)
    # banned ids (the vision placeholders) are never drawn, greedy or not; the rest renormalise
    banned = np.bincount(np.asarray(sample_tokens(logits, keys, Sampling(banned_ids=(0, 2)))), minlength=4) / 4000
    np.testing.assert_allclose(banned, [0, 0.857, 0, 0.143], atol=0.03)
    assert (np.asarray(sample_tokens(logits, keys, Sampling(temperature=0, banned_ids=(0,)))) == 1).all()


def test_stop_string_ends_a_slot_across_tokens_and_calls(setup):
    """A stop string the model emits over several tokens, with the decode split into two calls."""
    _, model, processor = setup
    tok = Tokenizer.from_pretrained(qwen_tokenizer_dir())
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 8)])

    def run(table=None, chunks=(8,)):
        cache = init_cache(model.config.text, slots=1, max_len=1024, dtype=jnp.float32)
        s = Slot(model, cache, slot=0)
        s.extend(ids, pv, grid)
        cache, pending, state, out = s.cache, jnp.array([s.pending]), jnp.zeros(1, jnp.int32), [s.pending]
        live, stopped = jnp.array([True]), jnp.array([False])
        for n in chunks:
            cache, toks, pending, live, stopped, state = decode(
                s.graphdef, s.state, cache, pending, live, jnp.array([50]), jnp.array([-7]), s.keys, GREEDY, n,
                None if table is None else jnp.asarray(table), state)
            out += [int(t) for t in np.asarray(toks[0]) if t >= 0]
        return out, bool(stopped[0])

    free, _ = run()
    known = [i for i in range(1, 8) if tok.decode([free[i]]).strip() and free[i] < tok.vocab_size]
    a, b = known[0], known[1]  # two consecutive-or-not printable tokens: the stop text spans them
    stop = tok.decode(free[a:b + 1])
    assert len(stop) >= 2
    got, stopped = run(stop_table(tok, stop, model.config.text.vocab_size), chunks=(a, 8))
    assert stopped and got == free[: len(got)]
    text = tok.decode(got, skip_special_tokens=True)
    assert stop in text and stop not in tok.decode(got[:-1], skip_special_tokens=True)


def test_truncate_at_stop_keeps_nothing_after_the_stop_text():
    tok = Tokenizer.from_pretrained(qwen_tokenizer_dir())
    stop = "</grounding>"
    for text, kept in [
        ('<grounding>{"bbox_2d": [0, 0, 1, 1]}</grounding>', '<grounding>{"bbox_2d": [0, 0, 1, 1]}</grounding>'),
        ("a</grounding>\n\nmore", "a</grounding>"),  # '>\n\n' is one token: replaced by '>'
        ("a</grounding></grounding>", "a</grounding>"),
        ("no stop here", "no stop here"),
    ]:
        out = truncate_at_stop(np.asarray(tok.encode(text)), tok, stop)
        assert tok.decode(out) == kept


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab<>/x", min_size=1, max_size=6), st.text(alphabet="ab<>/xy", max_size=40))
def test_kmp_automaton_finds_exactly_the_occurrences(stop, text):
    table, alphabet = kmp_automaton(stop)
    state, first = 0, None
    for i, c in enumerate(text):
        state = table[state, alphabet.get(c, 0)]
        if state == len(stop) and first is None:
            first = i + 1
    at = text.find(stop)
    assert first == (None if at < 0 else at + len(stop))


def test_unrolled_layer_loops_equal_the_scanned_ones(setup, tmp_path):
    """`unroll=True` (the toy demo's setting) runs the same layers as straight-line code: the full forward and a
    KV-cached extend + decode give the scanned model's logits and tokens."""
    hf, model, processor = setup
    hf.save_pretrained(tmp_path)
    unrolled = load_hf(tmp_path, dtype="float32", unroll=True)
    assert unrolled.text.unroll and unrolled.visual.unroll and not model.text.unroll
    ids, pv, grid = make_inputs(processor, ONE_IMAGE, [rand_image(300, 400, 6)])
    np.testing.assert_allclose(full_logits(unrolled, ids, [pv], [grid]), full_logits(model, ids, [pv], [grid]),
                               atol=2e-5)
    runs = []
    for m in (model, unrolled):
        s = Slot(m, init_cache(m.config.text, slots=1, max_len=512, dtype=jnp.float32), slot=0)
        logits = s.extend(ids, pv, grid)
        _, toks, *_ = decode(s.graphdef, s.state, s.cache, jnp.array([s.pending]), jnp.array([True]),
                             jnp.array([100]), jnp.array([-7]), s.keys, GREEDY, 5)
        runs.append((logits, [s.pending] + np.asarray(toks[0]).tolist()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], atol=2e-5)
    assert runs[1][1] == runs[0][1]
