"""Rewards: answer extraction, the LLM judge against a real local HTTP server, and the rule-based scorers.

The judge tests start a ``ThreadingHTTPServer`` on 127.0.0.1 (conftest.py's `server` fixture) that speaks just
enough of the chat-completions API: it records every request and answers from a per-test script (fail, stall,
return garbage, or grade the predicted answer against the ground truth it finds in the prompt). Nothing of ours
is mocked.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import socket
import threading
import time
import urllib.parse

import pytest

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.scoring.judge import JudgeItem, LLMJudge
from mini_o3_jax.scoring.judge_config import JudgeConfig, config_defaults
from mini_o3_jax.scoring.judge_prompts import SYSTEM_PROMPT, USER_PROMPT_TEMPLATE, build_messages, parse_score
from mini_o3_jax.scoring.rules import SCORERS, rule_score, score_choice, score_exact, score_numeric
from mini_o3_jax.scoring.scorer import Scorer, extract_answer
from tests.helpers import FakeJudgeServer, Recorded, Reply, grade

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "<image>\nWhat colour is the car parked next to the red door?"

# The judge prompts exactly as spec §4.5 prints them (copied from the spec, not imported: `\n` and `\"` in the
# spec are this literal's escapes).
SPEC_SYSTEM = "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs.\nYour task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:\n------\n##INSTRUCTIONS:\n- Focus on the meaningful match between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid matches.\n- Evaluate the correctness of the prediction compared to the answer."
SPEC_USER = "I will give you a question related to an image and the following text as inputs:\n\n1. **Question Related to the Image**: {question}\n2. **Ground Truth Answer**: {ground_truth}\n3. **Model Predicted Answer**: {prediction}\n\nYour task is to evaluate the model's predicted answer against the ground truth answer, based on the context provided by the question related to the image. Consider the following criteria for evaluation:\n- **Relevance**: Does the predicted answer directly address the question posed, considering the information provided by the given question?\n- **Accuracy**: Compare the predicted answer to the ground truth answer. You need to evaluate from the following two perspectives:\n(1) If the ground truth answer is open-ended, consider whether the prediction accurately reflects the information given in the ground truth without introducing factual inaccuracies. If it does, the prediction should be considered correct.\n(2) If the ground truth answer is a definitive answer, strictly compare the model's prediction to the actual answer. Pay attention to unit conversions such as length and angle, etc. As long as the results are consistent, the model's prediction should be deemed correct.\n**Output Format**:\nYour response should include an integer score indicating the correctness of the prediction: 1 for correct and 0 for incorrect. Note that 1 means the model's prediction strictly aligns with the ground truth, while 0 means it does not.\nThe format should be \"Score: 0 or 1\""

# --------------------------------------------------------------------------------------------------------------
# The fake judge server (tests/helpers.py) as a configured client
# --------------------------------------------------------------------------------------------------------------


def make_judge(srv: FakeJudgeServer, **kw: object) -> LLMJudge:
    kw.setdefault("url", srv.url + "/v1")
    kw.setdefault("backoff_s", 0.0)
    return LLMJudge(JudgeConfig(**kw))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# extract_answer / parse_score
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ("<answer>red</answer>", "red"),
        ("<think>hmm</think> <answer>  blue \n</answer>", "blue"),
        ("<answer>first</answer> then <answer>second</answer>", "first"),  # the first match only
        ("<answer>line one\nline two</answer>", "line one\nline two"),  # DOTALL
        (
            ["<think>zoom</think><grounding>{}</grounding>", "<answer>a", "b</answer>"],
            "a b",
        ),  # split across turns
        (["no answer here", "<answer>unclosed"], None),
        ("", None),
        ([], None),
        ("<answer></answer>", ""),
        ("<ANSWER>x</ANSWER>", None),  # the tag is case-sensitive, as in the release
    ],
)
def test_extract_answer(texts: list[str] | str, expected: str | None) -> None:
    assert extract_answer(texts) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The score is based on accuracy. Score: 1", 1.0),
        ("score: 0", 0.0),
        ("SCORE: 1 because the colours match", 1.0),
        # Released quirk kept on purpose: the token only has to *contain* a '1', so "10" (or "0.1") gives 1.0.
        ("Score:10", 1.0),
        ("Score: 1\nOn reflection... Score: 0", 0.0),  # the last 'score:' wins
        ("Score: 0\nCorrection, score: **1**", 1.0),
        ("Score:\n\n1", 1.0),  # first whitespace-separated token, across newlines
        ("Score: 0.1", 1.0),  # contains a '1'
        ("Score: **0**", 0.0),
        ("The answer is correct.", None),  # no 'score:' -> the attempt is retried
        ("Score: maybe", None),  # neither 0 nor 1 in the token -> retried, not scored 0
        ("Score: 1\nOn reflection, score: unclear", None),  # the last 'score:' decides, and it holds no digit
        ("Score:   ", None),
        ("", None),
    ],
)
def test_parse_score(reply: str, expected: float | None) -> None:
    assert parse_score(reply) == expected


# --------------------------------------------------------------------------------------------------------------
# LLMJudge over HTTP
# --------------------------------------------------------------------------------------------------------------


def test_openai_style_request(server: FakeJudgeServer) -> None:
    with make_judge(server, api_key="sk-test") as judge:
        got = judge.score([JudgeItem(QUESTION, "Blue", "blue"), JudgeItem(QUESTION, "Blue", "green")])
    assert got == [1.0, 0.0]
    assert len(server.requests) == 2
    for req in server.requests:
        assert req.path == "/v1/chat/completions"
        assert req.headers["authorization"] == "Bearer sk-test"
        assert "api-key" not in req.headers
        assert req.headers["content-type"] == "application/json"
        body = req.body
        assert body is not None
        assert body["model"] == "gpt-4o-2024-11-20"
        assert body["max_tokens"] == 16384
        assert body["temperature"] == 0.0
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert body["messages"][0]["content"] == SYSTEM_PROMPT
        assert all(isinstance(m["content"], str) for m in body["messages"])  # text only, no image parts
        assert QUESTION in req.user  # the raw question, <image> placeholder included
        assert "Blue" in req.user
    assert sorted(re.search(r"Model Predicted Answer\*\*: (\w+)", r.user).group(1) for r in server.requests) == [
        "blue",
        "green",
    ]
    assert judge.stats.calls == 2
    assert judge.stats.retries == judge.stats.failures == judge.stats.cache_hits == 0


def test_openai_style_without_key_sends_no_authorization(server: FakeJudgeServer) -> None:
    with make_judge(server, url=server.url + "/v1/", model="qwen-judge") as judge:
        assert judge.score([JudgeItem(QUESTION, "a", "a")]) == [1.0]
    (req,) = server.requests
    assert req.path == "/v1/chat/completions"  # the trailing slash of the base URL is tolerated
    assert "authorization" not in req.headers
    assert req.body is not None and req.body["model"] == "qwen-judge"


def test_azure_style_request(server: FakeJudgeServer) -> None:
    with make_judge(server, url=server.url, api_key="azure-secret", api_version="2024-06-01") as judge:
        assert judge.score([JudgeItem(QUESTION, "Blue", "BLUE")]) == [1.0]
    (req,) = server.requests
    parts = urllib.parse.urlsplit(req.path)
    assert parts.path == "/openai/deployments/gpt-4o-2024-11-20/chat/completions"
    assert urllib.parse.parse_qs(parts.query) == {"api-version": ["2024-06-01"]}
    assert req.headers["api-key"] == "azure-secret"
    assert "authorization" not in req.headers
    assert req.body is not None and req.body["temperature"] == 0.0


def test_retries_raise_temperature_then_succeed(server: FakeJudgeServer) -> None:
    server.script = lambda req, n: Reply(status=500) if n < 2 else grade(req, n)
    with make_judge(server) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "blue")]) == [1.0]
    temps = [r.body["temperature"] for r in server.requests if r.body]
    assert temps == pytest.approx([0.0, 0.2, 0.4])
    stats = judge.stats
    assert (stats.calls, stats.retries, stats.failures) == (3, 2, 0)


def test_temperature_capped_at_one(server: FakeJudgeServer) -> None:
    server.script = lambda req, n: Reply(status=503)
    with make_judge(server, attempts=8) as judge:
        assert judge.score([JudgeItem(QUESTION, "x", "x")]) == [None]
    temps = [r.body["temperature"] for r in server.requests if r.body]
    assert temps == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("status", [500, 429, 400, 401])
def test_always_failing_gives_none_after_all_attempts(server: FakeJudgeServer, status: int) -> None:
    server.script = lambda req, n: Reply(status=status, raw=b'{"error": {"message": "nope"}}')
    with make_judge(server, attempts=5) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "blue")]) == [None]
    assert len(server.requests) == 5
    stats = judge.stats
    assert (stats.calls, stats.retries, stats.failures) == (5, 4, 1)


def test_reply_without_score_is_retried(server: FakeJudgeServer) -> None:
    server.script = lambda req, n: Reply("Looks right to me!") if n == 0 else Reply("Score: 1")
    with make_judge(server) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "navy")]) == [1.0]
    assert len(server.requests) == 2


def test_score_without_0_or_1_is_retried_and_a_later_score_wins(server: FakeJudgeServer) -> None:
    server.script = lambda req, n: Reply("Hard to say. Score: maybe") if n == 0 else Reply("Score: 1")
    with make_judge(server) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "navy")]) == [1.0]  # not 0.0 from the first reply
    temps = [r.body["temperature"] for r in server.requests if r.body]
    assert temps == pytest.approx([0.0, 0.2])  # a second attempt, at the next temperature
    assert judge.stats.retries == 1 and judge.stats.failures == 0


def test_garbage_every_time_gives_none(server: FakeJudgeServer) -> None:
    replies = [
        Reply("no verdict"),
        Reply(raw=b"<html>not json</html>"),
        Reply(raw=b'{"choices": []}'),
        Reply(None),
    ]
    server.script = lambda req, n: replies[n % len(replies)]
    with make_judge(server, attempts=4) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "blue")]) == [None]
    assert len(server.requests) == 4


def test_slow_first_attempt_times_out_then_retries(server: FakeJudgeServer) -> None:
    server.script = lambda req, n: Reply("Score: 1", delay=1.0 if n == 0 else 0.0)
    with make_judge(server, timeout_s=0.3) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "blue")]) == [1.0]
    # gave up on the stalled request instead of waiting for it: waiting would have scored its late reply with
    # one request and no retry (no wall-clock bound here: a busy CI machine must not decide this test)
    assert len(server.requests) == 2
    assert judge.stats.retries == 1


def test_connection_refused_gives_none() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LLMJudge(JudgeConfig(url=f"http://127.0.0.1:{port}/v1", attempts=3, backoff_s=0.0)) as judge:
        assert judge.score([JudgeItem(QUESTION, "a", "a")]) == [None]
    assert judge.stats.calls == 3 and judge.stats.failures == 1


def test_missing_answer_scores_zero_without_request(server: FakeJudgeServer) -> None:
    with make_judge(server) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", None)]) == [0.0]
        assert judge.score([]) == []
    assert server.requests == []
    assert judge.stats.calls == 0


def test_identical_items_share_one_request(server: FakeJudgeServer) -> None:
    server.script = lambda req, n: Reply("Score: 1", delay=0.1)
    items = [JudgeItem(QUESTION, "blue", "blue")] * 4 + [JudgeItem(QUESTION, "blue", None)]
    with make_judge(server) as judge:
        assert judge.score(items) == [1.0, 1.0, 1.0, 1.0, 0.0]
        assert judge.score(items[:1]) == [1.0]  # now from the in-memory cache
    assert len(server.requests) == 1
    assert judge.stats.deduped == 3 and judge.stats.cache_hits == 1


def test_cache_survives_restart_and_skips_failures(server: FakeJudgeServer, tmp_path) -> None:
    server.script = lambda req, n: Reply(status=500) if "flaky" in req.user else grade(req, n)
    cache = tmp_path / "sub" / "judge.jsonl"
    items = [
        JudgeItem(QUESTION, "blue", "blue"),
        JudgeItem(QUESTION, "blue", "red"),
        JudgeItem("<image>\nflaky question", "x", "x"),
    ]
    with make_judge(server, cache_path=str(cache), attempts=2) as first:
        assert first.score(items) == [1.0, 0.0, None]
    assert len(server.requests) == 6 - 2  # 1 + 1 + 2 attempts
    assert len(cache.read_text().splitlines()) == 2  # the failure is not cached

    server.requests.clear()
    with make_judge(server, cache_path=str(cache), attempts=2) as second:
        assert second.score(items) == [1.0, 0.0, None]
    assert len(server.requests) == 2  # only the failed item is asked again
    assert all("flaky" in r.user for r in server.requests)
    assert second.stats.cache_hits == 2

    server.requests.clear()
    with make_judge(server, cache_path=str(cache), model="another-judge") as third:
        assert third.score(items[:1]) == [1.0]
    assert len(server.requests) == 1  # the model is part of the key


def test_corrupt_cache_lines_are_skipped(server: FakeJudgeServer, tmp_path) -> None:
    cache = tmp_path / "judge.jsonl"
    good, new = JudgeItem(QUESTION, "blue", "blue"), JudgeItem(QUESTION, "blue", "teal")
    with make_judge(server, cache_path=str(cache)) as judge:
        judge.score([good])
    valid_line = cache.read_text()
    # garbage, a record with a bad score, a valid record, then a line cut off mid-write (no newline)
    cache.write_text('not json\n{"key": "k", "score": "yes"}\n\n' + valid_line + '{"key": "abc", "sco')
    server.requests.clear()
    with pytest.warns(RuntimeWarning, match="corrupt") as record:
        judge = make_judge(server, cache_path=str(cache))
    assert len(record) == 3
    with judge:
        assert judge.score([good, new]) == [1.0, 0.0]
    assert len(server.requests) == 1  # only the new item
    # The new record starts on its own line, so a third judge reads it back (and warns only about the old lines).
    server.requests.clear()
    with pytest.warns(RuntimeWarning, match="corrupt") as record:
        again = make_judge(server, cache_path=str(cache))
    assert len(record) == 3
    with again:
        assert again.score([good, new]) == [1.0, 0.0]
    assert server.requests == []


def test_submit_is_non_blocking_and_concurrent(server: FakeJudgeServer) -> None:
    """No clock in it: the server holds every reply until the test opens a gate, so `submit` returning with
    the future not done, and 16 requests in flight at once, are facts whatever the machine's load."""
    gate = threading.Event()

    def held(req: Recorded, n: int) -> Reply:
        assert gate.wait(timeout=120), "the test never opened the gate"
        return Reply("Score: 1")

    server.script = held
    items = [JudgeItem(QUESTION, f"answer {i}", f"answer {i}") for i in range(64)]
    with make_judge(server, concurrency=16) as judge:
        future = judge.submit(items)
        assert isinstance(future, concurrent.futures.Future)
        assert not future.done()  # returned while no reply can have come back
        deadline = time.monotonic() + 60  # a bound on a hang only; reached in milliseconds on an idle machine
        while server.in_flight < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.in_flight == 16 and not future.done()  # 16 at once: concurrent, not serial
        gate.set()
        assert future.result(timeout=60) == [1.0] * 64
    assert len(server.requests) == 64
    assert server.max_in_flight == 16  # bounded by config.concurrency


