"""What every tier client shares: the answer of one call, its usage, the client protocol, and
how an upstream failure is classified."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Protocol

import orjson

from cascade.core.tokens import estimate_tokens
from cascade.errors import TierError
from cascade.policy.model import Tier

JSON = dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, as the tier reported them (or estimated, and flagged)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens read from the tier's prefix cache (included in ``prompt_tokens``)."""
    estimated: bool = False
    cache_write_tokens: int = 0
    """Prompt tokens written to a marker-based provider's cache (included in ``prompt_tokens``,
    billed at the cache-write price)."""


@dataclass(frozen=True)
class TierAnswer:
    """A complete (non-streamed) answer from a tier."""

    body: JSON
    """The OpenAI ``chat.completion`` object."""
    usage: Usage
    latency_s: float


class TierClient(Protocol):
    """Calls one kind of tier. ``affinity`` is the request's prefix hash (None: no stable
    prefix): a tier with several replicas keeps one prefix on one replica, where its prefix
    cache is; others ignore it."""

    async def complete(
        self, tier: Tier, payload: Mapping[str, Any], *, affinity: str | None = None
    ) -> TierAnswer:
        """One non-streamed call; raises TierError."""
        ...

    def stream(
        self, tier: Tier, payload: Mapping[str, Any], *, affinity: str | None = None
    ) -> AsyncIterator[JSON]:
        """One streamed call, as parsed ``chat.completion.chunk`` objects; raises TierError."""
        ...


def parse_usage(usage: object) -> Usage | None:
    """A tier's own token counts (an OpenAI ``usage`` object), or None when it sent none that
    read as counts (an upstream's nonsense is never trusted: counts are whole, non-negative)."""
    # isinstance(x, dict) first: answers are parsed JSON, and an ABC check costs far more.
    if not isinstance(usage, (dict, Mapping)):
        return None
    completion = usage.get("completion_tokens")
    if type(completion) is not int or completion < 0:
        return None
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, (dict, Mapping)):
        details = {}
    prompt = _count(usage.get("prompt_tokens"))
    cached = min(_count(details.get("cached_tokens")), prompt)
    # litellm reports Anthropic's cache writes top-level (``cache_creation_input_tokens``, as
    # Anthropic names them) and in the details; both count inside prompt_tokens.
    written = _count(usage.get("cache_creation_input_tokens")) or _count(
        details.get("cache_write_tokens")
    )
    return Usage(prompt, completion, cached, cache_write_tokens=min(written, prompt - cached))


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0


def estimate_usage(request: Mapping[str, Any], answer_text: str) -> Usage:
    """Token counts estimated from the texts, flagged as estimated (for tiers that send none)."""
    prompt = estimate_tokens(json.dumps(request.get("messages", ""), ensure_ascii=False))
    return Usage(prompt, estimate_tokens(answer_text), 0, estimated=True)


def read_usage(body: Mapping[str, Any], request: Mapping[str, Any]) -> Usage:
    """Usage from an answer's ``usage`` object; estimated from the texts when it is missing."""
    usage = parse_usage(body.get("usage"))
    if usage is not None:
        return usage
    choices = body.get("choices")
    listed = choices if isinstance(choices, list) else []
    messages = [c.get("message") for c in listed if isinstance(c, dict)]
    text = "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
    return estimate_usage(request, text)


def status_kind(status: int) -> str:
    """The TierError kind of an HTTP status other than 200: 429 ``rate_limited``, 503
    ``unavailable``, other 5xx ``server_error``, anything else ``client_error``."""
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "unavailable"
    if status >= 500:
        return "server_error"
    return "client_error"


def http_error(tier: str, status: int, raw: bytes, retry_after: str | None = None) -> TierError:
    """The TierError for a tier's non-200 answer: the status decides the kind, the body gives the
    message (whatever its shape), and ``Retry-After`` is kept on 429 and 503."""
    kind = status_kind(status)
    wait = retry_after_s(retry_after) if kind in ("rate_limited", "unavailable") else None
    return TierError(tier, kind, error_message(raw), status, retry_after_s=wait)


MAX_MESSAGE_CHARS = 300
"""How much of an upstream's error message is kept (it reaches logs, headers and the ledger)."""
_MAX_PARSED_BYTES = 1 << 20  # a larger error body is not parsed as JSON, only quoted
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")
_TAG = re.compile(r"<[^>]*>")


def error_message(raw: bytes) -> str:
    """What an upstream's error body says, as one line of at most ``MAX_MESSAGE_CHARS``
    printable characters; never raises, whatever the body holds.

    Understood: ``{"error": {"message": ...}}`` (OpenAI), ``{"error": "..."}``,
    ``{"message": ...}`` and ``{"detail": ...}`` (vLLM, FastAPI), a list of those; anything else
    (HTML, plain text, truncated JSON, bytes that are not UTF-8) is quoted as text.
    """
    said: object = None
    if len(raw) <= _MAX_PARSED_BYTES:
        try:
            said = _said(orjson.loads(raw))
        except orjson.JSONDecodeError:
            said = None
    if said is None or said == "":
        text = raw[: 4 * MAX_MESSAGE_CHARS].decode("utf-8", "replace")
        if text.lstrip()[:1] == "<":  # an HTML error page from a proxy or load balancer
            text = _TAG.sub(" ", text)
    elif isinstance(said, str):
        text = said
    else:
        text = orjson.dumps(said).decode()
    text = _CONTROL.sub(" ", text[: 4 * MAX_MESSAGE_CHARS]).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "\u2026"
    return text or "no body"


def _said(body: object, depth: int = 0) -> object:
    """The message in a parsed error body, or the part of it that stands for one."""
    if depth > 4:  # a body nested deeper is no error format anyone sends: quote it
        return None
    if isinstance(body, list):
        return _said(body[0], depth + 1) if body else None
    if not isinstance(body, dict):
        return body
    for key in ("error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, (dict, list)):
            return _said(value, depth + 1) or value
        if value not in (None, ""):
            return value
    return body or None


MAX_RETRY_AFTER_S = 3600.0
"""A longer Retry-After is capped: a tier is never left alone for more than an hour."""
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait: delta-seconds or an HTTP-date (a date in the
    past is 0), capped at ``MAX_RETRY_AFTER_S``; None when absent, negative or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
