"""The Mini-o3 protocol against the recipe spec (§1.3-§1.8, §4.5), driven by a scripted policy.

Every turn below is what a model could emit; the environment must produce the outcome, crop box,
appended message and flags that the released engine would, token for token.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.environment import EnvConfig, VisualSearchEnv
from mini_o3_jax.agent.prompts import ERROR_TEMPLATE, OBSERVATION_TEMPLATE, SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import IM_END, Tokenizer, expand_image_pads
from mini_o3_jax.processing.resize import resize_crop, resize_original
from tests.helpers import QUESTION, coord_image


def origin_of(crop: Image.Image) -> tuple[int, int]:
    r, g, b = (int(c) for c in np.asarray(crop)[0, 0])
    return (b // 16) * 256 + r, (b % 16) * 256 + g


def call(box, source="original_image", think="<think>zoom</think> ") -> str:
    return f'{think}<grounding>{{"bbox_2d": {box}, "source": "{source}"}}</grounding>'


def make_env(tok, proc, **cfg) -> VisualSearchEnv:
    return VisualSearchEnv(coord_image(), QUESTION, tok, proc, EnvConfig(**cfg))


def play(env: VisualSearchEnv, tok: Tokenizer, turns: list[str]):
    """Feed scripted turns; a turn without a tool call ends with <|im_end|> as a model's would."""
    results = []
    for text in turns:
        ids = tok.encode(text if protocol.has_tool_call(text) else text + IM_END)
        results.append(env.step(ids))
        if results[-1].done:
            break
    return results


# --------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text, box, source, index",
    [
        (call([0.1, 0.2, 0.3, 0.4]), (0.1, 0.2, 0.3, 0.4), "original_image", 0),
        (call("[0, 0, 1, 1]", "observation_2"), (0, 0, 1, 1), "observation_2", 2),
        (call("[0.1,0.2,0.3,0.4]", "observation_0"), (0.1, 0.2, 0.3, 0.4), "observation_0", 0),
        # the last call of a turn is the one that counts
        (call([0.5, 0.5, 0.6, 0.6]) + " then " + call([0.1, 0.1, 0.2, 0.2], "observation_1"),
         (0.1, 0.1, 0.2, 0.2), "observation_1", 1),
        # single quotes around the source are accepted by the released regex
        ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": \'original_image\'}</grounding>',
         (0.1, 0.2, 0.3, 0.4), "original_image", 0),
        # a tuple is a literal list of 4 numbers to eval, so it is accepted too
        (call("(0.1, 0.2, 0.3, 0.4)"), (0.1, 0.2, 0.3, 0.4), "original_image", 0),
        # the source is matched as a prefix and its digits as a number, as released
        (call([0.1, 0.2, 0.3, 0.4], "observation_0002"), (0.1, 0.2, 0.3, 0.4), "observation_0002", 2),
        (call([0.1, 0.2, 0.3, 0.4], "observation_1 (the crop)"), (0.1, 0.2, 0.3, 0.4), "observation_1 (the crop)", 1),
        (call([0.1, 0.2, 0.3, 0.4], "observation_" + "0" * 5000 + "1"), (0.1, 0.2, 0.3, 0.4),
         "observation_" + "0" * 5000 + "1", 1),
    ],
)
def test_parse_valid(text, box, source, index):
    c = protocol.parse_tool_call(text, num_observations=3)
    assert c.box == box and c.source == source and c.index == index


