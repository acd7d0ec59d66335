"""Rewards for RL on the Mini-o3 agent: answer extraction, the binary LLM judge and rule-based scorers.

The released Mini-o3 recipe (verl ``general_qa_tool.py``) rewards a trajectory with 1.0 when an LLM judge
(``gpt-4o-2024-11-20`` on Azure OpenAI) says the final ``<answer>...</answer>`` matches the ground truth,
else 0.0. This module reproduces that rule:

* :func:`extract_answer` -- the "strict" extraction: the first ``<answer>`` span of the joined assistant turns;
  no span means reward 0 and no judge call.
* :class:`LLMJudge` -- talks to any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Azure) through
  the ``openai`` SDK, with the released retry schedule (5 attempts, temperature 0.0, 0.2, 0.4, ...), a wall
  deadline per request, a cap on reply size, bounded concurrency, a non-blocking :meth:`LLMJudge.submit` so
  that judging overlaps decoding, and a JSONL cache that survives restarts. An item whose every attempt
  fails scores ``None``; the RL loop drops its whole prompt group rather than training on a made-up reward,
  and eval leaves the sample unjudged for a re-run to retry. No judge fault raises out of the judge.
* :func:`score_choice`, :func:`score_exact`, :func:`score_numeric` -- judge-free scorers for data sets whose
  answers are letters, short strings or numbers (cheaper, deterministic, usable offline).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import string
import threading
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import openai

try:  # the openai SDK's HTTP library: httpx2 from openai 3, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 2.x
    import httpx  # type: ignore[no-redef]

from mini_o3_jax.agent import protocol
from mini_o3_jax.errors import ConfigError, MiniO3Error

logger = logging.getLogger(__name__)

__all__ = [
    "SCORERS",
    "SYSTEM_PROMPT",
    "USER_PROMPT_TEMPLATE",
    "JudgeConfig",
    "JudgeError",
    "JudgeItem",
    "JudgeStats",
    "LLMJudge",
    "PROMPT_FIELDS",
    "build_messages",
    "check_user_prompt",
    "config_defaults",
    "endpoint_url",
    "extract_answer",
    "parse_score",
    "redact",
    "rule_score",
    "score_choice",
    "score_exact",
    "score_numeric",
]

# --------------------------------------------------------------------------------------------------------------
# Answer extraction
# --------------------------------------------------------------------------------------------------------------

def extract_answer(texts: Sequence[str] | str) -> str | None:
    """Return the stripped text of the first ``<answer>...</answer>`` span, or ``None`` when there is none.

    ``texts`` are the assistant turns of one trajectory (or one already-joined string). The turns are joined
    with single spaces, as in the release (`agent.protocol.extract_answer`, the one parser of answers), so an
    answer opened in one turn and closed in a later one still counts. Only the first span is used.
    """
    answer = protocol.extract_answer([texts] if isinstance(texts, str) else list(texts))
    return None if answer is None else answer.strip()


# --------------------------------------------------------------------------------------------------------------
# LLM judge: prompts and reply parsing
# --------------------------------------------------------------------------------------------------------------

# The released judge prompts, byte for byte (verl `general_qa_tool.py`, `SYSTEM_PROMPT` and `QUERY_PROMPT`;
# spec §4.5): the judge is part of the reward, so its wording is protocol data like the agent's system prompt.
SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs.\n"
    "Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:\n"
    "------\n"
    "##INSTRUCTIONS:\n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)

# Format fields: {question} (the raw dataset `problem`, "<image>\n" included), {ground_truth} (the raw
# `solution`, a bare letter for multiple choice) and {prediction} (the extracted answer).
USER_PROMPT_TEMPLATE = (
    "I will give you a question related to an image and the following text as inputs:\n"
    "\n"
    "1. **Question Related to the Image**: {question}\n"
    "2. **Ground Truth Answer**: {ground_truth}\n"
    "3. **Model Predicted Answer**: {prediction}\n"
    "\n"
    "Your task is to evaluate the model's predicted answer against the ground truth answer, based on the context provided by the question related to the image. Consider the following criteria for evaluation:\n"
    "- **Relevance**: Does the predicted answer directly address the question posed, considering the information provided by the given question?\n"
    "- **Accuracy**: Compare the predicted answer to the ground truth answer. You need to evaluate from the following two perspectives:\n"
    "(1) If the ground truth answer is open-ended, consider whether the prediction accurately reflects the information given in the ground truth without introducing factual inaccuracies. If it does, the prediction should be considered correct.\n"
    "(2) If the ground truth answer is a definitive answer, strictly compare the model's prediction to the actual answer. Pay attention to unit conversions such as length and angle, etc. As long as the results are consistent, the model's prediction should be deemed correct.\n"
    "**Output Format**:\n"
    "Your response should include an integer score indicating the correctness of the prediction: 1 for correct and 0 for incorrect. Note that 1 means the model's prediction strictly aligns with the ground truth, while 0 means it does not.\n"
    'The format should be "Score: 0 or 1"'
)

PROMPT_FIELDS = ("question", "ground_truth", "prediction")


def check_user_prompt(template: str, where: str = "JudgeConfig.user_prompt") -> None:
    """Raise ConfigError unless ``template`` uses exactly the fields {question}, {ground_truth}, {prediction}.

    A template missing one would judge without that input; an unknown one (a typo, a positional ``{}``)
    would fail on the first judgement, deep in a worker thread, instead of at startup.
    """
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # a lone "{" or "}"
        raise ConfigError(f"{where}: not a valid format string ({exc}); write literal braces as {{{{ and }}}}") from None
    unknown, missing = sorted(used - set(PROMPT_FIELDS)), [f for f in PROMPT_FIELDS if f not in used]
    if unknown or missing:
        problems = ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
        raise ConfigError(f"{where}: {'; '.join(problems)}; the template must use exactly "
                          "{question}, {ground_truth} and {prediction}")


def build_messages(
    question: str,
    ground_truth: str,
    prediction: str,
    *,
    system_prompt: str = SYSTEM_PROMPT,
    user_prompt: str = USER_PROMPT_TEMPLATE,
) -> list[dict[str, str]]:
    """Return the chat messages ``[system, user]`` for one judgement (text only: the judge never sees the image).

    ``question`` is the raw dataset ``problem`` (``<image>`` placeholder included) and ``ground_truth`` the raw
    ``solution``, as in the release; only the user prompt is a template, the system prompt is sent as is.
    """
    user = user_prompt.format(question=question, ground_truth=ground_truth, prediction=prediction)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def parse_score(reply: str) -> float | None:
    """Parse a judge reply into 1.0 / 0.0, or ``None`` when it holds no score (the attempt is then retried).

    The released rule: take the text after the *last* ``score:`` (case-insensitive) and keep its first
    whitespace-separated token. A reply without ``score:``, or whose token holds neither ``0`` nor ``1``
    ("Score: maybe"), is a failed attempt. Otherwise the score is 1.0 when the token contains ``1``, else
    0.0, quirks included: ``Score:10`` or ``Score: 0.1`` both give 1.0.
    """
    lowered = reply.lower()
    at = lowered.rfind("score:")
    if at < 0:
        return None
    tokens = lowered[at + len("score:") :].split()
    if not tokens:
        return None
    if "1" in tokens[0]:
        return 1.0
    return 0.0 if "0" in tokens[0] else None


# --------------------------------------------------------------------------------------------------------------
# LLM judge: configuration
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Where and how to reach the judge and what to ask it; the defaults are the released Mini-o3 settings.

    ``api_version`` selects the URL style. Non-empty means Azure OpenAI:
    ``POST {url}/openai/deployments/{model}/chat/completions?api-version=...`` with an ``api-key`` header.
    Empty means a plain OpenAI-compatible server (OpenAI, vLLM, SGLang, ...): ``POST {url}/chat/completions``
    with ``Authorization: Bearer <api_key>`` (omitted when there is no key), ``url`` ending in ``/v1``.

    ``system_prompt`` / ``user_prompt`` default to the released prompts (spec §4.5); a different judge model
    may want other wording, but the user prompt must keep the fields {question}, {ground_truth} and
    {prediction} (checked here, a ConfigError otherwise).

    ``timeout_s`` is the wall deadline of one request, connect to last byte; ``max_reply_bytes`` caps the
    reply (or error body) read from the server: a larger one is a failed attempt, not read further.
    """

    url: str = ""
    model: str = "gpt-4o-2024-11-20"
    api_key: str = ""
    api_version: str = ""
    timeout_s: float = 120.0
    attempts: int = 5
    backoff_s: float = 0.5
    max_tokens: int = 16384
    max_reply_bytes: int = 1 << 20
    concurrency: int = 32
    cache_path: str | None = None
    system_prompt: str = SYSTEM_PROMPT
    user_prompt: str = USER_PROMPT_TEMPLATE

    def __post_init__(self) -> None:
        if self.cache_path == "":  # a config file's "no cache"
            object.__setattr__(self, "cache_path", None)
        if not isinstance(self.system_prompt, str) or not isinstance(self.user_prompt, str):
            raise ConfigError("JudgeConfig.system_prompt and .user_prompt must be strings, got "
                              f"{type(self.system_prompt).__name__} and {type(self.user_prompt).__name__}")
        check_user_prompt(self.user_prompt)

    def validate(self) -> None:
        """Raise ConfigError unless a judge can be reached with these settings (a URL, a model, sane limits)."""
        _validate(self)

    @classmethod
    def from_env(cls, **overrides: Any) -> JudgeConfig:
        """Build a config from the environment; keyword ``overrides`` win over it.

        ``MINI_O3_JUDGE_URL`` / ``_MODEL`` / ``_KEY`` / ``_API_VERSION`` are read first, falling back to the
        names of the released code, ``END_POINT`` / ``API_KEY`` / ``API_VERSION`` (Azure when an API version
        is set). The fallback to ``API_VERSION`` applies only when the URL itself came from ``END_POINT``:
        a leftover Azure variable must not turn a local ``MINI_O3_JUDGE_URL`` server into an Azure one.
        An empty override of an endpoint field (``url``, ``model``, ``api_key``, ``api_version``) means "not
        set here", so a config block holding them empty (:func:`config_defaults`) leaves them to the environment.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"JudgeConfig.from_env: unknown field(s) {unknown}; known: {sorted(known)}")
        env = os.environ
        own_url = env.get("MINI_O3_JUDGE_URL", "")
        values: dict[str, Any] = {
            "url": own_url or env.get("END_POINT", ""),
            "api_key": env.get("MINI_O3_JUDGE_KEY") or env.get("API_KEY", ""),
            "api_version": env.get("MINI_O3_JUDGE_API_VERSION")
            or ("" if own_url else env.get("API_VERSION", "")),
        }
        if env.get("MINI_O3_JUDGE_MODEL"):
            values["model"] = env["MINI_O3_JUDGE_MODEL"]
        values.update({k: v for k, v in overrides.items() if not (k in _ENDPOINT_FIELDS and v in ("", None))})
        return cls(**values)


_ENDPOINT_FIELDS = ("url", "model", "api_key", "api_version")


def config_defaults() -> dict[str, Any]:
    """The judge block of a config file (configs/rl_grpo.py ``reward.judge``, configs/eval.py ``judge``).

    Every :class:`JudgeConfig` field, so that each can be overridden from the command line
    (``--config.judge.user_prompt=...``); the endpoint fields are empty, which :meth:`JudgeConfig.from_env`
    reads as "from the environment", and ``cache_path`` is "" (no cache).
    """
    out = dataclasses.asdict(JudgeConfig())
    out.update({name: "" for name in _ENDPOINT_FIELDS}, cache_path="")
    return out


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


def _validate(config: JudgeConfig) -> None:
    if not config.url:
        raise ConfigError(
            "JudgeConfig.url is empty: set it to the judge's base URL (an OpenAI-compatible '.../v1' or an "
            "Azure endpoint), e.g. through MINI_O3_JUDGE_URL or END_POINT"
        )
    if urllib.parse.urlsplit(config.url).scheme not in ("http", "https"):
        raise ConfigError(f"JudgeConfig.url must start with http:// or https://, got {config.url!r}")
    if not config.model:
        raise ConfigError("JudgeConfig.model is empty: name the judge model (the deployment name on Azure)")
    if config.attempts < 1:
        raise ConfigError(f"JudgeConfig.attempts must be >= 1, got {config.attempts}")
    if config.concurrency < 1:
        raise ConfigError(f"JudgeConfig.concurrency must be >= 1, got {config.concurrency}")
    if not config.timeout_s > 0:
        raise ConfigError(f"JudgeConfig.timeout_s must be > 0, got {config.timeout_s}")
    if config.backoff_s < 0:
        raise ConfigError(f"JudgeConfig.backoff_s must be >= 0, got {config.backoff_s}")
    if config.max_tokens < 1:
        raise ConfigError(f"JudgeConfig.max_tokens must be >= 1, got {config.max_tokens}")
    if config.max_reply_bytes < 1024:
        raise ConfigError(f"JudgeConfig.max_reply_bytes must be >= 1024, got {config.max_reply_bytes}")


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


# --------------------------------------------------------------------------------------------------------------
# LLM judge
# --------------------------------------------------------------------------------------------------------------


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
        _validate(config)
        self.config = config
        self._endpoint = endpoint_url(config)
        self._secrets = _secret_forms(config.api_key)
        self._lock = threading.Lock()
        self._counts = {f.name: 0 for f in dataclasses.fields(JudgeStats)}
        self._last_error: str | None = None
        self._cache: dict[str, float] = {}
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._cache_file = None
        if config.cache_path:
            self._open_cache(config.cache_path)
        self._client = _make_client(config)
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
                                f"{self._quote(_status_body(exc), 300)}") from None
        except Exception as exc:  # noqa: BLE001 - SDK, httpx, anyio, TLS, size cap: any fault is a failed attempt
            raise _AttemptError(f"request to {self._endpoint} failed: {self._redact(_describe(exc))[:300]}") from None
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


def endpoint_url(config: JudgeConfig) -> str:
    """The chat-completions URL the judge posts to (Azure: the deployment's, with the API version)."""
    base = config.url.rstrip("/")
    if not config.api_version:
        return f"{base}/chat/completions"
    model = urllib.parse.quote(config.model, safe="")
    query = urllib.parse.urlencode({"api-version": config.api_version})
    return f"{base}/openai/deployments/{model}/chat/completions?{query}"


def _make_client(config: JudgeConfig) -> openai.AsyncOpenAI:
    """The SDK client: no SDK retries (ours raise the temperature), no redirects (a redirect could carry the
    api-key header elsewhere), no compression (the size cap counts the bytes that are decoded), capped replies."""
    hooks: dict[str, list] = {"response": [_cap_reply(config.max_reply_bytes)]}
    if not config.api_key:  # a keyless local server: the SDK insists on a key, so send none of its placeholder
        hooks["request"] = [_drop_credentials]
    http = openai.DefaultAsyncHttpxClient(timeout=config.timeout_s, follow_redirects=False, event_hooks=hooks)
    common: dict[str, Any] = dict(api_key=config.api_key or _NO_KEY, max_retries=0, timeout=config.timeout_s,
                                  http_client=http, default_headers={"Accept-Encoding": "identity"})
    if config.api_version:
        return openai.AsyncAzureOpenAI(azure_endpoint=config.url, api_version=config.api_version, **common)
    return openai.AsyncOpenAI(base_url=config.url, **common)


_NO_KEY = "no-key"


async def _drop_credentials(request: Any) -> None:
    """httpx request hook: remove the SDK's placeholder credentials (and any picked up from its environment)."""
    for name in ("authorization", "api-key"):
        request.headers.pop(name, None)


class _ReplyTooLarge(Exception):
    """A judge reply (or error body) beyond ``max_reply_bytes``: read no further."""


class _CappedStream(httpx.AsyncByteStream):
    """A response body that raises :class:`_ReplyTooLarge` once more than ``limit`` bytes have arrived."""

    def __init__(self, inner: Any, limit: int):
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise _ReplyTooLarge(f"reply larger than the {self._limit}-byte cap (max_reply_bytes)")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _cap_reply(limit: int) -> Callable[[Any], Awaitable[None]]:
    """An httpx response hook (it runs before the body is read) that refuses a declared length over ``limit``
    and caps an undeclared (chunked) one while it streams in."""

    async def hook(response: Any) -> None:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _ReplyTooLarge(f"reply of {length} bytes exceeds the {limit}-byte cap (max_reply_bytes)")
        response.stream = _CappedStream(response.stream, limit)

    return hook


def _status_body(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text
    except Exception:  # the body is only for the message
        return ""


def _describe(exc: BaseException) -> str:
    """``exc`` and the causes the SDK wraps it around ("Connection error." alone says little)."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(parts) < 4:
        seen.add(id(exc))
        part = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if part not in parts:  # httpx re-raises its transport's error under the same name and text
            parts.append(part)
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


# An Authorization / api-key header value as it appears in an echoed header dump, JSON or repr.
_SECRET_HEADER = re.compile(r"(?i)((?:authorization|api-key|x-api-key)[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+)?[^\s\"',;}\]\\]+")


def _secret_forms(secret: str) -> tuple[str, ...]:
    """``secret`` as it may appear in a reply or a repr: raw, JSON-escaped, URL-quoted."""
    if not secret:
        return ()
    forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), repr(secret)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every ``secrets`` string and every Authorization / api-key header value replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_HEADER.sub(r"\1***", text)


# --------------------------------------------------------------------------------------------------------------
# Rule-based scorers (no judge)
# --------------------------------------------------------------------------------------------------------------

_WRAPPERS = " \t\n\r*`\"'"
# The whole answer is one letter, possibly bracketed and/or followed by a period/colon: "B", "(B)", "B.", "b)".
_BARE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")
# An option label opening the answer: "B) a red car", "(B) red", "B. red", "B: red". A bare "A red car" is not.
_LEADING_LABEL = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])[.:)])(?:\s|$)")
# A cue word followed by the letter: "The answer is B", "answer: (c)", "option b", "choice D".
_CUED_LETTER = re.compile(
    r"\b(?:answer|option|choice)\b\s*(?:is\b)?\s*:?\s*(?:option\s+|choice\s+)?\(?([A-Za-z])\b\)?(?=(\s*\w)?)",
    re.IGNORECASE,
)


def _choice_letter(text: str) -> str | None:
    """The option letter ``text`` names, upper-cased, or ``None`` when no single letter can be identified."""
    text = text.strip(_WRAPPERS)
    for pattern in (_BARE_LETTER, _LEADING_LABEL):
        match = pattern.match(text)
        if match:
            return next(g for g in match.groups() if g).upper()
    letters = set()
    for match in _CUED_LETTER.finditer(text):
        letter, next_word = match.group(1), match.group(2)
        # A lower-case letter followed by a word is an article ("the answer is a red car"), not an option.
        if letter.islower() and next_word is not None:
            continue
        letters.add(letter.upper())
    return letters.pop() if len(letters) == 1 else None


def score_choice(answer: str | None, solution: str) -> float:
    """1.0 when ``answer`` names the same option letter as ``solution`` (case-insensitive), else 0.0.

    Both sides accept "B", "(B)", "B.", "B) a red car"; the answer may also say "The answer is B" or
    "option b". An answer naming no letter, or several different ones, scores 0.0.
    """
    if answer is None:
        return 0.0
    mine, truth = _choice_letter(answer), _choice_letter(solution)
    return float(mine is not None and mine == truth)


_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _normalize(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def score_exact(answer: str | None, solution: str) -> float:
    """1.0 when the SQuAD-normalised answer equals the normalised solution, else 0.0.

    An answer that normalises to nothing (empty, or only punctuation/articles) scores 0.0 even against an
    equally empty solution, so that an empty ``<answer></answer>`` is never rewarded.
    """
    if answer is None:
        return 0.0
    mine = _normalize(answer)
    return float(bool(mine) and mine == _normalize(solution))


# Thousands groups only in the canonical 1,234,567 form; otherwise "1,2" is the number 1 followed by 2.
_NUMBER = re.compile(r"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)(\s*%)?")


def _first_number(text: str) -> tuple[float, bool] | None:
    """The first number in ``text`` and whether a percent sign follows it, or ``None``."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    return float(match.group(1).replace(",", "")), match.group(2) is not None


def score_numeric(answer: str | None, solution: str, rel_tol: float = 1e-6) -> float:
    """1.0 when the first numbers of ``answer`` and ``solution`` agree within ``rel_tol``, else 0.0.

    Accepts integers, decimals, signs and thousands separators ("1,234"). A percent sign is ignored
    ("50%" equals "50") and, when only one side has it, the fraction also matches ("50%" equals "0.5"),
    since data sets write percentages both ways. 0.0 when either side has no number.
    """
    if answer is None:
        return 0.0
    mine, truth = _first_number(answer), _first_number(solution)
    if mine is None or truth is None:
        return 0.0
    (a, a_pct), (b, b_pct) = mine, truth
    candidates = [(a, b)]
    if a_pct != b_pct:
        candidates.append((a / 100.0, b) if a_pct else (a, b / 100.0))
    return float(any(math.isclose(x, y, rel_tol=rel_tol, abs_tol=0.0) for x, y in candidates))


SCORERS: Mapping[str, Callable[[str | None, str], float]] = {
    "choice": score_choice,
    "exact": score_exact,
    "numeric": score_numeric,
}


def rule_score(kind: str, answer: str | None, solution: str) -> float:
    """Score with the rule-based scorer named ``kind`` (one of :data:`SCORERS`)."""
    try:
        scorer = SCORERS[kind]
    except KeyError:
        raise ConfigError(f"unknown rule scorer {kind!r}; known: {sorted(SCORERS)}") from None
    return scorer(answer, solution)
