"""The OpenAI Chat Completions wire format: requests validated, responses and chunks built.

Requests are validated by pydantic models that accept parameters they do not use (clients send
``user``, ``seed``, ``metadata`` and more; vLLM accepts them too) but reject wrong types and
values with OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.simulator.answers import Reply

__all__ = [
    "BadRequest",
    "ChatRequest",
    "Choice",
    "completion_body",
    "error_body",
    "logprobs_body",
    "message_body",
    "parse_chat_request",
    "usage_body",
]


class BadRequest(Exception):  # noqa: N818 -- named after the HTTP status it becomes
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Open):
    """One chat message; content is a string or a list of parts (text parts are read)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class Function(_Open):
    """A function a tool exposes: its name and the JSON Schema of its arguments."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    """A tool the model may call."""

    type: Literal["function"] = "function"
    function: Function


class NamedToolChoice(_Open):
    """``tool_choice`` naming one function."""

    type: Literal["function"] = "function"
    function: dict[str, Any]


class ResponseFormat(_Open):
    """``response_format``: text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Open):
    """``stream_options``: whether a last chunk carries the usage."""

    include_usage: bool = False


class ChatRequest(_Open):
    """The parameters of ``POST /v1/chat/completions`` that the simulator reads or checks."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    service_tier: Literal["auto", "default", "flex", "priority", "scale"] | None = None
    """OpenAI's latency tier; a whole answer names the one that served it (as OpenAI does)."""


def json_object(body: bytes) -> dict[str, Any]:
    """A request body's JSON object, or :class:`BadRequest` saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a request body, or raise :class:`BadRequest` saying what is wrong."""
    data = json_object(body)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise BadRequest(f"{param}: {first['msg']}", param=param, code="invalid_value") from None


def error_body(exc: BadRequest) -> dict[str, Any]:
    """OpenAI's error object for ``exc``."""
    kind = {404: "not_found_error", 429: "rate_limit_error", 503: "server_error"}
    return {
        "error": {
            "message": str(exc),
            "type": kind.get(exc.status, "invalid_request_error"),
            "param": exc.param,
            "code": exc.code,
        }
    }


class Choice:
    """One choice's answer cut at the first stop string (excluded) and at ``max_tokens``."""

    def __init__(self, reply: Reply, max_tokens: int | None, stop: Sequence[str]) -> None:
        tokens, reason = list(reply.tokens), "tool_calls" if reply.tool_name else "stop"
        text = reply.text
        hits = [text.find(s) for s in stop if s and text.find(s) >= 0]
        if hits and reply.tool_name is None:
            tokens, reason = _cut_text(tokens, min(hits)), "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, reason = tokens[:max_tokens], "length"
        self.reply = reply
        self.tokens = tokens or [""]
        self.logprobs = reply.logprobs[: len(self.tokens)]
        self.finish_reason = reason
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"


def _cut_text(tokens: list[str], limit: int) -> list[str]:
    kept: list[str] = []
    length = 0
    for token in tokens:
        if length + len(token) > limit:
            if limit > length:
                kept.append(token[: limit - length])
            break
        kept.append(token)
        length += len(token)
    return kept


def message_body(choice: Choice, start: int, end: int) -> dict[str, Any]:
    """The message (or stream delta) holding tokens ``start:end`` of ``choice``."""
    text = "".join(choice.tokens[start:end])
    if choice.reply.tool_name is None:
        return {"role": "assistant", "content": text}
    call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
    if start == 0:
        call.update(id=choice.call_id, type="function")
        call["function"]["name"] = choice.reply.tool_name
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def logprobs_body(choice: Choice, start: int, end: int, top: int) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object for tokens ``start:end``."""
    content = []
    for token, value in zip(choice.tokens[start:end], choice.logprobs[start:end], strict=False):
        alternatives = [
            {"token": token if rank == 0 else f"{token}~{rank}", "logprob": value - 2.0 * rank}
            for rank in range(top)
        ]
        content.append(
            {
                "token": token,
                "logprob": value,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives,
            }
        )
    return {"content": content, "refusal": None}


def usage_body(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(
    model: str,
    choices: Sequence[Choice],
    usage: Mapping[str, Any],
    request: ChatRequest,
) -> dict[str, Any]:
    """A whole (non-streamed) ``chat.completion`` object."""
    top = request.top_logprobs or 0
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": message_body(choice, 0, len(choice.tokens)),
                "logprobs": logprobs_body(choice, 0, len(choice.tokens), top)
                if request.logprobs
                else None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(choices)
        ],
        "usage": dict(usage),
    } | _served_at(request)


def _served_at(request: ChatRequest) -> dict[str, Any]:
    """OpenAI's ``service_tier`` of the answer, for a request that named one (``auto`` and
    ``default`` are served at the default tier)."""
    asked = request.service_tier
    if asked is None:
        return {}
    return {"service_tier": "default" if asked == "auto" else asked}
