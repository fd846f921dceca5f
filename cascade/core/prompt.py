"""The prompt step: a cache-friendly request with its stable prefix first.

Provider and vLLM prefix caches only hit when a request starts with the same bytes as an earlier
one. :func:`prepare_prompt` keeps that prefix (the leading system/developer messages and the tool
definitions) byte-identical across requests: tools are put in a canonical order with canonical key
order, and lines that change on every request (timestamps, dates, clock times, UUIDs, request ids,
per-user lines) are lifted out of the system prompt and placed, verbatim, where the policy's
``prompt.volatile`` says: in a second system message right after the stable ones (``system``, the
default: they keep the system role's authority), or at the start of the last user message
(``user``); ``keep`` leaves them where they are. The model still reads every line. The stable
prefix (without the volatile lines) is then hashed, which lets the ledger measure how often
prefixes repeat.
What counts as volatile is decided in :mod:`cascade.core.volatile`. Everything here is pure CPU and
deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cascade.core.tokens import estimate_message_tokens
from cascade.core.volatile import split_volatile_sentences, volatile_lines
from cascade.errors import RoutingError
from cascade.policy.model import VolatilePlacement

__all__ = ["Message", "MovedSpan", "PreparedPrompt", "prepare_prompt"]

Message = Mapping[str, Any]
"""An OpenAI chat message as received on the wire (role, content, name, tool_calls, ...)."""

_ROLES = ("assistant", "developer", "function", "system", "tool", "user")
_PREFIX_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class MovedSpan:
    """A piece of volatile text found in (and possibly taken out of) the stable prefix."""

    kind: str
    """``timestamp``, ``date``, ``time``, ``uuid``, ``request_id`` or ``greeting``."""
    text: str
    """The line verbatim without its line break, or only its volatile sentences when the line's
    other sentences could stay."""
    from_message: int
    """Index of the message it came from, in the input messages."""


@dataclass(frozen=True)
class PreparedPrompt:
    """A request made cache-friendly, with what routing needs to know about it."""

    messages: tuple[dict[str, Any], ...]
    """What to send, stable prefix first. Unchanged nested values are shared with the input."""
    tools: tuple[dict[str, Any], ...] | None
    """Tool definitions in canonical order and key order; ``None`` when none were given."""
    prefix_hash: str
    """16 hex digits of sha256 over the stable prefix (system messages as sent + tools)."""
    prefix_tokens: int
    """Estimated tokens of the stable prefix."""
    prompt_tokens: int
    """Estimated tokens of the whole request."""
    scoring_text: str
    """What the confidence scorer reads: the last user message's text parts, joined by newline."""
    volatile: tuple[MovedSpan, ...]
    """Volatile lines found in the prefix, whether or not they were moved."""
    moved: bool
    """True when the volatile lines were moved out of the stable prefix (to ``placement``)."""
    placement: VolatilePlacement = "system"
    """Where volatile lines go: ``system`` (a system message after the stable prefix), ``user``
    (the start of the last user message) or ``keep`` (left in place, only reported)."""
    prefix_messages: int = 0
    """How many leading ``messages`` are the stable prefix (what a cache marker may close)."""


def prepare_prompt(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    volatile: VolatilePlacement = "system",
) -> PreparedPrompt:
    """Build the cache-friendly form of a chat request; the caller's objects are never changed.

    Raises :class:`~cascade.errors.RoutingError` naming the offending field when the messages
    are empty, malformed, or contain no user message, or when a tool is not a JSON object.
    """
    last_user = _validate(messages)
    prefix_end = _prefix_length(messages)
    move_volatile = volatile != "keep"
    prefix = _stable_prefix(messages[:prefix_end], move_volatile)
    out = [dict(message) for message in prefix.messages]
    out += [dict(message) for message in messages[prefix_end:]]
    moved = move_volatile and bool(prefix.volatile)
    block = "\n".join(span.text for span in prefix.volatile)
    if moved and volatile == "user":
        user = last_user - (prefix_end - len(prefix.messages))  # after emptied ones went
        out[user]["content"] = _prepend(messages[last_user]["content"], block)
    elif moved:
        # Right after the stable prefix: its bytes stay identical (and cache), and the lines keep
        # the role the app gave them instead of reading as the user's own claim.
        role = messages[prefix.volatile[0].from_message]["role"]
        out.insert(len(prefix.messages), {"role": role, "content": block})

    canonical_tools = _canonical_tools(tools)
    prefix_tokens = prefix.tokens
    if canonical_tools:
        prefix_tokens += estimate_message_tokens((), canonical_tools)
    # The same bytes as _canonical_json([prefix messages, tools]), without re-encoding the prefix.
    tools_json = _canonical_json(canonical_tools) if canonical_tools else "[]"
    prefix_json = f"[{prefix.json},{tools_json}]"
    digest = hashlib.sha256(prefix_json.encode()).hexdigest()
    return PreparedPrompt(
        messages=tuple(out),
        tools=tuple(canonical_tools) if canonical_tools else None,
        prefix_hash=digest[:16],
        prefix_tokens=prefix_tokens,
        prompt_tokens=prefix_tokens + estimate_message_tokens(out[len(prefix.messages) :]),
        scoring_text="\n".join(_texts(messages[last_user]["content"])),
        volatile=prefix.volatile,
        moved=moved,
        placement=volatile,
        prefix_messages=len(prefix.messages),
    )


