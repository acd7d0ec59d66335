"""The RL loss mask stops at the response's last `<|im_end|>` (recipe spec §4.3 item 5, §8).

Each episode below is scripted token for token; the expected mask is written out position by
position from the turns' lengths, so a mask that still trains a cut last turn fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.environment import EnvConfig, VisualSearchEnv
from mini_o3_jax.agent.trajectory import mask_after_last_end
from mini_o3_jax.processing.chat import IM_END
from mini_o3_jax.train.batch import examples_from_trajectories, token_weights
from tests.helpers import QUESTION

CROP = '<think>zoom</think> <grounding>{"bbox_2d": [0.1, 0.1, 0.5, 0.5], "source": "original_image"}</grounding>'
ANSWER = "<think>done</think> <answer>B</answer>"


def image() -> Image.Image:
    y, x = np.mgrid[0:240, 0:320]
    return Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))


def env_of(tok, proc, **cfg) -> VisualSearchEnv:
    return VisualSearchEnv(image(), QUESTION, tok, proc, EnvConfig(min_pixels=3136, max_pixels=60_000, **cfg))


def expected_mask(env: VisualSearchEnv, pieces: list[tuple[int, int]]) -> np.ndarray:
    """pieces: (length, mask value) after the prompt, in order."""
    return np.concatenate([np.zeros(env.prompt_length)] + [np.full(n, v) for n, v in pieces]).astype(np.int8)


def crop_then(tok, proc, last: str, hit_limit: bool, **cfg):
    """A crop turn, then `last` (ending in <|im_end|> unless cut by the token limit)."""
    env = env_of(tok, proc, **cfg)
    a0 = tok.encode(CROP)
    obs = env.step(a0).append_ids
    a1 = tok.encode(last if hit_limit or protocol.has_tool_call(last) else last + IM_END)
    env.step(a1, hit_token_limit=hit_limit)
    return env, env.trajectory(), (a0, obs, a1)


def test_final_answer_keeps_every_sampled_token(tok, proc):
    env, traj, (a0, obs, a1) = crop_then(tok, proc, ANSWER, hit_limit=False)
    assert traj.token_ids[-1] == tok.im_end_id and not (traj.void or traj.exceed)
    np.testing.assert_array_equal(traj.loss_mask, expected_mask(env, [(len(a0), 1), (len(obs), 0), (len(a1), 1)]))


def test_last_turn_cut_by_the_token_limit_has_no_loss(tok, proc):
    env, traj, (a0, obs, a1) = crop_then(tok, proc, "<think>a long thought that never", hit_limit=True)
    assert traj.void and not traj.exceed and tok.im_end_id not in a1
    np.testing.assert_array_equal(traj.loss_mask, expected_mask(env, [(len(a0), 1), (len(obs), 0), (len(a1), 0)]))
    # the observation message's own <|im_end|> is where the mask stops; the turns are still recorded
    last_end = env.prompt_length + len(a0) + np.flatnonzero(obs == tok.im_end_id)[-1]
    assert traj.loss_mask[: last_end + 1].sum() == len(a0) and not traj.loss_mask[last_end + 1:].any()
    assert traj.sampled_tokens == len(a0) + len(a1) == int(traj.loss_mask.sum()) + len(a1)
    np.testing.assert_array_equal(traj.sampled_mask, expected_mask(env, [(len(a0), 1), (len(obs), 0), (len(a1), 1)]))


def test_over_turn_last_turn_has_no_loss(tok, proc):
    env, traj, (a0, obs, a1) = crop_then(tok, proc, CROP, hit_limit=False, max_turns=2)
    assert traj.over_turn and [t.outcome for t in traj.turns] == ["crop", "over_turn"]
    assert tok.decode(traj.token_ids[-len(a1):]).endswith("</grounding>")
    np.testing.assert_array_equal(traj.loss_mask, expected_mask(env, [(len(a0), 1), (len(obs), 0), (len(a1), 0)]))


def test_over_length_last_turn_has_no_loss(tok, proc):
    probe, _, (a0, obs, a1) = crop_then(tok, proc, CROP, hit_limit=False)
    # room for the first crop and its observation, and for the second call, but not its observation
    limit = probe.prompt_length + len(a0) + len(obs) + len(a1) + 1
    env, traj, _ = crop_then(tok, proc, CROP, hit_limit=False, max_context=limit + 500, context_guard=500)
    assert traj.over_length and [t.outcome for t in traj.turns] == ["crop", "over_length"]
    np.testing.assert_array_equal(traj.loss_mask, expected_mask(env, [(len(a0), 1), (len(obs), 0), (len(a1), 0)]))


def test_response_without_any_end_token_is_all_zero(tok, proc):
    env = env_of(tok, proc)
    a0 = tok.encode("<think>cut before any answer")
    env.step(a0, hit_token_limit=True)
    traj = env.trajectory()
    assert tok.im_end_id in traj.token_ids[: env.prompt_length]  # the prompt's <|im_end|>s do not count
    assert traj.void and len(traj) == env.prompt_length + len(a0) and not traj.loss_mask.any()


def test_mask_after_last_end_on_plain_arrays():
    end = 9
    ids = np.array([end, 1, 2, 5, 5, end, 3, 4, 6, end, 7, 8])
    mask = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1])
    out = mask_after_last_end(ids, mask, prompt_length=3, end_id=end)
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0])
    assert out.dtype == np.int8 and mask[-1] == 1  # the input is not modified
    np.testing.assert_array_equal(mask_after_last_end(ids, mask, prompt_length=10, end_id=end), [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="loss mask of shape"):
        mask_after_last_end(ids, mask[:-1], 3, end)


@pytest.mark.parametrize("mask_exceeded", [True, False])
def test_grpo_weights_drop_cut_tokens_but_count_the_sequence(tok, proc, mask_exceeded):
    """seq-mean-token-mean: the cut last turn weighs 0; every trajectory counts in the denominator."""
    _, done, (a0, obs, a1) = crop_then(tok, proc, ANSWER, hit_limit=False)
    _, cut, _ = crop_then(tok, proc, "<think>never finished", hit_limit=True)
    _, over, _ = crop_then(tok, proc, CROP, hit_limit=False, max_turns=2)
    single = env_of(tok, proc)
    single.step(tok.encode("<think>cut"), hit_token_limit=True)
    trajs = [done, cut, over, single.trajectory()]
    examples = examples_from_trajectories(trajs, proc, agg="seq-mean-token-mean", advantages=[1.0, -1.0, -1.0, -1.0],
                                          mask_exceeded=mask_exceeded)
    n = len(trajs)  # all four count, including the all-zero ones
    p0 = done.prompt_length
    first = np.zeros(len(cut), np.float32)
    first[p0:p0 + len(a0)] = 1.0  # only the first (crop) turn of the cut trajectory is trained
    np.testing.assert_array_equal(examples[1].weights, first / len(a0) / n)
    assert not examples[1].weights[p0 + len(a0):].any()
    np.testing.assert_array_equal(examples[0].weights, done.loss_mask.astype(np.float32) / (len(a0) + len(a1)) / n)
    if mask_exceeded:  # over-turn masking zeroes the whole exceeded trajectory
        assert not examples[2].weights.any()
    else:  # without it (the ablation) the over-turn call itself is still untrained
        trained = np.zeros(len(over), np.float32)
        trained[p0:p0 + len(a0)] = 1.0
        np.testing.assert_array_equal(examples[2].weights, trained / len(a0) / n)
    assert not examples[3].weights.any()
    # the same numbers as the aggregation on the masks directly: the zero rows stay in n
    ref = token_weights([e.loss_mask for e in examples], "seq-mean-token-mean")
    for e, r in zip(examples, ref):
        np.testing.assert_array_equal(e.weights, r)
    assert sum(float(e.weights.sum()) for e in examples) == pytest.approx((2 if mask_exceeded else 3) / n)
