"""A fast OpenAI-compatible upstream for proxy benchmarks: a fixed answer, no model.

Two servers give the same answer. ``--server raw`` (the default) is an asyncio protocol on uvloop
that parses requests with httptools and writes the canned response: about a fifth of uvicorn's
CPU per request, so that on a 2-core machine, where the load generator, the upstream and the
proxy share the cores, the upstream takes as little as possible of what the proxy is measured
with (a real upstream runs on its own GPU machine). ``--server asgi`` is the same answer as a raw
ASGI app under uvicorn.

.venv/bin/python -m benchmarks.fast_upstream --port 9101 [--server raw|asgi]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any, cast

import httptools
import uvicorn
import uvloop

_ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris is the capital of France."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 24, "completion_tokens": 8},
    }
).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with the same chat completion."""
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})


_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_ANSWER),
    _ANSWER,
)


class _RawUpstream(asyncio.Protocol):
    """One keep-alive connection: every complete request gets the canned answer."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(_RESPONSE)


async def _serve_raw(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_RawUpstream, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _answer_with(content: str) -> None:
    """Answer with ``content`` instead of the default sentence (set before serving)."""
    global _ANSWER, _HEADERS, _RESPONSE  # noqa: PLW0603 - the canned answer, built once
    body = json.loads(_ANSWER)
    body["choices"][0]["message"]["content"] = content
    _ANSWER = json.dumps(body).encode()
    _HEADERS = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_ANSWER)).encode()),
    ]
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    _RESPONSE = head % len(_ANSWER) + _ANSWER


def main() -> None:
    """Serve the fast upstream."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--server", choices=["raw", "asgi"], default="raw")
    parser.add_argument("--content", help="the answer's text (default: a sentence about Paris)")
    args = parser.parse_args()
    if args.content is not None:
        _answer_with(args.content)
    if args.server == "raw":
        uvloop.run(_serve_raw(args.port))
        return
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
