"""The judge's HTTP side: the openai SDK client with a reply-size cap, and the masking of keys in error texts.

No SDK retries (the judge's own raise the temperature), no redirects (one could carry the api-key header
elsewhere), no compression (the cap counts the bytes that are decoded).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import openai

try:  # the openai SDK's HTTP library: httpx2 from openai 3, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 2.x
    import httpx  # type: ignore[no-redef]

from mini_o3_jax.scoring.judge_config import JudgeConfig


def make_client(config: JudgeConfig) -> openai.AsyncOpenAI:
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


def status_body(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text
    except Exception:  # the body is only for the message
        return ""


def describe(exc: BaseException) -> str:
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


def secret_forms(secret: str) -> tuple[str, ...]:
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
