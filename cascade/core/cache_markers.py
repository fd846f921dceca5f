"""Prompt-cache markers for API providers that cache only what a request marks.

vLLM, SGLang and OpenAI cache a repeated prefix on their own; the prompt step's byte-identical
stable prefix is all they need. Anthropic-family APIs cache a prefix only up to a
``cache_control`` breakpoint: at most four per request, each above a minimum prefix length that
depends on the model, and a write costs a premium (1.25x the input price for the 5-minute
lifetime, 2x for an hour) that the reads (0.1x) repay. OpenAI takes a ``prompt_cache_key`` that
sends requests with one prefix to one cache.

:func:`mark` adds what the tier's provider accepts (``tiers[].cache`` in the policy) to one
call's payload, in litellm's OpenAI form (litellm moves each ``cache_control`` into Anthropic's
request): breakpoints at the end of the stable prefix (the system prompt, else the tools), at the
end of the conversation's history and of long document parts when the policy asks, never on a
prefix shorter than the provider caches, never more than four. The caller's objects are never
changed. Pure CPU; what a payload gets depends only on the payload and the tier.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from cascade.core.tokens import estimate_message_tokens, estimate_tokens
from cascade.policy.model import Tier

__all__ = [
    "MAX_BREAKPOINTS",
    "MarkerStyle",
    "mark",
    "marker_style",
    "min_prefix_tokens",
    "write_premium",
]

MarkerStyle = Literal["anthropic", "openai"]

MAX_BREAKPOINTS = 4
"""Anthropic refuses a request with more ``cache_control`` blocks than this."""

_WRITE_PREMIUM = {"5m": Decimal("1.25"), "1h": Decimal(2)}
# Minimum cacheable prefix by model family (Anthropic's prompt-caching documentation); the first
# pattern that matches the model name wins, 1,024 tokens otherwise.
_MIN_TOKENS = (
    (re.compile(r"opus-4-[5-9]|opus-4\.[5-9]|haiku-4"), 4096),
    (re.compile(r"haiku|sonnet-4-[6-9]|sonnet-4\.[6-9]"), 2048),
)
_DEFAULT_MIN_TOKENS = 1024


def marker_style(tier: Tier) -> MarkerStyle | None:
    """What the tier's provider gets: the policy's ``cache.markers``, or on ``auto`` Anthropic
    breakpoints for ``anthropic/`` models and a cache key for ``openai/`` models at OpenAI
    itself (an ``endpoint`` makes it some other server, which may refuse the field)."""
    chosen = tier.cache.markers
    if tier.kind != "api" or chosen == "off":
        return None
    if chosen != "auto":
        return chosen
    provider = tier.model.split("/", 1)[0] if "/" in tier.model else ""
    if provider == "anthropic":
        return "anthropic"
    if provider == "openai" and tier.endpoint is None:
        return "openai"
    return None


def min_prefix_tokens(tier: Tier) -> int:
    """The shortest prefix worth a breakpoint on this tier (the policy's, else the model's)."""
    if tier.cache.min_tokens is not None:
        return tier.cache.min_tokens
    name = tier.model.lower()
    return next((n for pattern, n in _MIN_TOKENS if pattern.search(name)), _DEFAULT_MIN_TOKENS)


def write_premium(tier: Tier) -> Decimal:
    """The cache-write price as a multiple of the input price: Anthropic's for the tier's ttl
    when it sends Anthropic markers, else 1 (nobody else charges for writes)."""
    return _WRITE_PREMIUM[tier.cache.ttl] if marker_style(tier) == "anthropic" else Decimal(1)


def mark(
    payload: Mapping[str, Any], tier: Tier, *, prefix_messages: int, prefix_hash: str
) -> Mapping[str, Any]:
    """The payload to send to ``tier``: with its provider's cache markers, or ``payload`` itself
    when it gets none. ``prefix_messages``: how many leading messages are the stable prefix (the
    volatile system message after them is not); ``prefix_hash``: the prompt step's hash of it."""
    style = marker_style(tier)
    if style == "openai":
        if "prompt_cache_key" in payload:  # the caller chose its own
            return payload
        return {**payload, "prompt_cache_key": f"cascade-{prefix_hash}"}
    if style == "anthropic":
        return _anthropic(payload, tier, prefix_messages)
    return payload


