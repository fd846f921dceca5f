"""What every tier client shares: the answer of one call, its usage, the client protocol, and
how an upstream failure is classified."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cascade.core.tokens import estimate_tokens
from cascade.policy.model import Tier

JSON = dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, as the tier reported them (or estimated, and flagged)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class TierAnswer:
    """A complete (non-streamed) answer from a tier."""

    body: JSON
    """The OpenAI ``chat.completion`` object."""
    usage: Usage
    latency_s: float


class TierClient(Protocol):
    """Calls one kind of tier."""

    async def complete(self, tier: Tier, payload: Mapping[str, Any]) -> TierAnswer:
        """One non-streamed call; raises TierError."""
        ...

    def stream(self, tier: Tier, payload: Mapping[str, Any]) -> AsyncIterator[JSON]:
        """One streamed call, as parsed ``chat.completion.chunk`` objects; raises TierError."""
        ...


def read_usage(body: Mapping[str, Any], request: Mapping[str, Any]) -> Usage:
    """Usage from an answer's ``usage`` object; estimated from the texts when it is missing."""
    usage = body.get("usage")
    # isinstance(x, dict) first: answers are parsed JSON, and an ABC check costs far more.
    if isinstance(usage, (dict, Mapping)) and isinstance(usage.get("completion_tokens"), int):
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, (dict, Mapping)) else None
        return Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage["completion_tokens"]),
            cached_tokens=int(cached or 0),
        )
    text = "".join(
        str((choice.get("message") or {}).get("content") or "")
        for choice in body.get("choices") or []
        if isinstance(choice, Mapping)
    )
    prompt = estimate_tokens(json.dumps(request.get("messages", ""), ensure_ascii=False))
    return Usage(prompt, estimate_tokens(text), 0, estimated=True)


def status_kind(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "unavailable"
    if status >= 500:
        return "server_error"
    return "client_error"


def error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return str(message or raw[:200].decode("utf-8", "replace") or "no body")
