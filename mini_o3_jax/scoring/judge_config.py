"""Where and how to reach the LLM judge: `JudgeConfig`, and the judge block of a config file.

A config file's block maps 1:1 onto `JudgeConfig` (unknown keys are an error); its endpoint fields left
empty come from the environment (`MINI_O3_JUDGE_URL`, or the released code's `END_POINT` and friends).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from mini_o3_jax.config_files import from_block
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.scoring.judge_prompts import SYSTEM_PROMPT, USER_PROMPT_TEMPLATE, check_user_prompt


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
        if not self.url:
            raise ConfigError(
                "JudgeConfig.url is empty: set it to the judge's base URL (an OpenAI-compatible '.../v1' or an "
                "Azure endpoint), e.g. through MINI_O3_JUDGE_URL or END_POINT"
            )
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise ConfigError(f"JudgeConfig.url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ConfigError("JudgeConfig.model is empty: name the judge model (the deployment name on Azure)")
        if self.attempts < 1:
            raise ConfigError(f"JudgeConfig.attempts must be >= 1, got {self.attempts}")
        if self.concurrency < 1:
            raise ConfigError(f"JudgeConfig.concurrency must be >= 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise ConfigError(f"JudgeConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.backoff_s < 0:
            raise ConfigError(f"JudgeConfig.backoff_s must be >= 0, got {self.backoff_s}")
        if self.max_tokens < 1:
            raise ConfigError(f"JudgeConfig.max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_reply_bytes < 1024:
            raise ConfigError(f"JudgeConfig.max_reply_bytes must be >= 1024, got {self.max_reply_bytes}")

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
        return from_block(cls, values, "judge")  # an unknown key is one ConfigError naming judge.<key>


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



def endpoint_url(config: JudgeConfig) -> str:
    """The chat-completions URL the judge posts to (Azure: the deployment's, with the API version)."""
    base = config.url.rstrip("/")
    if not config.api_version:
        return f"{base}/chat/completions"
    model = urllib.parse.quote(config.model, safe="")
    query = urllib.parse.urlencode({"api-version": config.api_version})
    return f"{base}/openai/deployments/{model}/chat/completions?{query}"


def judge_from_config(block: Mapping[str, Any] | None = None, *, unset: str | None = None) -> JudgeConfig:
    """The judge a config file's block describes, over the environment (:meth:`JudgeConfig.from_env`), checked
    now so that a mistake stops the run before the model is loaded. ``unset``: the one-line error to raise
    when no URL is configured anywhere (default: :meth:`JudgeConfig.validate`'s)."""
    judge = JudgeConfig.from_env(**dict(block or {}))
    if unset is not None and not judge.url:
        raise ConfigError(unset)
    judge.validate()
    return judge