def _anthropic(payload: Mapping[str, Any], tier: Tier, prefix_messages: int) -> Mapping[str, Any]:
    messages = payload.get("messages")
    tools = payload.get("tools")
    if not isinstance(messages, list) or not _well_formed(messages, tools):
        return payload  # not a request a provider takes: sent as it is, refused there
    if _has_markers(messages, tools):
        return payload
    listed = tools if isinstance(tools, list) else None
    places = _breakpoints(messages, listed, tier, prefix_messages)
    if not places:
        return payload
    control = {"type": "ephemeral"}
    if tier.cache.ttl == "1h":
        control["ttl"] = "1h"
    marked = dict(payload)
    new_messages = list(messages)
    for place in places:
        if place.message is None:  # the last tool definition
            new_tools = list(marked["tools"])
            new_tools[-1] = {**new_tools[-1], "cache_control": control}
            marked["tools"] = new_tools
        else:
            new_messages[place.message] = _with_control(
                new_messages[place.message], place.part, control
            )
    marked["messages"] = new_messages
    return marked


class _Place:
    """Where a breakpoint goes: a message (and which of its content parts), or the tools."""

    __slots__ = ("message", "part", "tokens")

    def __init__(self, message: int | None, part: int | None, tokens: int) -> None:
        self.message = message
        self.part = part  # None: the message's string content (or its last text part)
        self.tokens = tokens  # the prefix up to and including this block


def _breakpoints(
    messages: Sequence[Any], tools: Sequence[Any] | None, tier: Tier, prefix_messages: int
) -> list[_Place]:
    """The breakpoints worth placing, in order: the stable prefix first, then the history, then
    documents, each kept only above the minimum and at most four in all."""
    minimum = min_prefix_tokens(tier)
    tool_tokens = estimate_message_tokens((), tools) if tools else 0
    stable = min(prefix_messages, len(messages))
    wanted: list[_Place] = []
    if stable > 0 and _markable(messages[stable - 1]):
        tokens = tool_tokens + estimate_message_tokens(messages[:stable])
        wanted.append(_Place(stable - 1, None, tokens))
    elif tools:
        wanted.append(_Place(None, None, tool_tokens))
    last_user = _last_user(messages)
    if tier.cache.history and last_user is not None and last_user - 1 >= stable:
        end = last_user - 1
        if _markable(messages[end]):
            tokens = tool_tokens + estimate_message_tokens(messages[: end + 1])
            wanted.append(_Place(end, None, tokens))
    if tier.cache.document_min_tokens is not None:
        wanted += _documents(messages, tool_tokens, tier.cache.document_min_tokens)
    kept: list[_Place] = []
    seen: set[tuple[int | None, int | None]] = set()
    for place in wanted:
        where = (place.message, place.part)
        if place.tokens >= minimum and where not in seen and len(kept) < MAX_BREAKPOINTS:
            kept.append(place)
            seen.add(where)
    return kept


def _documents(messages: Sequence[Any], tool_tokens: int, least: int) -> list[_Place]:
    """A breakpoint after each user text part of at least ``least`` tokens that has something
    after it (a document before the question)."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for j, part in enumerate(content[:-1] if i == len(messages) - 1 else content):
            if _is_text(part) and estimate_tokens(part["text"]) >= least:
                upto = {**message, "content": [*content[:j], part]}
                tokens = estimate_message_tokens([*messages[:i], upto])
                found.append(_Place(i, j, tool_tokens + tokens))
    return found


def _last_user(messages: Sequence[Any]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], Mapping) and messages[i].get("role") == "user":
            return i
    return None


def _markable(message: Any) -> bool:
    """A message whose content can carry a breakpoint: non-empty text, or a text part."""
    if not isinstance(message, Mapping):
        return False
    content = message.get("content")
    if isinstance(content, str):
        return bool(content)
    return isinstance(content, list) and any(_is_text(part) for part in content)


def _is_text(part: Any) -> bool:
    if not isinstance(part, Mapping) or part.get("type") != "text":
        return False
    text = part.get("text")
    return isinstance(text, str) and bool(text)


def _with_control(
    message: Mapping[str, Any], part: int | None, control: dict[str, str]
) -> dict[str, Any]:
    """The message with ``cache_control`` on the given content part (default: its last text)."""
    content = message["content"]
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content, "cache_control": control}]}
    parts = list(content)
    if part is None:
        part = max(i for i, p in enumerate(parts) if _is_text(p))
    parts[part] = {**parts[part], "cache_control": control}
    return {**message, "content": parts}


def _well_formed(messages: Sequence[Any], tools: Any) -> bool:
    """Every message and tool an object (what the prompt step lets through, checked again here
    because markers must never be what fails a request)."""
    listed = tools if isinstance(tools, list) else []
    return all(isinstance(m, Mapping) for m in messages) and all(
        isinstance(t, Mapping) for t in listed
    )


def _has_markers(messages: Sequence[Any], tools: Any) -> bool:
    """The request already carries ``cache_control`` somewhere: the app placed its own."""
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(p, Mapping) and "cache_control" in p for p in content
        ):
            return True
    return isinstance(tools, list) and any(
        isinstance(t, Mapping) and "cache_control" in t for t in tools
    )
