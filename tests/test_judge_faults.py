"""Judge faults against real servers on 127.0.0.1 (issue 17): a server that drips its reply, one that sends
50 MB, one that echoes the request headers (the API key) into its error body, and the RL metrics and stop
when the judge fails. Each fault must end as a failed attempt (retried, then ``None``) within its deadline,
and the key must appear in no log line, error text or captured output."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
import pytest

from mini_o3_jax.rl.loop import check_judge, rollout_metrics
from mini_o3_jax.scoring.judge import JudgeError, JudgeItem, LLMJudge
from mini_o3_jax.scoring.judge_config import JudgeConfig
from mini_o3_jax.scoring.judge_http import redact
from mini_o3_jax.scoring.scorer import Scorer, asked_of, trajectory_items

QUESTION = "<image>\nWhat colour is the car?"
KEY = "sk-live-7Hq2ZpXw9LmN4vB8"  # what must never be printed
MB = 1 << 20

Respond = Callable[["_Handler", int], None]


class FaultServer(http.server.ThreadingHTTPServer):
    """Answers each POST with `respond(handler, n)` (n: the request's index); records headers and bytes sent."""

    daemon_threads = True

    def __init__(self, respond: Respond):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond = respond
        self.headers_seen: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.sent = 0  # body bytes the server got onto the wire before the client hung up
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FaultServer

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            self.server.paths.append(self.path)
            n = len(self.server.paths) - 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: what these tests want
            self.server.respond(self, n)

    def send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        with self.server.lock:
            self.server.sent += len(data)

    def log_message(self, *args: object) -> None:
        pass


def reply_json(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def ok(h: _Handler, n: int) -> None:
    body = reply_json("Score: 1")
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.send(body)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Respond], FaultServer]]:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    started: list[tuple[FaultServer, threading.Thread]] = []

    def start(respond: Respond) -> FaultServer:
        srv = FaultServer(respond)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv

    yield start
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def judge(url: str, **kw: object) -> LLMJudge:
    kw.setdefault("backoff_s", 0.0)
    return LLMJudge(JudgeConfig(url=url, **kw))  # type: ignore[arg-type]


ITEM = JudgeItem(QUESTION, "blue", "blue")


# -- a request's deadline is wall time, not per read -----------------------------------------------------------


def test_a_dripping_server_is_cut_off_at_the_request_deadline(serve) -> None:
    def drip(h: _Handler, n: int) -> None:  # a byte every 0.2 s: each read is quick, the reply never ends
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "10000")
        h.end_headers()
        for _ in range(100):
            h.send(b" ")
            time.sleep(0.2)

    srv = serve(drip)
    start = time.monotonic()
    with judge(srv.url + "/v1", timeout_s=1.0, attempts=2) as j:
        assert j.score([ITEM]) == [None]
        elapsed = time.monotonic() - start
    # two attempts of 1 s each (~2 s); a per-read timeout would have let each run 20 s (100 bytes x 0.2 s), 40 s
    # in all: the bound sits far from both, so machine load cannot decide it
    assert elapsed < 20, elapsed
    assert len(srv.paths) == 2 and j.stats.failures == 1 and j.stats.retries == 1
    assert "no complete reply" in j.last_error and "within 1 s" in j.last_error