@pytest.mark.parametrize(
    "text, needle",
    [
        ('<grounding>{"source": "original_image", "bbox_2d": [0.1, 0.2, 0.3, 0.4]}</grounding>', "bbox_2d first"),
        ('<grounding>{"bbox_2d":[0.1, 0.2, 0.3, 0.4], "source": "original_image"}</grounding>', "bbox_2d first"),
        ('<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4]}</grounding>', "bbox_2d first"),
        (call("[0.1, 0.2, 0.3]"), "list of 4 numbers"),
        (call("[0.1, 0.2, 0.3, 0.4, 0.5]"), "list of 4 numbers"),
        (call("[0.1, 0.2, 0.3, x]"), "list of 4 numbers"),
        (call("__import__('os').system('true')"), "list of 4 numbers"),
        (call("[0.1, 0.2, 0.3, True]"), "hold numbers"),
        (call('[0.1, 0.2, 0.3, "0.4"]'), "hold numbers"),
        (call("[0.1, 0.2, 0.3, 1e999]"), "finite"),
        (call([0.1, 0.2, 0.3, 0.4], "observation_3"), "does not exist"),
        (call([0.1, 0.2, 0.3, 0.4], "observation_"), "'observation_i'"),
        (call([0.1, 0.2, 0.3, 0.4], "crop_1"), "'observation_i'"),
        # issue 17: each of these escaped env.step (ValueError, OverflowError, RecursionError)
        (call([0.1, 0.2, 0.3, 0.4], "observation_" + "1" * 5000), "does not exist"),
        (call("[0.1, 0.2, 0.3, %s]" % ("9" * 400)), "finite"),
        (call("[0.1, 0.2, 0.3, -%s]" % ("9" * 400)), "finite"),
        (call("[" * 3000 + "]" * 3000), "list of 4 numbers"),
        (call("[" + ", ".join(["[" * 150 + "0" + "]" * 150] * 4) + "]"), "list of 4 numbers"),
        (call("-" * 3000 + "1"), "list of 4 numbers"),
        (call("float('nan')"), "list of 4 numbers"),
        (call("[0.1, 0.2, 0.3, NaN]"), "list of 4 numbers"),
        (call("[0.1, 0.2, 0.3, Infinity]"), "list of 4 numbers"),
        (call("{0.1, 0.2, 0.3, 0.4}"), "list of 4 numbers"),
        (call("[0.1, 0.2, 0.3, 1j]"), "hold numbers"),
        (call("[0.1, 0.2, 0.3, ０.４]"), "list of 4 numbers"),  # fullwidth digits are not Python numbers
    ],
)
def test_parse_errors(text, needle):
    with pytest.raises(protocol.ToolCallError, match=needle.replace("(", r"\(")):
        protocol.parse_tool_call(text, num_observations=3)


@pytest.mark.parametrize(
    "box, size, expected",
    [
        ((0.1, 0.2, 0.3, 0.4), (1000, 600), (100, 120, 300, 240)),
        ((0.1234, 0.5678, 0.9999, 1.0), (1000, 600), (123, 340, 999, 599)),  # int() truncates, clamp to w-1/h-1
        ((-0.5, -1.0, 0.5, 0.5), (1000, 600), (0, 0, 500, 300)),  # out of range is clamped, not an error
        ((0.0, 0.0, 2.0, 3.0), (10, 10), (0, 0, 9, 9)),
    ],
)
def test_pixel_box(box, size, expected):
    assert protocol.pixel_box(box, size) == expected


@pytest.mark.parametrize(
    "box, size, needle",
    [
        ((0.3, 0.3, 0.3, 0.5), (1000, 600), "0x120"),  # zero width
        ((0.5, 0.5, 0.4, 0.6), (1000, 600), "x1 must exceed x0"),  # inverted
        ((1.2, 1.2, 1.5, 1.5), (1000, 600), "0x0"),  # entirely outside: clamps to a point
        ((0.0, 0.0, 0.002, 1.0), (1000, 600), "aspect ratio"),  # 2x599 px
        ((0.0, 0.0, 1.0, 0.002), (100000, 600), "aspect ratio"),  # 99999x1 px
    ],
)
def test_pixel_box_errors(box, size, needle):
    with pytest.raises(protocol.ToolCallError, match=needle):
        protocol.pixel_box(box, size)


def test_aspect_just_below_limit_is_accepted():
    assert protocol.pixel_box((0.0, 0.0, 0.5, 1.0), (797, 3)) == (0, 0, 398, 2)  # 398x2: aspect 199


def test_answer_extraction_and_final_form():
    assert protocol.extract_answer(["<think>a</think><grounding>..</grounding>", "<answer> 42 </answer>"]) == " 42 "
    assert protocol.extract_answer(["<answer>A</answer> <answer>B</answer>"]) == "A"  # the first one
    assert protocol.extract_answer(["<answer>multi\nline</answer>"]) == "multi\nline"
    assert protocol.extract_answer(["<think>no answer</think>"]) is None
    assert protocol.is_final_answer("<think>x</think> <answer>B</answer>")
    assert protocol.is_final_answer("<answer>B</answer>\n")  # `$` allows one trailing newline
    assert not protocol.is_final_answer("<answer>B</answer> trailing words")
    assert not protocol.is_final_answer("<think>x</think>")


# ----------------------------------------------------------------------------------- environment
def test_prompt_is_the_mini_o3_first_turn(tok, proc):
    env = make_env(tok, proc)
    text = tok.decode(env.prompt_ids)
    n = int(np.prod(env.grids[0])) // 4
    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT_TOOL_CROP + "<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|vision_end|>\nWhat is written on the sign?<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|image_pad|>") == n
    assert env.images[0].size == resize_original(coord_image()).size