@dataclass(frozen=True)
class _Prefix:
    """The leading system/developer messages as they will be sent, and what was found in them."""

    messages: tuple[Mapping[str, Any], ...]
    """Without their volatile lines when those move; messages left empty are dropped."""
    volatile: tuple[MovedSpan, ...]
    tokens: int
    json: str
    """The messages' canonical JSON (hashed with the tools into the prefix hash)."""


def _stable_prefix(messages: Sequence[Message], move_volatile: bool) -> _Prefix:
    """The prefix's analysis; remembered for prefixes of plain string fields.

    Most traffic repeats a few system prompts, and scanning them (volatile lines, token
    estimate, canonical JSON) is most of this step's work for a long system prompt.
    """
    try:
        key = tuple(tuple(message.items()) for message in messages)
        hash(key)
    except TypeError:  # list content, or other unhashable values: analyse it every time
        return _analyse_prefix(messages, move_volatile)
    return _analyse_cached(key, move_volatile)


@lru_cache(maxsize=256)
def _analyse_cached(key: tuple[tuple[tuple[str, Any], ...], ...], move_volatile: bool) -> _Prefix:
    return _analyse_prefix([dict(items) for items in key], move_volatile)


def _analyse_prefix(messages: Sequence[Message], move_volatile: bool) -> _Prefix:
    out = [dict(message) for message in messages]
    volatile: list[MovedSpan] = []
    emptied: set[int] = set()  # system messages that held nothing but volatile lines
    for index, message in enumerate(messages):
        content = message["content"]
        found = len(volatile)
        if isinstance(content, str):
            kept: str | list[Mapping[str, Any]] = _strip_volatile(
                content, index, volatile, move_volatile
            )
        else:
            kept = [_strip_part(part, index, volatile, move_volatile) for part in content]
        if move_volatile and len(volatile) > found:
            out[index]["content"] = kept
            if not _has_text(kept):
                emptied.add(index)
    # Sent empty, they would be refused by some providers.
    out = [message for index, message in enumerate(out) if index not in emptied]
    try:
        text = _canonical_json(out)
    except (TypeError, ValueError) as error:
        raise RoutingError(
            f"messages: a system or developer message is not plain JSON: {error}"
        ) from None
    return _Prefix(tuple(out), tuple(volatile), estimate_message_tokens(out), text)


def _validate(messages: Sequence[Message]) -> int:
    """Check the request's shape and return the index of its last user message."""
    # A list (what JSON gives) is checked first: ABC checks cost more than the rest of this step.
    if not isinstance(messages, list) and (
        isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence)
    ):
        raise RoutingError(f"messages: must be a list of message objects, got {_kind(messages)}")
    if not messages:
        raise RoutingError("messages: must not be empty; send at least one user message")
    last_user = -1
    for index, message in enumerate(messages):
        if not isinstance(message, (dict, Mapping)):
            raise RoutingError(
                f'messages[{index}]: must be an object like {{"role": "user", "content": "..."}}, '
                f"got {_kind(message)}"
            )
        role = message.get("role")
        if role not in _ROLES:
            found = "missing" if role is None else f"unknown role {role!r}"
            raise RoutingError(f"messages[{index}].role: {found}; allowed: {', '.join(_ROLES)}")
        if type(message.get("content")) is not str:  # string content needs no further check
            _validate_content(message, role, f"messages[{index}]")
        if role == "user":
            last_user = index
    if last_user < 0:
        raise RoutingError('messages: no message has role "user"; a request needs at least one')
    return last_user


