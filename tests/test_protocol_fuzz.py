"""Adversarial assistant turns against the protocol (issue 17 "Hardening").

A turn is model output, so anything may be in it. Whatever it is, `env.step` must answer with the
protocol's error turn rather than raise, must never execute it, must not let it put a special token
into the context, and must take linear time (the released call regex backtracked for minutes on an
8K-token turn while holding the GIL). The parser must also agree with the released regexes, which
stay here as the oracle.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.environment import EnvConfig, VisualSearchEnv
from mini_o3_jax.agent.prompts import ERROR_TEMPLATE, OBSERVATION_TEMPLATE
from mini_o3_jax.processing.chat import Tokenizer, encode_template
from mini_o3_jax.processing.image import ImageProcessor
from tests.helpers import QUESTION, coord_image

# The released engine's regexes (recipe spec §1.3, §1.4, §1.8): the oracle for what a turn means.
RELEASED_CALL_RE = re.compile(r'.*<grounding>{"bbox_2d": (.*),.*"source": [\',"](.*)[\',"]}</grounding>', re.DOTALL)
RELEASED_DETECT_RE = re.compile(r"<grounding>(.*?)</grounding>", re.DOTALL)
RELEASED_FINAL_RE = re.compile(r".*<answer>.*</answer>$", re.DOTALL)
RELEASED_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ORACLE_MAX_CHARS = 300  # the released regex is cubic; compare only where it answers quickly

SPECIAL_SPELLINGS = [
    "<|image_pad|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>",
    "<|endoftext|>", "<|video_pad|>", "<|vision_pad|>",
]
EXECUTED_FLAG = "MINI_O3_FUZZ_EXECUTED"  # set only if a payload below were ever run
PAYLOAD = f"__import__('os').environ.__setitem__('{EXECUTED_FLAG}', '1') or [0.1, 0.2, 0.3, 0.4]"

# ------------------------------------------------------------------------------------ strategies
NUMBERS = st.one_of(
    st.sampled_from([
        "0", "0.1", "0.5", "1", "-0.5", "+0.3", "1e-3", "0x1F", "0o7", "0b1", "1_0", ".5", "5.", "00",
        "nan", "NaN", "inf", "Infinity", "-Infinity", "1e999", "-1e999", "1e308", "float('nan')", "True",
        "None", "'0.4'", "1j", "0.1+0.2", "--1", "０.５", "٠.٥", "²", "0.1 # comment\n", "...",
    ]),
    st.integers(1, 700).map(lambda n: "9" * n),
    st.integers(4000, 6000).map(lambda n: "1" * n),
    st.floats().map(repr),
)
SPECIAL = st.sampled_from(SPECIAL_SPELLINGS)
BOXES = st.one_of(
    st.lists(NUMBERS, max_size=6).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(NUMBERS, min_size=4, max_size=4).map(lambda xs: "(" + ",".join(xs) + ")"),
    NUMBERS.map(lambda x: f"[0.1, 0.2, 0.3, {x}]"),  # one bad number among good ones
    st.sampled_from([
        '{"x0": 0}', "{0.1, 0.2, 0.3, 0.4}", '"0.1, 0.2, 0.3, 0.4"', "0.5", "None", "[...]", "[]",
        "[[0.1, 0.2, 0.3, 0.4]]", "[0.1, 0.2, 0.3, 0.4,]", "[0.1, 0.2, 0.3, 0.4", "0.1, 0.2, 0.3, 0.4]",
    ]),
    st.integers(1, 3000).flatmap(lambda n: st.sampled_from([
        "[" * n + "0" + "]" * n, "(" * n + ")" * n, "-" * n + "1", "not " * n + "1", "[" * n, "{" * n + "}" * n,
        "[" + ", ".join(["[" * n + "0" + "]" * n] * 4) + "]",
    ])),
    st.sampled_from([
        PAYLOAD, f"[{PAYLOAD}, 0, 1, 1]", "__import__('os').system('true')", "[x for x in range(4)]",
        "lambda: 0", "(0.1,)*4", "[0.1]*4", "eval('[0,0,1,1]')", "open('/etc/passwd')", "f'{1}'", "b'1234'",
        "[0.1, 0.2, 0.3, 0.4][::-1]", "(yield)", "print(1) or [0, 0, 1, 1]",
    ]),
    st.text(max_size=2000),
    SPECIAL.map(lambda s: f"[0.1, 0.2, 0.3, '{s}']"),
    SPECIAL.map(lambda s: f"[0.1, 0.2, 0.3, 0.4]{s}"),
)
SOURCES = st.one_of(
    st.sampled_from([
        "original_image", "observation_0", "observation_1", "observation_2", "observation_", "observation_-1",
        "observation_1abc", "Observation_1", "observation_１", "observation_٣", "original_image ", "",
    ]),
    st.integers(1, 6000).map(lambda n: "observation_" + "1" * n),
    st.integers(1, 6000).map(lambda n: "observation_" + "0" * n + "1"),
    SPECIAL.map(lambda s: "observation_1" + s),
    st.lists(SPECIAL, min_size=1, max_size=5).map("".join),
    st.text(max_size=300),
)
QUOTE = st.sampled_from(['"', "'", ","])
CALLS = st.builds(
    lambda box, source, q1, q2: f'<grounding>{{"bbox_2d": {box}, "source": {q1}{source}{q2}}}</grounding>',
    BOXES, SOURCES, QUOTE, QUOTE,
)
UNIT = st.floats(0, 1)
VALID_CALLS = st.builds(  # well-formed calls (they crop), sometimes after special-token spellings
    lambda x, y, source, prefix: (
        f'{prefix}<grounding>{{"bbox_2d": {[min(x), min(y), max(x), max(y)]}, "source": "{source}"}}</grounding>'
    ),
    st.tuples(UNIT, UNIT), st.tuples(UNIT, UNIT), st.sampled_from(["original_image", "observation_0", "observation_1"]),
    st.lists(SPECIAL, max_size=3).map("".join),
)
PIECES = st.sampled_from([
    "<grounding>", "</grounding>", '{"bbox_2d": ', '"source": ', '"original_image"', '"observation_1"', "'",
    '"', ",", "}", "{", "[0.1, 0.2, 0.9, 0.8]", "}</grounding>", '"}</grounding>', "<answer>", "</answer>",
    "<think>", "</think>", " ", "\n", "observation_", "1e309", "nan", "[[[[[[", *SPECIAL_SPELLINGS,
])
SOUP = st.lists(PIECES, max_size=40).map("".join)
TURNS = st.one_of(
    CALLS,
    VALID_CALLS,
    st.tuples(SOUP, CALLS, SOUP).map("".join),  # a call among fragments
    st.tuples(CALLS, st.integers(1, 20)).map(lambda c: c[0][: -c[1]]),  # unclosed
    st.tuples(CALLS, CALLS).map(lambda c: "<grounding>" + c[0] + c[1]),  # nested / several calls
    SOUP,
    st.text(max_size=300),
)
FUZZ = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck), print_blob=True
)


# --------------------------------------------------------------------------------------- helpers
class ExecWatch:
    """Counts code compiled from a string and then run (eval/exec of model text) while armed.

    `ast.literal_eval` compiles to an AST but runs nothing, so it does not count.
    """

    def __init__(self) -> None:
        self.armed = False
        self.runs: list[str] = []
        sys.addaudithook(self._hook)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Arm around the code under test only: hypothesis itself execs generated source."""
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    def _hook(self, event: str, args: tuple) -> None:
        if self.armed and event == "exec" and getattr(args[0], "co_filename", "").startswith("<"):
            self.runs.append(args[0].co_filename)