def test_submit_after_close_is_an_error(server: FakeJudgeServer) -> None:
    judge = make_judge(server)
    judge.close()
    judge.close()  # idempotent
    with pytest.raises(RuntimeError, match="close"):
        judge.submit([JudgeItem(QUESTION, "a", "a")])


# --------------------------------------------------------------------------------------------------------------
# The judge's prompts (spec §4.5)
# --------------------------------------------------------------------------------------------------------------


def _fill(template: str, question: str, truth: str, prediction: str) -> str:
    """The template with its three fields substituted by plain replacement (independent of str.format)."""
    return template.replace("{question}", question).replace("{ground_truth}", truth).replace("{prediction}", prediction)


def test_judge_prompts_are_the_released_strings() -> None:
    assert SYSTEM_PROMPT == SPEC_SYSTEM and USER_PROMPT_TEMPLATE == SPEC_USER
    assert (JudgeConfig().system_prompt, JudgeConfig().user_prompt) == (SPEC_SYSTEM, SPEC_USER)
    assert SPEC_USER.endswith('The format should be "Score: 0 or 1"') and "\\" not in SPEC_USER


def test_build_messages_fills_the_raw_fields() -> None:
    question = "<image>\nWhat is written on the {left} sign?\n(A) STOP\n(B) EXIT"  # braces in data are data
    messages = build_messages(question, "B", "(B) EXIT")
    assert messages == [{"role": "system", "content": SPEC_SYSTEM},
                        {"role": "user", "content": _fill(SPEC_USER, question, "B", "(B) EXIT")}]
    assert messages[1]["content"].startswith(
        "I will give you a question related to an image and the following text as inputs:\n\n"
        "1. **Question Related to the Image**: <image>\nWhat is written on the {left} sign?\n(A) STOP\n(B) EXIT\n"
        "2. **Ground Truth Answer**: B\n3. **Model Predicted Answer**: (B) EXIT\n\nYour task is to evaluate")


