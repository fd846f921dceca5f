"""Anthropic's Messages API wire format (``POST /v1/messages``): requests, answers, errors.

A request is validated as Anthropic validates it: an unknown top-level field is refused
(``"<field>: Extra inputs are not permitted"``), as are a missing ``max_tokens``, a role other
than user or assistant, a temperature outside 0..1 and a malformed ``cache_control``. Fields of
the real API the simulator does not model (``thinking``, ``top_k``, ``service_tier``, ...) are
accepted and not read; so are unknown fields inside a block. Content blocks may be text,
tool_use or tool_result; other kinds (images, documents) are refused with a 400 that says so.

Errors have Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, the type
following the status: 400 invalid_request_error, 404 not_found_error, 413 request_too_large,
429 rate_limit_error, 529 overloaded_error, 500 api_error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.core.tokens import estimate_tokens
from cascade.simulator.answers import Ask
from cascade.simulator.marker_cache import Block, CachePlan, Ttl
from cascade.simulator.wire import BadRequest, Choice, json_object

__all__ = [
    "MessagesRequest",
    "content_block",
    "error_body",
    "message_body",
    "messages_ask",
    "parse_messages_request",
    "prompt_blocks",
    "stop_of",
    "tool_input",
    "tool_use_id",
    "usage_body",
]

_MESSAGE_OVERHEAD = 4  # tokens of role and separators per message, as cascade.core.tokens counts
_ERROR_TYPES = {
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CacheControl(BaseModel):
    """A cache breakpoint: ephemeral, kept 5 minutes (default) or an hour."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ephemeral"]
    ttl: Ttl = "5m"


class TextBlock(_Open):
    """A text content block."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1)]
    cache_control: CacheControl | None = None


class ToolUseBlock(_Open):
    """An earlier tool call of the assistant's."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Open):
    """A tool's result, sent back in a user message."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(BaseModel):
    """One turn: its role and its content, a string or a list of blocks."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: (
        Annotated[str, Field(min_length=1)] | Annotated[list[ContentBlock], Field(min_length=1)]
    )


class Tool(_Open):
    """A client tool: its name, description and the JSON Schema of its input."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoice(BaseModel):
    """``tool_choice``: auto, any (some tool), a named tool, or none."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesRequest(BaseModel):
    """The body of ``POST /v1/messages``."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    metadata: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    # Accepted as the real API accepts them; the simulator does not model them.
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    thinking: dict[str, Any] | None = None
    service_tier: str | None = None
    container: str | dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None


def parse_messages_request(body: bytes) -> MessagesRequest:
    """Parse and validate a request body, or raise :class:`BadRequest` saying what is wrong."""
    data = json_object(body)
    try:
        request = MessagesRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_first_error(exc, data)) from None
    choice = request.tool_choice
    if choice is not None and choice.type == "tool" and not choice.name:
        raise BadRequest("tool_choice.name: Field required when tool_choice.type is 'tool'")
    return request


def _first_error(exc: ValidationError, data: Any) -> str:
    """The deepest error, at its place in the request (pydantic's union labels left out)."""
    errors = []
    for error in exc.errors():
        path = _place(data, error["loc"])
        if error["type"] == "missing":
            path.append(error["loc"][-1])
        errors.append((path, error))
    path, error = max(errors, key=lambda pair: len(pair[0]))
    where = ".".join(str(p) for p in path) or "body"
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return (
            f"{where}: the simulated tier reads {ctx.get('expected_tags')} blocks, "
            f"not {ctx.get('tag')!r} ones"
        )
    if error["type"] == "union_tag_not_found":
        return f"{where}.type: Field required"
    return f"{where}: {error['msg']}"


def _place(data: Any, loc: Sequence[int | str]) -> list[int | str]:
    """The longest reading of ``loc`` as keys and indexes into ``data``: pydantic puts the name
    of a union's member in it too (``str``, a block's type), which may or may not be a key."""
    if not loc:
        return []
    part, rest = loc[0], loc[1:]
    skipped = _place(data, rest)
    inside = isinstance(data, dict) and part in data
    if inside or (isinstance(data, list) and isinstance(part, int) and part < len(data)):
        taken = [part, *_place(data[part], rest)]
        if len(taken) > len(skipped):
            return taken
    return skipped


def error_body(exc: BadRequest) -> dict[str, Any]:
    """Anthropic's error object for ``exc``."""
    kind = _ERROR_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "")
    message = {"type": kind or "invalid_request_error", "message": str(exc)}
    return {"type": "error", "error": message}