EXEC_WATCH = ExecWatch()


def special_counts(ids: np.ndarray, special_ids: set[int]) -> collections.Counter:
    return collections.Counter(int(i) for i in ids if int(i) in special_ids)


@pytest.fixture(scope="module")
def proto_env(tok) -> VisualSearchEnv:
    return VisualSearchEnv(coord_image(120, 90), QUESTION, tok, ImageProcessor(), EnvConfig(max_turns=4))


@pytest.fixture(autouse=True)
def no_execution():
    os.environ.pop(EXECUTED_FLAG, None)
    EXEC_WATCH.runs.clear()
    yield
    assert EXECUTED_FLAG not in os.environ, "a payload in a model turn was executed"
    assert not EXEC_WATCH.runs, f"code compiled from a string was run: {EXEC_WATCH.runs[:3]}"


def test_exec_watch_sees_eval():
    """The watch would notice the released `eval`; without this the no-execution checks prove nothing."""
    with EXEC_WATCH.watching():
        eval("[0, 0, 1, 1]")  # noqa: S307 - the very thing the watch must catch
    assert EXEC_WATCH.runs
    EXEC_WATCH.runs.clear()


# ------------------------------------------------------------------------------------ parser fuzz
def check_turn_against_release(text: str) -> None:
    """The parser agrees with the released regexes (where they are fast) and only raises ToolCallError."""
    if len(text) <= ORACLE_MAX_CHARS:
        m = RELEASED_CALL_RE.match(text)
        assert protocol.find_call(text) == (None if m is None else (m.group(1), m.group(2)))
        assert protocol.has_tool_call(text) == (RELEASED_DETECT_RE.search(text) is not None)
        assert protocol.is_final_answer(text) == (RELEASED_FINAL_RE.match(text) is not None)
        a = RELEASED_ANSWER_RE.search(text)
        assert protocol.extract_answer([text]) == (None if a is None else a.group(1))
    for n_obs in (1, 3):
        try:
            with EXEC_WATCH.watching():
                c = protocol.parse_tool_call(text, n_obs)
        except protocol.ToolCallError as e:
            assert len(str(e)) < 400  # quotes of model text are cut short
            continue
        assert 0 <= c.index < n_obs and len(c.box) == 4 and all(np.isfinite(c.box))