def test_crop_of_original_then_of_observation_then_answer(tok, proc):
    env = make_env(tok, proc, max_turns=6)
    r = play(env, tok, [
        call([0.1, 0.2, 0.3, 0.4]),
        call([0.5, 0.5, 1.0, 1.0], "observation_1"),
        "<think>I see it.</think> <answer>STOP</answer>",
    ])
    t0, t1, t2 = (x.turn for x in r)
    assert [t.outcome for t in (t0, t1, t2)] == ["crop", "crop", "final"]
    assert t0.pixel_box == (100, 120, 300, 240) and t0.observation == 1
    # observation_1 is the raw 200x120 crop: boxes are relative to *its* full resolution
    assert env.observations[1].size == (200, 120) and origin_of(env.observations[1]) == (100, 120)
    assert t1.source_index == 1 and t1.pixel_box == (100, 60, 199, 119)
    assert env.observations[2].size == (99, 59) and origin_of(env.observations[2]) == (200, 180)
    # the model sees the crop after Mini-o3's crop resize (here: lifted to >= 40k pixels, NEAREST)
    for raw, seen in zip(env.observations[1:], env.images[1:]):
        assert seen.size == resize_crop(raw).size and seen.size[0] * seen.size[1] >= 40_000 - 400
    assert r[0].image is not None and r[0].image.grid_thw.tolist() == [env.grids[1].tolist()]
    traj = env.trajectory()
    assert traj.answer == "STOP" and traj.answered and not (traj.void or traj.exceed) and traj.num_turns == 3
    assert traj.grids.shape == (3, 3) and len(traj.images) == 3


