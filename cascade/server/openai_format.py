"""The OpenAI wire format at the proxy's edge: request checks, error bodies, SSE chunks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse
from starlette.types import Receive

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ChatRequest(BaseModel):
    """The fields of a Chat Completions request the proxy reads; the rest pass through."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Any] = Field(min_length=1)
    """Checked message by message in the prompt step (without copying every message here)."""
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=8)
    stream_options: dict[str, Any] | None = None


class BadRequestError(Exception):
    """A client mistake, answered with an OpenAI error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class ClientGoneError(Exception):
    """The client disconnected before its request body arrived."""


def authenticate(authorization: str | None, keys: frozenset[str]) -> None:
    """Refuse (401) a request whose bearer token is not one of ``keys`` (none: no check)."""
    if not keys:
        return
    token = (authorization or "").removeprefix("Bearer ").strip()
    if token not in keys:
        raise BadRequestError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer <key>')",
            code="invalid_api_key",
        )


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 once it is over ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequestError(413, f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequestError(413, f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """The validated request and its body as a dict; BadRequestError when it is not valid."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError(
            400, f"the request body must be a JSON object, got {type(body).__name__}"
        )
    request = _well_typed(body)
    if request is not None:
        return request, body
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        given = first.get("input")
        shown = "" if isinstance(given, dict | list) else f" (got {json.dumps(given, default=str)})"
        raise BadRequestError(400, f"{where}: {first['msg']}{shown}", param=where) from None
    return request, body


_OPTIONAL_COUNTS = ("max_tokens", "max_completion_tokens")


def _well_typed(body: dict[str, Any]) -> ChatRequest | None:
    """The request without pydantic's validation when every field it checks already has its
    exact type and range (the usual case; about a tenth of the cost). None: validate it."""
    model, messages = body.get("model"), body.get("messages")
    if not (type(model) is str and model and type(messages) is list and messages):
        return None
    stream = body.get("stream", False)
    tools, options = body.get("tools"), body.get("stream_options")
    n = body.get("n", 1)
    if type(stream) is not bool or type(n) is not int or not 1 <= n <= 8:
        return None
    if options is not None and type(options) is not dict:
        return None
    if tools is not None and not (type(tools) is list and all(type(t) is dict for t in tools)):
        return None
    for key in _OPTIONAL_COUNTS:
        count = body.get(key)
        if count is not None and (type(count) is not int or count < 1):
            return None
    return ChatRequest.model_construct(
        model=model,
        messages=messages,
        stream=stream,
        tools=tools,
        max_tokens=body.get("max_tokens"),
        max_completion_tokens=body.get("max_completion_tokens"),
        n=n,
        stream_options=options,
    )


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """:func:`error_body` as a Starlette response."""
    body = error_body(status, message, param=param, code=code)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event."""
    if isinstance(data, str):
        return f"data: {data}\n\n".encode()
    return b"data: " + orjson.dumps(data) + b"\n\n"


def chunks_from_completion(body: Mapping[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """Replay a complete answer as a stream (used after verifying it before the first byte)."""
    base = {
        "id": body.get("id", "chatcmpl-cascade"),
        "object": "chat.completion.chunk",
        "created": body.get("created", int(time.time())),
        "model": body.get("model", ""),
    }
    for choice in body.get("choices") or []:
        message = dict(choice.get("message") or {})
        index = choice.get("index", 0)
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        if message.get("content") is not None:
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {**call, "index": i} for i, call in enumerate(message["tool_calls"])
            ]
        first = {"index": index, "delta": delta, "finish_reason": None}
        if choice.get("logprobs") is not None:
            first["logprobs"] = choice["logprobs"]
        yield sse({**base, "choices": [first]})
        last = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}
        yield sse({**base, "choices": [last]})
    if include_usage and body.get("usage") is not None:
        yield sse({**base, "choices": [], "usage": body["usage"]})
    yield sse("[DONE]")