PARSER_BATCH, PARSER_EXAMPLES = 8, 1000


def test_fuzz_parser_agrees_with_release_and_never_raises():
    seen: list[int] = []

    @settings(FUZZ, max_examples=PARSER_EXAMPLES)
    @given(st.lists(TURNS, min_size=PARSER_BATCH, max_size=PARSER_BATCH))
    def run(texts: list[str]) -> None:
        for text in texts:
            check_turn_against_release(text)
        seen.append(len(texts))

    run()
    assert sum(seen) >= PARSER_BATCH * PARSER_EXAMPLES  # 8,000 turns


def test_parser_matches_release_on_call_shaped_text():
    """Text made only of call fragments, where the released regex matches often (the order it picks)."""
    matched: list[bool] = []

    @settings(FUZZ, max_examples=300)
    @given(st.lists(st.lists(st.sampled_from([
        '<grounding>{"bbox_2d": ', '"source": ', '"source": "', "}</grounding>", '"}</grounding>', "'}</grounding>",
        ",}</grounding>", ",", '"', "[0.1, 0.2, 0.3, 0.4]", "observation_1", "x", ', "source": "',
        '<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "observation_1"}</grounding>',
    ]), min_size=2, max_size=12).map("".join), min_size=8, max_size=8))
    def run(texts: list[str]) -> None:
        for text in texts:
            m = RELEASED_CALL_RE.match(text)
            assert protocol.find_call(text) == (None if m is None else (m.group(1), m.group(2)))
            matched.append(m is not None)

    run()
    assert sum(matched) > 100  # the comparison exercised real matches, not only misses


# --------------------------------------------------------------------------------------- env fuzz
def check_step(env: VisualSearchEnv, tok: Tokenizer, ids: list[int], special_ids: set[int]) -> None:
    """One adversarial turn: no exception, and the appended tokens carry exactly the template's specials."""
    with EXEC_WATCH.watching():
        r = env.step(ids)
    if r.done:
        assert len(r.append_ids) == 0
        return
    if r.turn.outcome == "error":
        template = encode_template(tok, ERROR_TEMPLATE, error="x")
        assert tok.decode(r.append_ids) == r.turn.message
    else:
        assert r.turn.outcome == "crop" and r.image is not None
        template = encode_template(tok, OBSERVATION_TEMPLATE, action=0, observation=1)
    expected = special_counts(template, special_ids)
    if r.image is not None:  # the template's one <|image_pad|>, expanded to the crop's token count
        expected[tok.image_pad_id] = int(np.prod(r.image.grid_thw)) // 4
    assert special_counts(r.append_ids, special_ids) == expected


ENV_BATCH, ENV_EXAMPLES = 3, 800