# -- a huge reply is a failed attempt, not read into memory ----------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_a_huge_reply_is_capped_and_retried(serve, declared: bool) -> None:
    total = 50 * MB

    def huge_then_ok(h: _Handler, n: int) -> None:
        if n:
            return ok(h, n)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if declared:
            h.send_header("Content-Length", str(total))
        h.end_headers()  # HTTP/1.0 without a length: the body runs until the server closes
        chunk = b"x" * MB
        for _ in range(total // MB):
            h.send(chunk)

    srv = serve(huge_then_ok)
    with judge(srv.url + "/v1", attempts=2) as j:
        assert j.score([ITEM]) == [1.0]  # the second attempt's ordinary reply
    assert len(srv.paths) == 2 and j.stats.retries == 1 and j.stats.failures == 0
    assert "1048576-byte cap" in j.last_error
    assert srv.sent < total / 2  # the client hung up after the cap (plus socket buffers), not after 50 MB

    srv.sent = 0
    srv.respond = lambda h, n: huge_then_ok(h, 0)  # huge every time: the item fails
    with judge(srv.url + "/v1", attempts=2) as j:
        assert j.score([JudgeItem(QUESTION, "red", "red")]) == [None]
    assert j.stats.failures == 1


def test_errors_5xx_are_retried_then_the_item_fails(serve) -> None:
    def status(h: _Handler, n: int) -> None:
        body = b'{"error": {"message": "overloaded"}}'
        h.send_response(503 if n % 2 else 500)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.send(body)

    srv = serve(status)
    with judge(srv.url + "/v1", attempts=3) as j:
        assert j.score([ITEM]) == [None]
    assert len(srv.paths) == 3 and j.stats.calls == 3 and j.stats.failures == 1
    assert j.last_error.startswith("HTTP 500 from http://127.0.0.1:") and "overloaded" in j.last_error


# -- the key is never shown --------------------------------------------------------------------------------------


def _echo(status: int) -> Respond:
    """A server that puts the request headers into its reply: a JSON error body, or a 200 reply without a score."""

    def respond(h: _Handler, n: int) -> None:
        dump = "\n".join(f"{k}: {v}" for k, v in h.headers.items())
        if status == 200:
            body = reply_json(f"I cannot grade this. You sent:\n{dump}")
        else:
            body = json.dumps({"error": {"message": "denied", "headers": dict(h.headers.items()), "raw": dump}}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.send(body)

    return respond


@pytest.mark.parametrize("status", [400, 401, 500, 200])
@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
def test_a_server_echoing_headers_never_gets_the_key_logged(serve, caplog, capfd, status: int, azure: bool) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx's included
    srv = serve(_echo(status))
    url, extra = (srv.url, {"api_version": "2024-06-01"}) if azure else (srv.url + "/v1", {})
    with judge(url, api_key=KEY, attempts=2, **extra) as j:
        assert j.score([ITEM]) == [None]
    sent = srv.headers_seen[0]
    assert (sent.get("api-key") if azure else sent.get("authorization")) == (KEY if azure else f"Bearer {KEY}")
    assert "denied" in j.last_error or "cannot grade" in j.last_error  # the body is quoted, only masked
    assert "***" in j.last_error
    out, err = capfd.readouterr()
    seen = "\n".join([j.last_error, out, err, caplog.text] + [r.getMessage() for r in caplog.records])
    assert KEY not in seen and KEY[3:15] not in seen
    assert any("judge gave no usable score" in r.getMessage() for r in caplog.records)


def test_redact_masks_the_key_in_every_form() -> None:
    secret = 'k3y/with"quote'
    text = f'raw {secret} json {json.dumps(secret)} url k3y%2Fwith%22quote Authorization: Bearer other-token ' \
           '{"api-key": "azure-token"}'
    masked = redact(text, ("k3y/with\"quote", json.dumps(secret)[1:-1], "k3y%2Fwith%22quote"))
    assert "k3y" not in masked and "other-token" not in masked and "azure-token" not in masked
    assert masked.startswith("raw *** json ") and "Authorization: ***" in masked


# -- request shapes ------------------------------------------------------------------------------------------------


def test_azure_and_openai_requests_go_where_the_release_sends_them(serve) -> None:
    srv = serve(ok)
    with judge(srv.url, api_key=KEY, api_version="2024-06-01", model="gpt-4o-2024-11-20") as j:
        assert j.score([ITEM]) == [1.0]
        assert j.endpoint == f"{srv.url}/openai/deployments/gpt-4o-2024-11-20/chat/completions?api-version=2024-06-01"
    with judge(srv.url + "/v1", api_key=KEY, model="qwen") as j:
        assert j.score([ITEM]) == [1.0]
    assert srv.paths == ["/openai/deployments/gpt-4o-2024-11-20/chat/completions?api-version=2024-06-01",
                         "/v1/chat/completions"]
    azure, plain = srv.headers_seen
    assert azure["api-key"] == KEY and "authorization" not in azure
    assert plain["authorization"] == f"Bearer {KEY}" and "api-key" not in plain
    assert azure["accept-encoding"] == plain["accept-encoding"] == "identity"  # the size cap counts real bytes


# -- RL: metrics over judged samples, and a stop that names the judge ----------------------------------------------


def _traj(answer: str | None) -> types.SimpleNamespace:
    return types.SimpleNamespace(answer=answer, num_turns=2, over_turn=False, over_length=False, void=answer is None,
                                 answered=answer is not None, sampled_tokens=10)


def test_rl_reward_and_accuracy_are_over_judged_samples_only() -> None:
    trajs = [_traj("a")] * 6
    rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0], np.float32)
    failed = np.array([False, False, False, True, True, True])  # placeholders 0.0 for the judge's failures
    m = rollout_metrics(trajs, rewards, failed)
    assert m["judge_failed"] == 3
    assert m["reward_mean"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(2 / 3)  # not 2 / 6
    plain = rollout_metrics(trajs, rewards)  # a rule scorer: every sample is judged
    assert plain["judge_failed"] == 0 and plain["reward_mean"] == pytest.approx(2 / 6)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rl_stops_naming_the_judge_when_it_fails_on_every_answer(monkeypatch) -> None:
    monkeypatch.delenv("MINI_O3_JUDGE_URL", raising=False)
    port = _closed_port()
    cfg = ml_collections.ConfigDict({"kind": "judge", "judge": {"url": f"http://127.0.0.1:{port}/v1",
                                                                "attempts": 2, "backoff_s": 0.0, "api_key": KEY}})
    scorer = Scorer(cfg.kind, Scorer.check(cfg.kind, cfg.judge))
    try:
        prompts = [types.SimpleNamespace(problem=QUESTION, solution="blue")] * 3
        trajs = [_traj("blue"), _traj("red"), _traj(None)]  # the unanswered one is 0 without the judge
        items = trajectory_items(prompts, trajs)
        rewards, failed = scorer.submit(items).result(timeout=30)
        assert failed.tolist() == [True, True, False] and rewards.tolist() == [0.0, 0.0, 0.0]
        with pytest.raises(JudgeError) as info:
            check_judge(scorer, 4, asked_of(items), failed)
        check_judge(scorer, 4, asked_of(items), np.array([True, False, False]))  # one judged answer: the judge works
    finally:
        scorer.close()
    line = str(info.value)
    assert line.startswith(f"rl step 4: the judge at http://127.0.0.1:{port}/v1/chat/completions gave no usable "
                           "score for any of the 2 answer(s) of a rollout batch (2 attempt(s) each); last error: ")
    assert "ConnectError" in line and "\n" not in line and KEY not in line