def test_token_stream_and_loss_mask(tok, proc):
    env = make_env(tok, proc)
    turns = [call([0.1, 0.2, 0.3, 0.4]), "<answer>7</answer>"]
    r = play(env, tok, turns)
    traj = env.trajectory()
    ids, mask = traj.token_ids, traj.loss_mask
    n0 = env.prompt_length
    a0 = tok.encode(turns[0])
    a1 = tok.encode(turns[1] + IM_END)
    obs = r[0].append_ids
    assert len(traj) == n0 + len(a0) + len(obs) + len(a1)
    np.testing.assert_array_equal(ids[n0:n0 + len(a0)], a0)
    np.testing.assert_array_equal(ids[-len(a1):], a1)
    # mask is 1 exactly on sampled tokens, including the final <|im_end|>; never on the env's <|im_end|>
    expected = np.concatenate([np.zeros(n0), np.ones(len(a0)), np.zeros(len(obs)), np.ones(len(a1))])
    np.testing.assert_array_equal(mask, expected)
    assert ids[-1] == tok.im_end_id and mask[-1] == 1
    obs_text = tok.decode(obs)
    n_img = int(np.prod(env.grids[1])) // 4
    assert obs_text == OBSERVATION_TEMPLATE.format(action=0, observation=1).replace(
        "<|image_pad|>", "<|image_pad|>" * n_img)
    # token-in/token-out: re-tokenising the whole text gives the same ids (boundaries at special tokens)
    pad = tok.image_pad_id
    first_of_run = (ids != pad) | np.concatenate([[True], ids[:-1] != pad])
    collapsed = ids[first_of_run]
    np.testing.assert_array_equal(tok.encode(tok.decode(collapsed)), collapsed)
    runs = [int(np.prod(g)) // 4 for g in env.grids]
    np.testing.assert_array_equal(expand_image_pads(collapsed, runs, pad), ids)


@pytest.mark.parametrize("numbering, expected", [("released", 2), ("crops", 1)])
def test_observation_number_after_an_error_turn(tok, proc, numbering, expected):
    env = make_env(tok, proc, observation_numbering=numbering)
    r = play(env, tok, [call("[0.1, 0.2]"), call([0.1, 0.2, 0.3, 0.4])])
    assert r[0].turn.outcome == "error" and r[1].turn.outcome == "crop"
    assert r[1].turn.message == OBSERVATION_TEMPLATE.format(action=1, observation=expected)
    assert r[1].turn.observation == 1  # observation_1 resolves to the first crop either way


@pytest.mark.parametrize(
    "turn, needle",
    [
        ('<grounding>{"source": "original_image", "bbox_2d": [0.1, 0.2, 0.3, 0.4]}</grounding>', "bbox_2d first"),
        ("<grounding>not json at all</grounding>", "bbox_2d first"),
        (call("[0.3, 0.3, 0.3, 0.5]"), "x1 must exceed x0"),
        (call("[0.0, 0.0, 0.002, 1.0]"), "aspect ratio"),
        (call([0.1, 0.2, 0.3, 0.4], "observation_1"), "does not exist"),
    ],
)
def test_error_turns(tok, proc, turn, needle):
    env = make_env(tok, proc)
    r = play(env, tok, [turn])[0]
    assert not r.done and r.image is None and r.turn.outcome == "error" and needle in r.turn.error
    assert r.turn.message == ERROR_TEMPLATE.format(error=r.turn.error)
    assert tok.decode(r.append_ids) == r.turn.message
    assert "Countinue" in r.turn.message and len(env.observations) == 1


def test_error_message_quotes_model_text_briefly(tok, proc):
    env = make_env(tok, proc)
    r = env.step(tok.encode(call([0.1, 0.2, 0.3, 0.4], "observation_" + "7" * 20000)))
    assert r.turn.outcome == "error" and "does not exist" in r.turn.error
    assert len(r.turn.error) < 300 and len(r.append_ids) < 200  # not 20,000 digits echoed back


@pytest.mark.parametrize("spelling", ["<|image_pad|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>"])
def test_spelled_special_tokens_in_an_error_stay_text(tok, proc, spelling):
    """Issue 17: the model spells a special token out of ordinary tokens inside `source`; the error
    turn quotes it, and it must come back as text, not as the control token."""
    env = make_env(tok, proc)
    sampled = tok.encode_plain(call([0.1, 0.2, 0.3, 0.4], "observation_1" + spelling))
    assert tok.token_to_id(spelling) not in sampled  # the model never sampled the special id itself
    r = env.step(sampled)
    assert r.turn.outcome == "error" and spelling in r.turn.message
    assert tok.decode(r.append_ids) == r.turn.message
    specials = [int(i) for i in r.append_ids if tok.id_to_token(int(i)) in tok.special_tokens]
    assert specials == [tok.im_end_id, tok.im_start_id, tok.im_end_id, tok.im_start_id]
    # the episode goes on: one image-pad run per image, as the engine's extend requires
    r = env.step(tok.encode(call([0.1, 0.2, 0.3, 0.4])))
    assert r.turn.outcome == "crop"
    traj = env.trajectory()
    assert int(np.sum(traj.token_ids == tok.image_pad_id)) == sum(int(np.prod(g)) // 4 for g in traj.grids)


def test_tool_call_at_the_last_turn_is_over_turn(tok, proc):
    env = make_env(tok, proc, max_turns=3)
    r = play(env, tok, [call([0.1, 0.1, 0.5, 0.5]), call("[1, 2]"), call([0.1, 0.1, 0.5, 0.5])])
    assert [x.turn.outcome for x in r] == ["crop", "error", "over_turn"]
    traj = env.trajectory()
    assert traj.over_turn and traj.exceed and not traj.void and traj.answer is None
    assert len(env.observations) == 2  # the last call was not executed
    # the over-turn call ends at </grounding>, after the response's last <|im_end|>: no loss (spec §4.3)
    assert traj.loss_mask[-1] == 0 and tok.decode(traj.token_ids[-8:]).endswith("</grounding>")


def test_answer_at_the_last_turn_is_final(tok, proc):
    env = make_env(tok, proc, max_turns=2)
    r = play(env, tok, [call([0.1, 0.1, 0.5, 0.5]), "<answer>a</answer>"])
    assert r[-1].turn.outcome == "final" and not env.trajectory().exceed


def test_image_limit_is_over_turn(tok, proc):
    env = make_env(tok, proc, max_turns=10, max_images=3)
    r = play(env, tok, [call([0.0, 0.0, 0.5, 0.5])] * 4)
    assert [x.turn.outcome for x in r] == ["crop", "crop", "over_turn"]
    assert len(env.observations) == 3 and env.trajectory().over_turn


@pytest.mark.parametrize(
    "turn, hit_limit, void",
    [
        ("<think>done</think> <answer>B</answer>", False, False),
        ("<think>I give up</think>", False, True),  # no answer
        ("<think>done</think> <answer>B</answer>", True, True),  # cut by the per-turn token budget
        ("<answer>B</answer> and more text", False, True),  # does not end with the answer
    ],
)
def test_final_turns_and_void(tok, proc, turn, hit_limit, void):
    env = make_env(tok, proc)
    r = env.step(tok.encode(turn + ("" if hit_limit else IM_END)), hit_token_limit=hit_limit)
    traj = env.trajectory()
    assert r.done and r.turn.outcome == "final" and traj.void is void and not traj.exceed
    assert traj.answered is ("<answer>" in turn)


def test_context_overflow_before_the_tool(tok, proc):
    env0 = make_env(tok, proc)
    turn = tok.encode(call([0.1, 0.1, 0.5, 0.5]))
    limit = env0.prompt_length + len(turn)  # the context reaches the limit with this very turn
    env = make_env(tok, proc, max_context=limit + 2000)
    r = env.step(turn)
    assert r.done and r.turn.outcome == "over_length" and env.trajectory().over_length
    assert len(env.observations) == 1 and r.turn.pixel_box is None


def test_context_overflow_after_the_observation_is_rolled_back(tok, proc):
    env0 = make_env(tok, proc)
    turn = tok.encode(call([0.1, 0.1, 0.5, 0.5]))
    obs = env0.step(turn).append_ids
    limit = env0.prompt_length + len(turn) + len(obs)  # fits before the tool, not with the observation
    env = make_env(tok, proc, max_context=limit + 2000)
    r = env.step(turn)
    traj = env.trajectory()
    assert r.done and r.turn.outcome == "over_length" and traj.over_length and r.image is None
    assert len(env.observations) == 1 and len(traj.images) == 1  # crop and image rolled back
    assert len(traj) == env.prompt_length + len(turn) and not traj.loss_mask.any()  # no <|im_end|> sampled
    # one token more room and the observation fits
    env = make_env(tok, proc, max_context=limit + 2001)
    assert env.step(turn).turn.outcome == "crop"


def test_out_of_vocab_ids_are_dropped(tok, proc):
    env = make_env(tok, proc)
    assert env.max_token_id == tok.vocab_size - 1 == 151668  # this tokenizer also has Qwen3's <think>
    ids = tok.encode("<answer>x</answer>" + IM_END)
    env.step([151700] + ids + [152063])
    traj = env.trajectory()
    np.testing.assert_array_equal(traj.token_ids[env.prompt_length:], ids)
    env = make_env(tok, proc, max_token_id=151664)  # the released constant drops the Qwen3-only ids
    env.step(tok.encode("<think>a</think><answer>x</answer>"))
    assert not np.isin(env.trajectory().token_ids[env.prompt_length:], [151667, 151668]).any()


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="max_turns"):
        EnvConfig(max_turns=0)
    with pytest.raises(ConfigError, match="context_guard"):
        EnvConfig(max_context=1000, context_guard=1000)
    with pytest.raises(ConfigError, match="observation_numbering"):
        EnvConfig(observation_numbering="fixed")


def test_step_after_done_raises(tok, proc):
    env = make_env(tok, proc)
    env.step(tok.encode("<answer>x</answer>"))
    with pytest.raises(RuntimeError, match="finished"):
        env.step(tok.encode("<answer>y</answer>"))


# -------------------------------------------------------------------------------------- fuzzing
PIECES = st.sampled_from([
    "<grounding>", "</grounding>", '{"bbox_2d": ', '"source": ', '"original_image"', '"observation_1"',
    "'observation_9'", "[0.1, 0.2, 0.9, 0.8]", "[", "]", ",", "}", "{", "1e309", "-0.5", "nan", "<answer>",
    "</answer>", " ", "\n", "observation_", "(1,2,3,4)", "__import__('os')", "[[[[[[", "0.0",
])
TEXTS = st.one_of(st.text(max_size=200), st.lists(PIECES, max_size=30).map("".join))


@settings(max_examples=400, deadline=None)
@given(TEXTS, st.integers(1, 5))
def test_fuzz_parser_only_raises_tool_call_errors(text, n_obs):
    try:
        c = protocol.parse_tool_call(text, n_obs)
    except protocol.ToolCallError:
        return
    assert 0 <= c.index < n_obs and len(c.box) == 4


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=4, max_size=4),
       st.integers(1, 5000), st.integers(1, 5000))
def test_fuzz_pixel_box(box, w, h):
    try:
        x0, y0, x1, y1 = protocol.pixel_box(box, (w, h))
    except protocol.ToolCallError:
        return
    assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
    assert max(x1 - x0, y1 - y0) / min(x1 - x0, y1 - y0) < 200


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TEXTS, min_size=1, max_size=4))
def test_fuzz_episode_never_raises(tok, proc, turns):
    env = VisualSearchEnv(coord_image(120, 90), QUESTION, tok, proc, EnvConfig(max_turns=3))
    for text in turns:
        if env.done:
            break
        r = env.step(tok.encode(text))
        assert r.done or len(r.append_ids) > 0
    traj = env.trajectory()
    assert traj.token_ids.shape == traj.loss_mask.shape and len(traj.images) == len(traj.grids)