def test_fuzz_env_step_never_raises_nor_injects_special_tokens(tok, proto_env):
    special_ids = {tok.token_to_id(s) for s in tok.special_tokens}
    seen: list[int] = []

    @settings(FUZZ, max_examples=ENV_EXAMPLES)
    @given(st.lists(st.tuples(TURNS, st.booleans()), min_size=ENV_BATCH, max_size=ENV_BATCH))
    def run(turns: list[tuple[str, bool]]) -> None:
        env = proto_env.copy()
        for text, spelled in turns:
            if env.done:
                env = proto_env.copy()
            # spelled: the model wrote "<|image_pad|>" out of ordinary tokens (what the audit found);
            # else the ids hold the real special tokens, which decoding skips
            check_step(env, tok, tok.encode_plain(text) if spelled else tok.encode(text), special_ids)
        traj = env.trajectory()
        assert traj.token_ids.shape == traj.loss_mask.shape and len(traj.images) == len(traj.grids)
        seen.append(len(turns))

    run()
    assert sum(seen) >= ENV_BATCH * ENV_EXAMPLES  # 2,400 turns


def test_fuzz_template_ids_equal_plain_encode_for_ordinary_text(tok):
    """For text without special-token spellings the env's ids are what they always were."""

    @settings(FUZZ, max_examples=300)
    @given(st.text(max_size=200).filter(lambda s: "<|" not in s), st.integers(0, 40))
    def run(error: str, action: int) -> None:
        assert encode_template(tok, ERROR_TEMPLATE, error=error).tolist() == tok.encode(
            ERROR_TEMPLATE.format(error=error))
        assert encode_template(tok, OBSERVATION_TEMPLATE, action=action, observation=action + 1).tolist() == (
            tok.encode(OBSERVATION_TEMPLATE.format(action=action, observation=action + 1)))

    run()


# ------------------------------------------------------------------------------------------ timing
FRAGMENT = '<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "observation_1"} '
DEGENERATE = {
    # the audit's turn: call-like fragments, then one malformed call (released: ~200 s at 8K tokens)
    "fragments_then_malformed": (FRAGMENT, '<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "x}</grounding>'),
    "open_tags_never_closed": ("<grounding>{ ", "</think>"),
    "source_keys_then_tail": ('"source": "x", ', '<grounding>{"bbox_2d": [0, 0, 1, 1], "source": "x"}</grounding>'),
    "commas_in_box": (",, ", '<grounding>{"bbox_2d": [0, "source": "x"}</grounding>'),
    "tails_without_quote": ("x}</grounding> ", '<grounding>{"bbox_2d": [0, 0, 1, 1]}</grounding>'),
    "answers_never_closed": ("<answer> a ", "<answer> b"),
}


def degenerate_ids(tok: Tokenizer, name: str, tokens: int) -> list[int]:
    fragment, tail = DEGENERATE[name]
    unit = len(tok.encode(fragment * 64)) / 64
    return tok.encode(fragment * int(tokens / unit) + tail)


def min_seconds(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_8k_token_turn_steps_in_under_50ms(tok, proto_env, name):
    ids = degenerate_ids(tok, name, 8192)
    assert 8000 <= len(ids) <= 8400
    envs = [proto_env.copy() for _ in range(5)]
    results = []
    best = min_seconds(lambda: results.append(envs[len(results)].step(ids)))
    assert best < 0.05, f"{name}: env.step of an 8K-token turn took {best * 1e3:.1f} ms"
    assert results[0].turn.outcome in ("error", "final")


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_parse_time_grows_linearly(tok, name):
    """4x the text costs under 8x the time: linear, not quadratic (the released regex: ~14x per 2x)."""
    texts = [tok.decode(degenerate_ids(tok, name, n), skip_special_tokens=True) for n in (2048, 8192)]

    def parse(text: str) -> None:
        protocol.has_tool_call(text)
        protocol.is_final_answer(text)
        protocol.extract_answer([text])
        with contextlib.suppress(protocol.ToolCallError):
            protocol.parse_tool_call(text, 3)

    # 50 parses per sample so microsecond parses still measure; 1 ms slack absorbs timer noise
    small, large = (min_seconds(lambda t=t: [parse(t) for _ in range(50)], repeats=7) for t in texts)
    assert large < 8 * small + 1e-3, f"{name}: {small * 1e3:.2f} ms -> {large * 1e3:.2f} ms for 4x the text"
