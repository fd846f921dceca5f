"""The OpenAI wire format at the proxy's edge: the body's type and size, error bodies, SSE
chunks. (Who may call is :mod:`cascade.server.auth`'s; the request itself is read by
:mod:`cascade.core.request`.)"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from starlette.responses import JSONResponse
from starlette.types import Receive

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_TYPES_OF_CODES = {"insufficient_quota": "insufficient_quota"}
"""Errors whose type is not their status's: a spent budget is a 429 of its own type, as
OpenAI's is."""


class BadRequestError(Exception):
    """A client mistake, answered with an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        *,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        """The error's ``type`` when the status and code do not say it (``requests``)."""
        self.headers = dict(headers or {})
        """Headers to answer with (``Retry-After``, ``x-ratelimit-*``)."""


class ClientGoneError(Exception):
    """The client disconnected before its request body arrived."""


def require_json(content_type: str | None) -> None:
    """Refuse (415) a body not declared ``application/json``.

    A web page on any origin can make a browser POST ``text/plain`` or a form to a proxy on
    loopback without a CORS preflight; ``application/json`` needs the preflight, which the
    proxy does not answer.
    """
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        given = f"{content_type[:100]!r}" if content_type else "none"
        raise BadRequestError(
            415,
            f"the request body must be sent with 'Content-Type: application/json' (got {given})",
            code="unsupported_media_type",
        )


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 once it is over ``limit`` bytes."""
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
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


def error_body(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = (
        kind
        or _TYPES_OF_CODES.get(code or "")
        or _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    )
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
