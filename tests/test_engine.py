"""The rollout engine on a tiny random model: consistency with one full forward, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.data.records import Record
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.weights import load_hf
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
from mini_o3_jax.rollout.pages import PoolExhausted
from mini_o3_jax.rollout.sampler import Sampling
from tests.helpers import full_logits, rand_image
from tests.hf_reference import qwen_tokenizer_dir, tiny_hf_model

ENV = EnvConfig(max_turns=3, max_context=6000, context_guard=500, min_pixels=3136, max_pixels=60000)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    hf = tiny_hf_model(tied=False, seed=5)
    d = str(tmp_path_factory.mktemp("engine"))
    hf.save_pretrained(d)
    return load_hf(d, dtype="float32"), Tokenizer.from_pretrained(qwen_tokenizer_dir()), ImageProcessor()


def question(image, problem: str) -> Record:
    return Record(benchmark="", doc_id="", image=image, problem=problem, solution="", data_source="")


def questions(n):
    return [question(rand_image(200 + 40 * i, 300, i), f"<image>\nQuestion {i}?") for i in range(n)]


T1 = Sampling()


def run(parts, n=3, samples=2, slots=3, sampling=T1, chunk=8, seed=0, with_stats=False, **paging):
    model, tok, proc = parts
    cfg = EngineConfig(**{"slots": slots, "max_len": 6144, "decode_chunk": chunk, "max_turn_tokens": 24,
                          "sampling": sampling, "env": ENV, **paging})
    engine = RolloutEngine(model, tok, proc, cfg)
    try:
        trajs = engine.run(questions(n), samples=samples, seed=seed)
        return (trajs, engine.stats) if with_stats else trajs
    finally:
        engine.close()


def test_greedy_trajectories_are_the_full_forward_argmax(parts):
    """The paged engine (the default) against the full forward (the oracle dense rows are held to as well)."""
    model, tok, proc = parts
    trajs = run(parts, sampling=Sampling(temperature=0.0))
    assert len(trajs) == 6
    for t in trajs:
        assert t.token_ids.shape == t.loss_mask.shape == t.sampled_mask.shape and t.num_turns >= 1
        assert t.sampled_mask[: t.prompt_length].sum() == 0 and t.sampled_mask.sum() == t.sampled_tokens > 0
        assert (t.loss_mask <= t.sampled_mask).all()  # trained tokens are sampled ones (up to the last <|im_end|>)
        assert (t.token_ids <= tok.vocab_size - 1).all()
        pixels = [proc([im]).pixel_values for im in t.images]
        ref = full_logits(model, t.token_ids, pixels, [g[None] for g in t.grids])
        sampled = np.flatnonzero(t.sampled_mask)
        np.testing.assert_array_equal(t.token_ids[sampled], ref[sampled - 1, : tok.vocab_size].argmax(-1))
    # greedy: the two samples of an episode are the same trajectory
    for a, b in zip(trajs[::2], trajs[1::2]):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)


def test_sampling_is_reproducible_and_independent_of_slot_layout(parts):
    a = run(parts, slots=3, chunk=8, seed=1)
    b = run(parts, slots=2, chunk=5, seed=1)
    c = run(parts, slots=3, chunk=8, seed=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
    assert any(len(x) != len(z) or (x.token_ids != z.token_ids).any() for x, z in zip(a, c))
    # samples of one prompt differ (temperature 1 over a 151k vocabulary)
    assert any(a[0].token_ids[a[0].prompt_length:][:5] != a[1].token_ids[a[1].prompt_length:][:5])


def test_the_paged_engine_samples_what_the_dense_one_does(parts):
    """Same keys, same tokens at temperature 1 (0: the greedy test above, against the full forward): a pool of
    16-token pages too small for every slot's prompt at once (slots wait for pages that finished episodes
    release), groups of 3 sharing their prompt's pages, 3 questions through 4 slots (refills), against dense rows."""
    kw = dict(n=3, samples=3, slots=4, sampling=T1, chunk=8, seed=3)
    dense = run(parts, page_size=0, **kw)
    # the most pages one group holds (its prompt's whole pages once, each sample's own, a decode call's look-ahead
    # included): a pool of that many holds one group and makes the next question's prompt wait
    group = [sum(-(-(len(t) + 8) // 16) - t.prompt_length // 16 for t in dense[e:e + 3]) + dense[e].prompt_length // 16
             for e in range(0, 9, 3)]
    pages = max(group) + 1
    paged, stats = run(parts, page_size=16, pages=pages, with_stats=True, **kw)
    assert stats.page_waits > 0 and stats.peak_pages <= pages - 1
    assert len(paged) == len(dense) == 9
    for x, y in zip(dense, paged):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
    with pytest.raises(PoolExhausted, match=r"every live episode waits for KV pages: 0 of 4 pages of 16 tokens"):
        run(parts, page_size=16, pages=5, **kw)


def test_chunked_prefill_samples_what_whole_extends_do(parts):
    """Prompts (~280 tokens: system prompt, a 70-100-token image, question) and observations written 64 tokens at
    a time between other slots' decode calls, an image never split: the same tokens at temperature 1."""
    _, tok, _ = parts
    kw = dict(n=3, samples=2, slots=3, sampling=T1, chunk=8, seed=3, with_stats=True)
    whole, one = run(parts, **kw)
    pieces, chunked = run(parts, prefill_chunk=64, **kw)
    for x, y in zip(whole, pieces):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
    assert one.longest_extend >= whole[0].prompt_length > 250
    image = max(int((t.token_ids == tok.image_pad_id).sum()) for t in whole) + 2  # one image's span, its markers in
    assert 64 < chunked.longest_extend <= max(64, image)  # only a whole image's span is longer than a piece
    assert chunked.extend_calls >= one.extend_calls + 6


def test_a_piece_never_cuts_an_image():
    from mini_o3_jax.processing.image import ProcessedImages
    from mini_o3_jax.rollout.engine import _Chunk, split_piece

    ids = np.array([1, 2, 8, 5, 5, 5, 9, 3, 8, 5, 5, 9, 4])  # 8 / 9: vision start / end; 5: image pads
    grids = np.array([[1, 2, 6], [1, 2, 4]])  # 12 and 8 patch rows (3 and 2 pads after a 2x2 merge)
    chunk = _Chunk(0, ids, ProcessedImages(np.arange(20.0)[:, None], grids), followers=[1, 2])
    cuts, rows = [], []
    while chunk is not None:
        piece, chunk = split_piece(chunk, 4, 8, 9)
        cuts.append(len(piece.ids))
        rows.append(0 if piece.image is None else len(piece.image.pixel_values))
        assert piece.last == (chunk is None) and piece.followers == ([1, 2] if piece.last else [])
    assert cuts == [2, 5, 1, 4, 1] and rows == [0, 12, 0, 8, 0]


def test_a_cache_that_cannot_fit_is_refused_before_allocation(parts):
    with pytest.raises(ConfigError, match=r"rollout.pages = 4000000000: 4000000000 pages per device need [\d.]+ GiB, "
                                          r"but [\d.]+ GiB is free on"):
        run(parts, page_size=16, pages=4_000_000_000)
    with pytest.raises(ConfigError, match=r"dense KV cache of 3 slots x 4000000000 tokens per device needs"):
        run(parts, page_size=0, max_len=4_000_000_000)


def test_turns_end_on_a_stop_token_or_the_budget(parts):
    _, tok, _ = parts
    for t in run(parts, n=2, samples=2, slots=3, seed=3):
        last = t.turns[-1]
        by_stop = t.token_ids[-1] in (tok.im_end_id, tok.endoftext_id)
        assert by_stop or last.num_tokens == 24
        if last.outcome == "final" and not by_stop:
            assert t.void  # cut by the per-turn budget


def test_multi_turn_episode_with_a_zoom_runs_through_the_engine(parts, tmp_path):
    """Teach a tiny model one two-turn trajectory (zoom, then answer), then let the engine run it.

    The engine must reproduce it token for token: stop at `</grounding>`, crop, extend the cache with
    the observation and its image, decode the answer, and report the flags.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from mini_o3_jax.agent.environment import VisualSearchEnv
    from mini_o3_jax.model.qwen2_5_vl import forward_logits
    from mini_o3_jax.processing.inputs import build_inputs

    base, tok, proc = parts
    model = nnx.merge(*nnx.split(base))  # a private copy to train
    ep = questions(1)[0]
    env = VisualSearchEnv(ep.image, ep.problem, tok, proc, ENV)
    call = '<think>zoom</think><grounding>{"bbox_2d": [0.2, 0.1, 0.7, 0.6], "source": "original_image"}</grounding>'
    env.step(tok.encode(call))
    env.step(tok.encode("<answer>A</answer><|im_end|>"))
    target = env.trajectory()
    assert [t.outcome for t in target.turns] == ["crop", "final"]

    pixels = np.concatenate([proc([im]).pixel_values for im in target.images])
    batch = build_inputs([target.token_ids], [pixels], [target.grids], model.config)
    n = len(target)
    predict = np.flatnonzero(target.loss_mask[1:n])  # positions whose next token the model sampled
    labels = jnp.asarray(target.token_ids[predict + 1])
    graphdef, params = nnx.split(model, nnx.Param)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state):
        def loss_fn(p):
            m = nnx.merge(graphdef, p)
            logits = m.text.logits(m(batch.text, batch.vision)[0, predict])  # LM head on those rows only
            logp = jax.nn.log_softmax(logits, -1)
            return -jnp.take_along_axis(logp, labels[:, None], -1).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(10):  # until the trajectory is memorised (greedy decoding gives it back), at most 100 steps
        for _ in range(10):
            params, opt_state, loss = train_step(params, opt_state)
        model = nnx.merge(graphdef, params)
        logits = np.asarray(forward_logits(model, batch.text, batch.vision))[0, : n - 1]
        if (logits[predict].argmax(-1) == target.token_ids[predict + 1]).all():
            break
    assert (logits[predict].argmax(-1) == target.token_ids[predict + 1]).all(), float(loss)

    cfg = EngineConfig(slots=2, max_len=6144, decode_chunk=8, max_turn_tokens=64, sampling=Sampling(0.0), env=ENV)
    engine = RolloutEngine(model, tok, proc, cfg)
    seen = []
    try:
        (got,) = engine.run([ep], on_turn=lambda e, s, step: seen.append(step.turn.outcome))
    finally:
        engine.close()
    assert seen == ["crop", "final"]
    np.testing.assert_array_equal(got.token_ids, target.token_ids)
    np.testing.assert_array_equal(got.loss_mask, target.loss_mask)
    assert got.answer == "A" and not (got.void or got.exceed) and got.turns[0].pixel_box == target.turns[0].pixel_box
    assert got.grids.tolist() == target.grids.tolist()
    # the report shows the zoom box on its source and the crop
    from PIL import Image

    from mini_o3_jax.agent.report import write_report

    page = write_report([got], str(tmp_path / "r.html"), question=ep.problem)
    with open(page) as f:
        text = f.read()
    assert "source&quot;: &quot;original_image&quot;" in text and "<b>Turn 2</b>: final" in text
    boxed = np.asarray(Image.open(tmp_path / "r_s0_t1_box.png"))
    w, h = target.images[0].size
    x0, y0 = int(0.2 * w), int(0.1 * h)
    assert tuple(boxed[y0 + h // 10, x0]) == (255, 0, 0)  # the red box edge on the left side
    assert Image.open(tmp_path / "r_s0_observation_1.png").size == target.images[1].size


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_host_memory_stays_flat_over_500_episodes(parts):
    """Mini-o3's PyTorch RL is reported to leak host memory; 500 episodes here must not grow RSS. (Slow: a
    soak test, a minute of rollouts; `pytest -m slow`.)"""
    import gc

    model, tok, proc = parts
    env = EnvConfig(max_turns=2, max_context=2048, context_guard=200, min_pixels=3136, max_pixels=12544)
    cfg = EngineConfig(slots=8, max_len=2048, decode_chunk=8, max_turn_tokens=8, env=env)
    engine = RolloutEngine(model, tok, proc, cfg)
    eps = [question(rand_image(90 + i % 5 * 7, 120, i), "<image>\nWhat?") for i in range(50)]
    rss = []
    try:
        for round_ in range(10):
            trajs = engine.run(eps, samples=1, seed=round_)
            assert len(trajs) == 50
            del trajs
            gc.collect()
            rss.append(_rss_mb())
    finally:
        engine.close()
    print("[memory] RSS MB per 50 episodes:", [round(r) for r in rss])
    growth = rss[-1] - rss[2]  # after warm-up (compiles, caches) to the end: 400 more episodes
    assert growth < 40, f"RSS grew {growth:.1f} MB over 400 episodes: {[round(r) for r in rss]}"


def test_rollout_keeps_the_patches_it_fed_the_model(parts):
    """`keep_patches` (RL): each trajectory carries the patch rows of its images in the model's dtype, equal to
    what the image processor gives for them, so training builds its batches without a second processor pass."""
    import jax.numpy as jnp

    from mini_o3_jax.agent.environment import VisualSearchEnv
    from mini_o3_jax.train.batch import trajectory_pixels

    model, tok, proc = parts
    cfg = EngineConfig(slots=3, max_len=6144, decode_chunk=8, max_turn_tokens=24, env=ENV, keep_patches=True)
    engine = RolloutEngine(model, tok, proc, cfg)
    try:
        trajs = engine.run(questions(2), samples=2, seed=0)
    finally:
        engine.close()
    for t in trajs:
        assert t.patches is not None and len(t.patches) == len(t.images) == len(t.grids)
        again = proc(list(t.images)).pixel_values
        kept = trajectory_pixels(t, proc)
        assert kept.dtype == np.float32 and np.array_equal(kept, again)
    assert run(parts, n=1, samples=1)[0].patches is None  # evaluation does not keep them
    # a bf16 model keeps bf16 rows (what its patch embedding reads), original and crop alike
    ep = questions(1)[0]
    env = VisualSearchEnv(ep.image, ep.problem, tok, proc, ENV, patch_dtype=jnp.dtype(jnp.bfloat16))
    env.step(tok.encode('<grounding>{"bbox_2d": [0.2, 0.1, 0.7, 0.6], "source": "original_image"}</grounding>'))
    env.step(tok.encode("<answer>A</answer><|im_end|>"))
    traj = env.trajectory()
    assert len(traj.patches) == 2 and all(p.dtype == jnp.bfloat16 for p in traj.patches)
    want = proc(list(traj.images)).pixel_values.astype(jnp.bfloat16)
    assert np.array_equal(np.concatenate(traj.patches).view(np.uint16), want.view(np.uint16))