def test_request_sends_the_released_prompts(server: FakeJudgeServer) -> None:
    question = "<image>\nWhich is larger? (A) the cup (B) the bowl"
    with make_judge(server) as judge:
        assert judge.score([JudgeItem(question, "B", "B")]) == [1.0]
    (req,) = server.requests
    assert req.body is not None
    assert req.body["messages"] == [{"role": "system", "content": SPEC_SYSTEM},
                                    {"role": "user", "content": _fill(SPEC_USER, question, "B", "B")}]


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("Q: {question} truth: {ground_truth}", r"missing \['prediction'\]"),
        ("{question} {ground_truth} {prediction} {answer}", r"unknown field\(s\) \['answer'\]"),
        ("{question} {solution} {prediction}", r"unknown field\(s\) \['solution'\]; missing \['ground_truth'\]"),
        ("{} {question} {ground_truth} {prediction}", r"unknown field\(s\) \[''\]"),
        ("{question {ground_truth} {prediction}", "not a valid format string"),
    ],
)
def test_bad_user_prompt_is_a_config_error(template: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        JudgeConfig(user_prompt=template)


CUSTOM_USER = "Q: {question}\nTruth: {ground_truth}\nSaid: {prediction}\nScore?"


def test_prompts_are_overridable_in_the_rl_config(server: FakeJudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reward.judge` of configs/rl_grpo.py, as `mini-o3 rl` reads it (`Scorer.check` builds its judge)."""
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.scoring.scorer import Scorer

    monkeypatch.setenv("MINI_O3_JUDGE_URL", server.url + "/v1")
    server.script = lambda req, n: Reply("Score: 1")  # `grade` reads the released prompt only
    cfg = load_config(os.path.join(REPO, "configs", "rl_grpo.py"),
                      ["reward.judge.system_prompt=Be strict.", f"reward.judge.user_prompt={CUSTOM_USER}"])
    judge_cfg = Scorer.check(cfg.reward.kind, cfg.reward.judge)
    assert judge_cfg is not None and judge_cfg.url == server.url + "/v1"  # the endpoint still from the environment
    with LLMJudge(judge_cfg) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "navy")]) == [1.0]
    (req,) = server.requests
    assert req.body is not None and req.body["messages"] == [
        {"role": "system", "content": "Be strict."},
        {"role": "user", "content": f"Q: {QUESTION}\nTruth: blue\nSaid: navy\nScore?"}]
    default = load_config(os.path.join(REPO, "configs", "rl_grpo.py"))
    assert Scorer.check(default.reward.kind, default.reward.judge) == JudgeConfig.from_env()  # the block's defaults change nothing
    bad = load_config(os.path.join(REPO, "configs", "rl_grpo.py"), ["reward.judge.user_prompt={question}"])
    with pytest.raises(ConfigError, match=r"missing \['ground_truth', 'prediction'\]"):
        Scorer.check(bad.reward.kind, bad.reward.judge)


def test_prompts_are_overridable_in_the_eval_config(server: FakeJudgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `judge` block of configs/eval.py, as `mini-o3 eval` reads it (`eval.run.judge_config`)."""
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.eval.run import judge_config

    monkeypatch.setenv("MINI_O3_JUDGE_URL", server.url + "/v1")
    server.script = lambda req, n: Reply("Score: 1")  # `grade` reads the released prompt only
    cfg = load_config(os.path.join(REPO, "configs", "eval.py"), [f"judge.user_prompt={CUSTOM_USER}"])
    with LLMJudge(judge_config(cfg.judge)) as judge:
        assert judge.score([JudgeItem(QUESTION, "blue", "blue")]) == [1.0]
    (req,) = server.requests
    assert req.body is not None and req.body["messages"][0]["content"] == SPEC_SYSTEM
    assert req.body["messages"][1]["content"] == f"Q: {QUESTION}\nTruth: blue\nSaid: blue\nScore?"
    bad = load_config(os.path.join(REPO, "configs", "eval.py"),
                      ["judge.user_prompt={question} {ground_truth} {prediction} {image}"])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['image'\]"):
        judge_config(bad.judge)


def test_a_changed_prompt_does_not_reuse_cached_scores(server: FakeJudgeServer, tmp_path) -> None:
    cache = str(tmp_path / "judge.jsonl")
    item = JudgeItem(QUESTION, "blue", "blue")
    with make_judge(server, cache_path=cache) as judge:
        assert judge.score([item]) == [1.0]
    server.script = lambda req, n: Reply("Score: 0")  # the stricter prompt's judge disagrees
    with make_judge(server, cache_path=cache, system_prompt="Be very strict.") as judge:
        assert judge.score([item]) == [0.0]  # asked again, not the score cached under the released prompt
    with make_judge(server, cache_path=cache, user_prompt=CUSTOM_USER) as judge:
        assert judge.score([item]) == [0.0]
    assert len(server.requests) == 3
    with make_judge(server, cache_path=cache) as judge:  # the released prompts again: their cached score
        assert judge.score([item]) == [1.0]
    assert len(server.requests) == 3


# --------------------------------------------------------------------------------------------------------------
# JudgeConfig
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({}, "url"),
        ({"url": "localhost:8000/v1"}, "url"),
        ({"url": "http://x/v1", "model": ""}, "model"),
        ({"url": "http://x/v1", "attempts": 0}, "attempts"),
        ({"url": "http://x/v1", "concurrency": 0}, "concurrency"),
        ({"url": "http://x/v1", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_config_raises_config_error(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LLMJudge(JudgeConfig(**overrides))


_ENV_NAMES = [
    "MINI_O3_JUDGE_URL",
    "MINI_O3_JUDGE_MODEL",
    "MINI_O3_JUDGE_KEY",
    "MINI_O3_JUDGE_API_VERSION",
    "END_POINT",
    "API_KEY",
    "API_VERSION",
]


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    assert JudgeConfig.from_env() == JudgeConfig()

    # The released variable names: Azure.
    monkeypatch.setenv("END_POINT", "https://example.openai.azure.com")
    monkeypatch.setenv("API_KEY", "azure-key")
    monkeypatch.setenv("API_VERSION", "2024-06-01")
    cfg = JudgeConfig.from_env()
    assert (cfg.url, cfg.api_key, cfg.api_version, cfg.model) == (
        "https://example.openai.azure.com",
        "azure-key",
        "2024-06-01",
        "gpt-4o-2024-11-20",
    )

    # Our own names win; a leftover API_VERSION does not make a local server Azure-style.
    monkeypatch.setenv("MINI_O3_JUDGE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("MINI_O3_JUDGE_MODEL", "Qwen2.5-72B-Instruct")
    cfg = JudgeConfig.from_env()
    assert (cfg.url, cfg.model, cfg.api_key, cfg.api_version) == (
        "http://127.0.0.1:8000/v1",
        "Qwen2.5-72B-Instruct",
        "azure-key",
        "",
    )
    monkeypatch.setenv("MINI_O3_JUDGE_KEY", "local-key")
    monkeypatch.setenv("MINI_O3_JUDGE_API_VERSION", "2025-01-01")
    cfg = JudgeConfig.from_env(concurrency=4, cache_path="/tmp/c.jsonl")
    assert (cfg.api_key, cfg.api_version, cfg.concurrency, cfg.cache_path) == (
        "local-key",
        "2025-01-01",
        4,
        "/tmp/c.jsonl",
    )
    assert JudgeConfig.from_env(url="http://other/v1").url == "http://other/v1"  # overrides win

    with pytest.raises(ConfigError, match="temprature"):
        JudgeConfig.from_env(temprature=0.5)

    # A config file's judge block holds the endpoint fields empty: they stay the environment's.
    block = config_defaults()
    assert (block["url"], block["model"], block["system_prompt"], block["cache_path"]) == ("", "", SPEC_SYSTEM, "")
    assert JudgeConfig.from_env(**block) == JudgeConfig.from_env()
    assert JudgeConfig.from_env(**block).url == "http://127.0.0.1:8000/v1"


# --------------------------------------------------------------------------------------------------------------
# Rule-based scorers
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "solution", "expected"),
    [
        ("B", "B", 1.0),
        ("b", "B", 1.0),
        ("(B)", "B", 1.0),
        ("B.", "(B) red", 1.0),
        ("B) a red car", "B", 1.0),
        ("**C**", "C", 1.0),
        ("The answer is B", "(B) red car", 1.0),
        ("The answer is: (d).", "D", 1.0),
        ("option b", "B", 1.0),
        ("The correct choice is C because it is red.", "C", 1.0),
        ("A", "B", 0.0),
        ("(A) blue", "(B) red", 0.0),
        ("A or B", "B", 0.0),  # no single letter
        ("option A or option B", "B", 0.0),
        ("the answer is a red car", "A", 0.0),  # 'a' is an article here, not an option
        ("A red car", "A", 0.0),
        ("red", "B", 0.0),
        ("", "B", 0.0),
        (None, "B", 0.0),
        ("B", "a red car", 0.0),  # no letter in the solution either
    ],
)
def test_score_choice(answer: str | None, solution: str, expected: float) -> None:
    assert score_choice(answer, solution) == expected


@pytest.mark.parametrize(
    ("answer", "solution", "expected"),
    [
        ("The Red Car", "red car", 1.0),
        ("  red   car. ", "Red car", 1.0),
        ("an apple", "Apple!", 1.0),
        ("New-York", "newyork", 1.0),  # punctuation is removed, not turned into spaces (SQuAD)
        ("theatre", "atre", 0.0),  # articles only as whole words
        ("red car", "blue car", 0.0),
        ("red", "red car", 0.0),
        ("the", "a", 0.0),  # an answer that normalises to nothing is never rewarded
        ("", "", 0.0),
        (None, "red", 0.0),
    ],
)
def test_score_exact(answer: str | None, solution: str, expected: float) -> None:
    assert score_exact(answer, solution) == expected


@pytest.mark.parametrize(
    ("answer", "solution", "expected"),
    [
        ("3", "3", 1.0),
        ("There are 3 cars.", "3", 1.0),
        ("3.0", "3", 1.0),
        ("-2.5 degrees", "-2.50", 1.0),
        ("1,234", "1234", 1.0),
        ("1,234,567.5 m", "1234567.5", 1.0),
        ("50%", "50", 1.0),
        ("50%", "0.5", 1.0),
        ("0.5", "50 %", 1.0),
        (".5", "0.5", 1.0),
        ("1000000.5", "1000000", 1.0),  # within rel_tol 1e-6
        ("1000002", "1000000", 0.0),
        ("4", "3", 0.0),
        ("-3", "3", 0.0),
        ("1,2", "12", 0.0),  # not a thousands separator: the first number is 1
        ("2 or 3", "3", 0.0),  # the first number counts
        ("three", "3", 0.0),
        ("3", "unknown", 0.0),
        (None, "3", 0.0),
    ],
)
def test_score_numeric(answer: str | None, solution: str, expected: float) -> None:
    assert score_numeric(answer, solution) == expected


def test_score_numeric_tolerance() -> None:
    assert score_numeric("10.1", "10", rel_tol=0.02) == 1.0
    assert score_numeric("10.1", "10") == 0.0


def test_rule_score_dispatch() -> None:
    assert set(SCORERS) == {"choice", "exact", "numeric"}
    assert rule_score("choice", "(B)", "B") == 1.0
    assert rule_score("exact", "The cat", "cat") == 1.0
    assert rule_score("numeric", "1,000", "1000") == 1.0
    assert rule_score("numeric", None, "1000") == 0.0
    with pytest.raises(ConfigError, match=r"fuzzy.*choice.*exact.*numeric"):
        rule_score("fuzzy", "a", "a")


# --------------------------------------------------------------------------------------------------------------
# The Scorer: one shape for the rule scorers and the judge, as RL and eval use it
# --------------------------------------------------------------------------------------------------------------


def test_scorer_gives_rules_and_the_judge_one_shape(server: FakeJudgeServer) -> None:
    items = [JudgeItem(QUESTION, "B", "The answer is B"), JudgeItem(QUESTION, "B", "A"), JudgeItem(QUESTION, "B", None)]
    with Scorer("choice") as scorer:
        scores = scorer.submit(items, rule="exact").result()  # `rule` is for "auto" only
    assert scores.rewards.dtype.name == "float32" and scores.rewards.tolist() == [1.0, 0.0, 0.0]
    assert scores.failed.tolist() == [False] * 3 and scores.as_list() == [1.0, 0.0, 0.0]
    with Scorer("auto") as scorer:  # eval's "auto": the rule each record names
        assert scorer.submit(items, rule="exact").result().as_list() == [0.0, 0.0, 0.0]
    assert Scorer.check("numeric") is None
    with pytest.raises(ConfigError, match=r"fuzzy.*choice.*exact.*numeric"):
        Scorer("fuzzy")
    server.script = lambda req, n: Reply(status=500) if "Predicted Answer**: A\n" in req.user else grade(req, n)
    items = [JudgeItem(QUESTION, "B", "b"), JudgeItem(QUESTION, "B", "A"), JudgeItem(QUESTION, "B", None)]
    with Scorer("judge", JudgeConfig(url=server.url + "/v1", attempts=2, backoff_s=0.0)) as scorer:
        scores = scorer.submit(items).result(timeout=30)
        assert scorer.endpoint == server.url + "/v1/chat/completions"
        assert scorer.last_error is not None and "HTTP 500" in scorer.last_error
    assert scores.rewards.tolist() == [1.0, 0.0, 0.0] and scores.failed.tolist() == [False, True, False]
    assert scores.as_list() == [1.0, None, 0.0]  # the unanswered item is 0 without asking the judge
    assert len(server.requests) == 3  # one for "b", two attempts for "A"
