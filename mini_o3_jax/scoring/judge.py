"""The binary LLM judge of the released Mini-o3 reward (verl ``general_qa_tool.py``): 1.0 when the judge says
the extracted answer matches the ground truth, else 0.0.

`LLMJudge` talks to any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Azure) with the released
retry schedule (5 attempts, temperature 0.0, 0.2, 0.4, ...), a wall deadline per request, a cap on reply
size, bounded concurrency, a non-blocking `submit` so that judging overlaps decoding, and a JSONL cache that
survives restarts. An item whose every attempt fails scores ``None``; no judge fault raises out of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence

import openai

from mini_o3_jax.errors import MiniO3Error
from mini_o3_jax.scoring.judge_config import JudgeConfig, endpoint_url
from mini_o3_jax.scoring.judge_http import describe, make_client, redact, secret_forms, status_body
from mini_o3_jax.scoring.judge_prompts import build_messages, parse_score

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """One judgement: the raw dataset ``problem`` and ``solution`` (no option text added for multiple choice,
    as in the release) and the extracted answer (``None``: no answer, reward 0 without a judge call)."""

    question: str
    solution: str
    answer: str | None


@dataclasses.dataclass(frozen=True)
class JudgeStats:
    """Counters for monitoring the judge (a snapshot; read :attr:`LLMJudge.stats` again for fresh values).

    ``calls``: HTTP requests sent. ``retries``: requests beyond each item's first. ``failures``: items whose
    every attempt failed (scored ``None``). ``cache_hits``: items answered from the cache. ``deduped``: items
    that shared the request of an identical item already in flight.
    """

    calls: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    deduped: int = 0


class JudgeError(MiniO3Error):
    """The judge gave no usable score for any answer of a batch: it is down, refusing us, or misconfigured."""


class _AttemptError(Exception):
    """One judge attempt failed in a way worth retrying (HTTP error, deadline, huge reply, bad JSON, no 0/1 score);
    its message is already key-redacted."""



def _cache_key(model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """sha256 of what decides a judgement: the model and the exact messages it is sent (so a changed prompt
    never reuses a score cached under another); JSON-encoded so that boundaries are unambiguous."""
    blob = json.dumps([model, [[m["role"], m["content"]] for m in messages]], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _gather(futures: Sequence[concurrent.futures.Future]) -> concurrent.futures.Future:
    """A future for the list of results of ``futures`` (in order), without a thread blocked on them."""
    out: concurrent.futures.Future = concurrent.futures.Future()
    if not futures:
        out.set_result([])
        return out
    remaining = [len(futures)]
    lock = threading.Lock()

    def on_done(_: concurrent.futures.Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            try:
                out.set_result([f.result() for f in futures])
            except BaseException as exc:  # hand any worker error to the caller
                out.set_exception(exc)

    for fut in futures:  # the same future may appear several times (deduped items): each entry counts once
        fut.add_done_callback(on_done)
    return out


def _done(value: float | None) -> concurrent.futures.Future:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result(value)
    return fut



class LLMJudge:
    """Binary LLM judge over an OpenAI-compatible chat-completions endpoint (the ``openai`` SDK's async client).

    Requests run on one event loop in a background thread, at most ``config.concurrency`` at a time. Each
    item gets up to ``config.attempts`` attempts at temperature ``min(0.2 * i, 1.0)``: the first is greedy,
    later ones add randomness to escape a reply the parser cannot read. Every failure (HTTP error, a request
    not answered whole within ``timeout_s``, a reply over ``max_reply_bytes``, bad JSON, a reply without
    ``score:`` or whose score is neither 0 nor 1) is retried after ``backoff_s * i`` seconds. ``timeout_s``
    bounds the whole request (connect to last byte), not each read: a server dripping bytes cannot hold an
    item longer than ``attempts * (timeout_s + backoff)``. Error texts that quote the server's reply have the
    API key and any Authorization / api-key header value masked, so a server echoing headers leaks nothing.

    Successful results are cached in memory under a sha256 of the model and the exact messages (prompts
    included, so a changed prompt asks again) and, when ``config.cache_path`` is set, appended to a JSONL
    file that is reloaded at construction, so a restarted run does not pay for the same judgements twice.
    Failures are never cached. Identical items submitted while one is in flight share its request.

    Use :meth:`submit` from the RL loop (it returns at once) and :meth:`score` elsewhere; call :meth:`close`
    (or use the judge as a context manager) to wait for outstanding work and close the cache file.
    """

    def __init__(self, config: JudgeConfig):
        config.validate()
        self.config = config
        self._endpoint = endpoint_url(config)
        self._secrets = secret_forms(config.api_key)
        self._lock = threading.Lock()
        self._counts = {f.name: 0 for f in dataclasses.fields(JudgeStats)}
        self._last_error: str | None = None
        self._cache: dict[str, float] = {}
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._cache_file = None
        if config.cache_path:
            self._open_cache(config.cache_path)
        self._client = make_client(config)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-judge", daemon=True)
        self._thread.start()
        self._closed = False

    # -- public API ----------------------------------------------------------------------------------------

    @property
    def stats(self) -> JudgeStats:
        """A snapshot of the counters."""
        with self._lock:
            return JudgeStats(**self._counts)

    @property
    def endpoint(self) -> str:
        """The URL requests go to (no credentials in it), for messages about this judge."""
        return self._endpoint

    @property
    def last_error(self) -> str | None:
        """Why the latest failed attempt failed (key-redacted), or ``None`` when none has failed."""
        with self._lock:
            return self._last_error

    def submit(self, items: Sequence[JudgeItem]) -> concurrent.futures.Future:
        """Start judging ``items`` and return at once a future of ``list[float | None]`` in item order.

        The RL loop submits right after a rollout and collects the rewards later, so that the judge's
        latency overlaps the next decoding step instead of stalling it.
        """
        if self._closed:
            raise RuntimeError("LLMJudge.submit called after close()")
        futures: list[concurrent.futures.Future] = []
        with self._lock:
            for item in items:
                if item.answer is None:  # nothing extracted: reward 0 without asking the judge
                    futures.append(_done(0.0))
                    continue
                messages = self._messages(item)
                key = _cache_key(self.config.model, messages)
                if key in self._cache:
                    self._counts["cache_hits"] += 1
                    futures.append(_done(self._cache[key]))
                elif key in self._inflight:
                    self._counts["deduped"] += 1
                    futures.append(self._inflight[key])
                else:
                    # Registered under the lock, and the coroutine unregisters under the same lock, so the entry
                    # can never outlive its request.
                    fut = asyncio.run_coroutine_threadsafe(self._judge(messages, key), self._loop)
                    self._inflight[key] = fut
                    futures.append(fut)
        return _gather(futures)

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        """Judge ``items`` concurrently and block until all are done; ``None`` marks an item that failed."""
        return self.submit(items).result()

    def close(self) -> None:
        """Wait for outstanding judgements, close the HTTP client, stop the loop and close the cache (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            pending = list(self._inflight.values())
        concurrent.futures.wait(pending)
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        with self._lock:
            if self._cache_file is not None:
                self._cache_file.close()
                self._cache_file = None

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cache ---------------------------------------------------------------------------------------------

    def _open_cache(self, path: str) -> None:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        key, value = record["key"], record["score"]
                        if not isinstance(key, str) or isinstance(value, bool) or value not in (0, 1):
                            raise ValueError("expected a string 'key' and a 'score' of 0 or 1")
                    except (ValueError, KeyError, TypeError) as exc:
                        warnings.warn(
                            f"judge cache {path}:{lineno}: skipping corrupt line ({exc})",
                            RuntimeWarning,
                            stacklevel=3,
                        )
                        continue
                    self._cache[key] = float(value)
        # A crash mid-write can leave a final line without its newline; start on a fresh line so that the
        # next record is not glued to the broken one.
        glued = False
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                glued = f.read(1) != b"\n"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._cache_file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the judge's lifetime
        if glued:
            self._cache_file.write("\n")
            self._cache_file.flush()

    def _remember(self, key: str, value: float) -> None:
        # Caller holds self._lock, which also serialises the appends to the file.
        self._cache[key] = value
        if self._cache_file is not None:
            self._cache_file.write(json.dumps({"key": key, "score": value}) + "\n")
            self._cache_file.flush()

    # -- one item ------------------------------------------------------------------------------------------

    def _messages(self, item: JudgeItem) -> list[dict[str, str]]:
        """What the judge is sent for `item`: this judge's prompts around the raw problem, solution, answer."""
        assert item.answer is not None
        return build_messages(item.question, item.solution, item.answer, system_prompt=self.config.system_prompt,
                              user_prompt=self.config.user_prompt)

    async def _judge(self, messages: list[dict[str, str]], key: str) -> float | None:
        """Run the attempts for one item; the result is 1.0, 0.0, or ``None`` after ``attempts`` failures."""
        result: float | None = None
        last_error: str | None = None
        try:
            for attempt in range(self.config.attempts):
                if attempt:
                    await asyncio.sleep(self.config.backoff_s * attempt)
                with self._lock:
                    self._counts["calls"] += 1
                    self._counts["retries"] += int(attempt > 0)
                try:
                    async with self._slots:
                        result = await self._attempt(messages, min(0.2 * attempt, 1.0))
                    break
                except _AttemptError as exc:
                    last_error = str(exc)
                    with self._lock:
                        self._last_error = last_error
                    logger.debug("judge attempt %d/%d failed: %s", attempt + 1, self.config.attempts, last_error)
        finally:
            with self._lock:
                if result is None:
                    self._counts["failures"] += 1
                else:
                    self._remember(key, result)
                self._inflight.pop(key, None)
        if result is None:  # not a warning: callers count failures (stats, last_error) and report them once
            logger.debug("judge gave no usable score after %d attempts, the item is marked failed; last error: %s",
                         self.config.attempts, last_error)
        return result

    async def _attempt(self, messages: list[dict[str, str]], temperature: float) -> float:
        """One request, bounded in wall time by ``timeout_s``; returns the score or raises :class:`_AttemptError`."""
        request = self._client.chat.completions.with_raw_response.create(
            model=self.config.model, messages=messages, temperature=temperature,  # type: ignore[arg-type]
            max_tokens=self.config.max_tokens)
        try:
            raw = (await asyncio.wait_for(request, timeout=self.config.timeout_s)).http_response.content
        except asyncio.TimeoutError:
            raise _AttemptError(f"no complete reply from {self._endpoint} within {self.config.timeout_s:g} s") from None
        except openai.APIStatusError as exc:
            raise _AttemptError(f"HTTP {exc.status_code} from {self._endpoint}: "
                                f"{self._quote(status_body(exc), 300)}") from None
        except Exception as exc:  # noqa: BLE001 - SDK, httpx, anyio, TLS, size cap: any fault is a failed attempt
            raise _AttemptError(f"request to {self._endpoint} failed: {self._redact(describe(exc))[:300]}") from None
        return self._score(raw)

    def _score(self, raw: bytes) -> float:
        """The score in a chat-completions reply body, or :class:`_AttemptError`."""
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _AttemptError(f"malformed chat-completions response: {self._quote(raw)}") from None
        if not isinstance(content, str):
            raise _AttemptError(f"reply content is not text: {self._quote(repr(content))}")
        value = parse_score(content)
        if value is None:
            raise _AttemptError(f"reply has no 'score:' followed by 0 or 1: {self._quote(content)}")
        return value

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _quote(self, text: str | bytes, limit: int = 200) -> str:
        """The start of a server's text for an error message: masked whole first, so no cut key survives."""
        if isinstance(text, bytes):
            text = text[: 64 * limit].decode("utf-8", errors="replace")
        return repr(self._redact(text)[:limit])