def _validate_content(message: Message, role: str, where: str) -> None:
    """Content is a string or a list of parts; only an assistant may leave it out or null."""
    content = message.get("content")
    if content is None:
        if role == "assistant":
            return
        raise RoutingError(f"{where}.content: missing; a {role} message needs a string or parts")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise RoutingError(
            f"{where}.content: must be a string or a list of content parts, got {_kind(content)}"
        )
    for number, part in enumerate(content):
        at = f"{where}.content[{number}]"
        if not isinstance(part, Mapping):
            raise RoutingError(
                f'{at}: must be an object like {{"type": "text", "text": "..."}}, got {_kind(part)}'
            )
        if not isinstance(part.get("type"), str):
            raise RoutingError(f'{at}.type: must be a string such as "text" or "image_url"')
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise RoutingError(f"{at}.text: must be a string, got {_kind(part.get('text'))}")
        if role in _PREFIX_ROLES and part["type"] != "text":
            raise RoutingError(f'{at}.type: a {role} message takes only "text" parts')


def _kind(value: object) -> str:
    """A value's JSON-ish type name, for error messages."""
    return "null" if value is None else type(value).__name__


def _strip_volatile(text: str, index: int, found: list[MovedSpan], remove: bool) -> str:
    """Record the volatile parts of ``text`` in ``found``; return it without them if ``remove``.

    A volatile line of several sentences gives up only its volatile sentences: in "You are
    ACME's assistant. Today is 2026-11-22." the first sentence stays in the stable prefix.
    """
    hits = dict(volatile_lines(text))
    if not hits:
        return text
    lines = text.split("\n")
    kept: dict[int, str] = {}
    for number in sorted(hits):
        line = lines[number].removesuffix("\r")
        stays, goes = split_volatile_sentences(line)
        if stays and goes:
            kept[number] = stays + lines[number][len(line) :]
            found.extend(MovedSpan(kind, sentence, index) for kind, sentence in goes)
        else:
            found.append(MovedSpan(hits[number], line, index))
    if not remove:
        return text
    return "\n".join(
        kept.get(number, line)
        for number, line in enumerate(lines)
        if number not in hits or number in kept
    )


def _strip_part(
    part: Mapping[str, Any], index: int, found: list[MovedSpan], remove: bool
) -> Mapping[str, Any]:
    """A text part without its volatile lines (a new dict only when something changed)."""
    text = part["text"]
    kept = _strip_volatile(text, index, found, remove)
    return part if kept is text else {**part, "text": kept}


def _prepend(content: str | list[Any], block: str) -> str | list[Any]:
    """Content with ``block`` placed before the user's own text."""
    if isinstance(content, str):
        return f"{block}\n\n{content}"
    return [{"type": "text", "text": block}, *content]


def _has_text(content: str | list[Any]) -> bool:
    """Whether system content still says anything."""
    return any(text.strip() for text in _texts(content))


def _prefix_length(messages: Sequence[Message]) -> int:
    """How many leading messages are system/developer messages."""
    count = 0
    while count < len(messages) and messages[count]["role"] in _PREFIX_ROLES:
        count += 1
    return count


def _texts(content: str | list[Any] | None) -> Iterator[str]:
    """The text of string content, or of each text part of list content."""
    if isinstance(content, str):
        yield content
    elif content is not None:
        yield from (part["text"] for part in content if part["type"] == "text")


def _canonical_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Tools with keys sorted at every depth, ordered by function name, then by content."""
    if tools is None:
        return []
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise RoutingError(f"tools: must be a list of tool objects, got {_kind(tools)}")
    keyed = []
    for number, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise RoutingError(
                f'tools[{number}]: must be an object like {{"type": "function", "function": '
                f"{{...}}}}, got {_kind(tool)}"
            )
        try:
            text = _canonical_json(tool)
        except (TypeError, ValueError) as error:
            raise RoutingError(f"tools[{number}]: must be plain JSON: {error}") from None
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        keyed.append((name if isinstance(name, str) else "", text, number))
    keyed.sort()
    return [json.loads(text) for _, text, _ in keyed]


def _canonical_json(value: Any) -> str:
    """JSON with sorted keys and no optional whitespace: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
