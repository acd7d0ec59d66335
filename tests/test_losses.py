"""Advantages and losses against plain numpy / torch references (spec §4.2-§4.4).

The references are written out loop by loop, the way the released verl code reads, so that the
vectorised jnp versions have something independent to agree with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mini_o3_jax.train.advantages import grpo_advantages, valid_groups
from mini_o3_jax.train.batch import TrainBatch, token_weights
from mini_o3_jax.train.losses import PPOConfig, kl_penalty, ppo_loss, sft_loss


def ref_advantages(rewards, groups, eps=1e-6):
    """verl `compute_grpo_outcome_advantage` with torch: unbiased std, single sample -> (0, 1)."""
    scores = torch.tensor(rewards, dtype=torch.float32)
    by = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(scores[i])
    mean = {g: torch.tensor(0.0) if len(v) == 1 else torch.mean(torch.stack(v)) for g, v in by.items()}
    std = {g: torch.tensor(1.0) if len(v) == 1 else torch.std(torch.stack(v)) for g, v in by.items()}
    return np.array([float((scores[i] - mean[g]) / (std[g] + eps)) for i, g in enumerate(groups)])


@pytest.mark.parametrize("case", ["random", "zero_variance", "single", "mixed_sizes"])
def test_grpo_advantages_equal_torch_reference(case):
    rng = np.random.default_rng(0)
    if case == "random":
        groups = np.repeat(np.arange(8), 16)
        rewards = rng.integers(0, 2, len(groups)).astype(float)
    elif case == "zero_variance":
        groups = np.repeat(np.arange(3), 4)
        rewards = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1], float)
    elif case == "single":
        groups, rewards = np.array([0, 1, 1]), np.array([1.0, 0.0, 1.0])
    else:
        groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3, 3])
        rewards = rng.random(len(groups))
    np.testing.assert_allclose(grpo_advantages(rewards, groups), ref_advantages(rewards, groups), rtol=1e-5, atol=1e-5)
    if case == "single":
        assert grpo_advantages(rewards, groups)[0] == pytest.approx(1.0 / (1 + 1e-6))


def test_over_turn_trajectories_stay_in_group_statistics():
    # an over-turn sample scores 0 and lowers its siblings' baseline exactly as a wrong answer would
    rewards, groups = [1.0, 1.0, 0.0, 0.0], [0, 0, 0, 0]
    adv = grpo_advantages(rewards, groups)
    assert adv[0] == pytest.approx(0.5 / (np.std([1, 1, 0, 0], ddof=1) + 1e-6), rel=1e-6)


def test_dynamic_sampling_drops_flat_and_failed_groups():
    groups = np.repeat(np.arange(4), 3)
    rewards = [1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1]
    failed = np.zeros(12, bool)
    failed[10] = True
    keep = valid_groups(rewards, groups, failed)
    np.testing.assert_array_equal(keep, np.repeat([False, True, False, False], 3))
    assert valid_groups([1.0], [0]).all()  # torch std of one sample is NaN: never below the threshold


def make_batch(rng, lengths, masks, adv, width=24):
    b = len(lengths)
    mask = np.zeros((b, width), np.float32)
    for i, m in enumerate(masks):
        mask[i, : len(m)] = m
    return mask, TrainBatch(None, None, jnp.zeros((b, width), jnp.int32), jnp.asarray(mask), None,
                            jnp.asarray(adv, jnp.float32),
                            jnp.asarray(rng.normal(-2, 0.5, (b, width)), jnp.float32),
                            jnp.asarray(rng.normal(-2, 0.5, (b, width)), jnp.float32))


def ref_ppo(logp, old, adv, masks, clip_low, clip_high, agg):
    """Per sequence: token-level clipped surrogate, token mean; then mean over all sequences."""
    per_seq, tok_sum, tok_count = [], 0.0, 0.0
    for i, m in enumerate(masks):
        losses = []
        for t in range(len(m)):
            if not m[t]:
                continue
            ratio = np.exp(np.clip(logp[i, t] - old[i, t], -20, 20))
            losses.append(max(-adv[i] * ratio, -adv[i] * np.clip(ratio, 1 - clip_low, 1 + clip_high)))
        per_seq.append(np.mean(losses) if losses else 0.0)
        tok_sum += float(np.sum(losses))
        tok_count += len(losses)
    return float(np.mean(per_seq)) if agg == "seq-mean-token-mean" else tok_sum / tok_count


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("case", ["random", "all_masked_rows", "mixed_lengths"])
def test_ppo_loss_equals_numpy_reference(agg, case):
    rng = np.random.default_rng(1)
    lengths = [24, 24, 24, 24] if case != "mixed_lengths" else [3, 24, 11, 17]
    masks = [(rng.random(n) < 0.7).astype(np.float32) for n in lengths]
    if case == "all_masked_rows":
        masks[1][:] = 0  # an over-turn trajectory: no tokens in the loss, still one of the 4 sequences
        masks[3][:] = 0
    adv = rng.normal(size=4)
    mask, batch = make_batch(rng, lengths, masks, adv)
    w = np.zeros_like(mask)
    for i, wi in enumerate(token_weights(masks, agg)):
        w[i, : len(wi)] = wi
    batch = batch._replace(weights=jnp.asarray(w))
    logp = jnp.asarray(np.asarray(batch.old_logprobs) + rng.normal(0, 0.3, mask.shape), jnp.float32)
    loss, metrics = ppo_loss(logp, batch, PPOConfig())
    expect = ref_ppo(np.asarray(logp), np.asarray(batch.old_logprobs), adv, masks, 0.2, 0.3, agg)
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5, atol=1e-7)
    assert 0.0 < float(metrics["clip_frac"]) < 1.0

    # no gradient reaches a position whose target is not a model-sampled token (observation, image,
    # padding, or any token of a masked trajectory)
    grad = np.asarray(jax.grad(lambda lp: ppo_loss(lp, batch, PPOConfig())[0])(logp))
    assert (grad[mask == 0] == 0).all()
    assert (grad[mask == 1] != 0).mean() > 0.5  # clipped tokens have zero gradient, the rest do not


def test_all_masked_batch_gives_zero_loss_and_gradient():
    rng = np.random.default_rng(2)
    masks = [np.zeros(24, np.float32)] * 3
    mask, batch = make_batch(rng, [24] * 3, masks, rng.normal(size=3))
    w = np.stack(token_weights(masks, "seq-mean-token-mean"))
    batch = batch._replace(weights=jnp.asarray(w))
    loss, _ = ppo_loss(batch.old_logprobs + 0.1, batch, PPOConfig())
    grad = jax.grad(lambda lp: ppo_loss(lp, batch, PPOConfig())[0])(batch.old_logprobs + 0.1)
    assert float(loss) == 0.0 and not np.asarray(grad).any()


def test_zero_variance_group_contributes_nothing():
    rng = np.random.default_rng(3)
    masks = [np.ones(24, np.float32)] * 4
    _, batch = make_batch(rng, [24] * 4, masks, grpo_advantages([1, 1, 1, 1], [0, 0, 0, 0]))
    batch = batch._replace(weights=jnp.asarray(np.stack(token_weights(masks, "seq-mean-token-mean"))))
    assert float(ppo_loss(batch.old_logprobs, batch, PPOConfig())[0]) == 0.0


def test_sft_loss_is_mean_nll_over_assistant_tokens():
    rng = np.random.default_rng(4)
    masks = [(rng.random(n) < 0.5).astype(np.float32) for n in (10, 24, 5)]
    mask, batch = make_batch(rng, [10, 24, 5], masks, np.zeros(3))
    w = np.zeros_like(mask)
    for i, wi in enumerate(token_weights(masks, "token-mean")):
        w[i, : len(wi)] = wi
    batch = batch._replace(weights=jnp.asarray(w))
    logp = batch.old_logprobs
    expect = -np.asarray(logp)[mask == 1].mean()
    np.testing.assert_allclose(float(sft_loss(logp, batch)[0]), expect, rtol=1e-6)
    grad = np.asarray(jax.grad(lambda lp: sft_loss(lp, batch)[0])(logp))
    assert (grad[mask == 0] == 0).all() and (grad[mask == 1] < 0).all()


def test_weights_split_over_micro_batches_sum_to_the_global_loss():
    # the same trajectories cut into micro-batches of 1 or 3: the summed weighted losses agree
    rng = np.random.default_rng(5)
    masks = [(rng.random(n) < 0.6).astype(np.float32) for n in (7, 24, 13, 19, 2, 24)]
    per_token = [rng.normal(size=len(m)) for m in masks]
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        w = token_weights(masks, agg)
        whole = sum(float((wi * x).sum()) for wi, x in zip(w, per_token))
        parts = 0.0
        for k in range(0, 6, 2):  # each micro-batch computes its share with the global counts
            wk = token_weights(masks[k:k + 2], agg, num_sequences=6, num_tokens=sum(m.sum() for m in masks))
            parts += sum(float((wi * x).sum()) for wi, x in zip(wk, per_token[k:k + 2]))
        assert parts == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_match_verl_formulas(kind):
    rng = np.random.default_rng(6)
    logp, ref = rng.normal(-2, 1, 50), rng.normal(-2, 1, 50)
    got = np.asarray(kl_penalty(jnp.asarray(logp), jnp.asarray(ref), kind))
    if kind == "k1":
        expect = logp - ref
    elif kind == "k2":
        expect = 0.5 * (logp - ref) ** 2
    else:
        kl = ref - logp
        expect = np.clip(np.exp(kl) - kl - 1, -10, 10)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)


def test_kl_and_entropy_terms_enter_the_loss_only_when_enabled():
    rng = np.random.default_rng(7)
    masks = [np.ones(24, np.float32)] * 2
    _, batch = make_batch(rng, [24] * 2, masks, rng.normal(size=2))
    batch = batch._replace(weights=jnp.asarray(np.stack(token_weights(masks, "token-mean"))))
    logp = batch.old_logprobs + 0.05
    ent = jnp.full(logp.shape, 2.0)
    base, _ = ppo_loss(logp, batch, PPOConfig())
    with_kl, m = ppo_loss(logp, batch, PPOConfig(kl_coef=0.1, kl_type="k1"), ent)
    expect_kl = float(np.mean(np.asarray(logp - batch.ref_logprobs)))
    assert m["kl"] == pytest.approx(expect_kl, rel=1e-5)
    assert float(with_kl) == pytest.approx(float(base) + 0.1 * expect_kl, rel=1e-5)
    with_ent, _ = ppo_loss(logp, batch, PPOConfig(entropy_coef=0.01), ent)
    assert float(with_ent) == pytest.approx(float(base) - 0.01 * 2.0, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hand_written_head_gradient_equals_autodiff(temperature):
    from mini_o3_jax.train.logprobs import target_logprobs

    rng = np.random.default_rng(8)
    h = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 50)) * 0.3, jnp.float32)
    t = jnp.asarray(rng.integers(0, 50, (2, 7)), jnp.int32)
    g = jnp.asarray(rng.normal(size=(2, 7)), jnp.float32)

    def plain(h, w):
        logits = jnp.einsum("bcd,dv->bcv", h, w) / temperature
        return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), t[..., None], -1)[..., 0]

    np.testing.assert_allclose(target_logprobs(h, w, t, temperature), plain(h, w), atol=1e-5)
    got = jax.grad(lambda h, w: jnp.sum(g * target_logprobs(h, w, t, temperature)), argnums=(0, 1))(h, w)
    ref = jax.grad(lambda h, w: jnp.sum(g * plain(h, w)), argnums=(0, 1))(h, w)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