def _blocks(content: str | Sequence[TextBlock | ToolUseBlock | ToolResultBlock]) -> list[Any]:
    """A content string is one text block."""
    return [TextBlock(type="text", text=content)] if isinstance(content, str) else list(content)


def _text_of(block: TextBlock | ToolUseBlock | ToolResultBlock) -> str:
    """What a block says, for the token estimate: text, or its JSON for a tool call."""
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ToolResultBlock):
        content = block.content or ""
        return content if isinstance(content, str) else "\n".join(b.text for b in content)
    return _canonical({"name": block.name, "input": block.input})


def prompt_blocks(request: MessagesRequest) -> list[Block]:
    """The prompt as the cache sees it: tools, then system blocks, then each message's blocks."""
    out: list[Block] = []
    for tool in request.tools or ():
        data = tool.model_dump(exclude_none=True, exclude={"cache_control"})
        out.append(_block("tool", data, estimate_tokens(_canonical(data)), tool.cache_control))
    for text in _blocks(request.system or []):
        data = text.model_dump(exclude_none=True, exclude={"cache_control"})
        out.append(_block("system", data, estimate_tokens(text.text), text.cache_control))
    for message in request.messages:
        for index, item in enumerate(_blocks(message.content)):
            data = item.model_dump(exclude_none=True, exclude={"cache_control"})
            tokens = estimate_tokens(_text_of(item)) + (_MESSAGE_OVERHEAD if index == 0 else 0)
            out.append(_block(message.role, data, tokens, item.cache_control))
    return out


def _block(where: str, data: dict[str, Any], tokens: int, mark: CacheControl | None) -> Block:
    content = f"{where}\x00{_canonical(data)}".encode()
    return Block(content, tokens, mark.ttl if mark is not None else None)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def messages_ask(request: MessagesRequest) -> Ask:
    """What the answer depends on: the last user text, and the tool to call if any."""
    texts = [
        "\n".join(b.text for b in _blocks(m.content) if isinstance(b, TextBlock))
        for m in request.messages
        if m.role == "user"
    ]
    prompt = next((t for t in reversed(texts) if t), "")
    choice = request.tool_choice
    if not request.tools or (choice is not None and choice.type == "none"):
        return Ask(prompt=prompt)
    tools = request.tools
    if choice is not None and choice.type == "tool":
        tools = [t for t in tools if t.name == choice.name]
        if not tools:
            raise BadRequest(f"tool_choice.name: {choice.name!r} is not among the tools")
    tool = {"name": tools[0].name, "parameters": tools[0].input_schema}
    return Ask(prompt=prompt, tool=tool)


def stop_of(choice: Choice, stops: Sequence[str]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a choice cut as OpenAI's is."""
    if choice.finish_reason == "tool_calls":
        return "tool_use", None
    if choice.finish_reason == "length":
        return "max_tokens", None
    text = choice.reply.text
    if len("".join(choice.tokens)) < len(text):
        hits = [(text.find(s), s) for s in stops if s and s in text]
        return "stop_sequence", min(hits)[1]
    return "end_turn", None


def tool_input(choice: Choice) -> dict[str, Any]:
    """The tool call's input: its arguments as an object (empty when they are not valid JSON,
    as after a ``max_tokens`` cut; a streamed answer carries the raw text as it was produced)."""
    try:
        value = json.loads("".join(choice.tokens))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def usage_body(plan: CachePlan, output_tokens: int) -> dict[str, Any]:
    """Anthropic's ``usage`` object."""
    return {
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": plan.written,
        "cache_read_input_tokens": plan.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": plan.written_5m,
            "ephemeral_1h_input_tokens": plan.written_1h,
        },
        "output_tokens": output_tokens,
    }


def content_block(choice: Choice, *, opening: bool = False) -> dict[str, Any]:
    """The answer's one content block: text or a tool call (empty when ``opening`` a stream)."""
    if choice.reply.tool_name is None:
        return {"type": "text", "text": "" if opening else "".join(choice.tokens)}
    return {
        "type": "tool_use",
        "id": tool_use_id(choice),
        "name": choice.reply.tool_name,
        "input": {} if opening else tool_input(choice),
    }


def message_body(
    model: str, choice: Choice, plan: CachePlan, stops: Sequence[str]
) -> dict[str, Any]:
    """A whole (non-streamed) ``message`` object."""
    reason, sequence = stop_of(choice, stops)
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [content_block(choice)],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_body(plan, len(choice.tokens)),
    }


def tool_use_id(choice: Choice) -> str:
    """Anthropic's id of the choice's tool call (``toolu_...``), from the OpenAI call id."""
    return "toolu_" + choice.call_id.removeprefix("call_")
