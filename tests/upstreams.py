"""Real servers on loopback for proxy tests: a scripted OpenAI-compatible tier and the proxy.

The scripted tier answers the way a test tells it to (a normal answer, a length cut, invalid
JSON, a malformed tool call, 503, 429), so failure handling can be asserted exactly; the
simulated tier (``cascade simulate-tier``) covers realistic behaviour.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class ScriptedTier:
    """What the scripted tier answers next; tests change ``mode`` between requests."""

    name: str
    mode: str = "ok"
    hold: threading.Event | None = None
    """When given, each answer waits until it is set (a model still generating): calls stay in
    flight until the test lets them finish."""
    stream_gate: threading.Event | None = None
    """When given, a stream sends its first chunk and then waits until it is set."""
    retry_after: str | None = None
    """The ``Retry-After`` header sent with a 429 or 503."""
    calls: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    streams_ended_early: int = 0
    """Streams whose reader went away before the last chunk (the proxy closed the call)."""
    calls_abandoned: int = 0
    """Held calls whose caller closed the connection before they were let finish."""

    def app(self) -> Starlette:
        """The tier as an ASGI app."""
        return Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.calls += 1
        self.requests.append(body)
        if self.hold is not None and not await self._released(request, self.hold):
            return JSONResponse({"error": {"message": "never released"}}, status_code=500)
        if self.mode in ("503", "429"):
            headers = {"retry-after": self.retry_after} if self.retry_after else None
            return JSONResponse(
                {"error": {"message": "busy"}}, status_code=int(self.mode), headers=headers
            )
        if self.mode == "400":
            error = {"message": "temperature: expected a number"}
            return JSONResponse({"error": error}, status_code=400)
        if body.get("stream"):
            return StreamingResponse(self._chunks(body), media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": f"answer from {self.name}"}
        finish = "stop"
        if self.mode == "length":
            finish = "length"
        elif self.mode == "bad_json":
            message["content"] = '{"answer": 4'
        elif self.mode == "json":
            message["content"] = json.dumps({"answer": self.name})
        elif self.mode in ("tool_call", "bad_tool_call"):
            arguments = '{"city": "Paris"}' if self.mode == "tool_call" else "{city: Paris"
            call = {"name": "get_weather", "arguments": arguments}
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
            }
            finish = "tool_calls"
        return JSONResponse(
            {
                "id": f"chatcmpl-{self.name}-{self.calls}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 20,
                    "prompt_tokens_details": {"cached_tokens": 40},
                },
            }
        )

    async def _released(self, request: Request, hold: threading.Event) -> bool:
        """Wait until ``hold`` is set (True), 30 s pass or the caller hangs up (False)."""
        released = asyncio.ensure_future(asyncio.to_thread(hold.wait, 30))
        hangup = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({released, hangup}, return_when=asyncio.FIRST_COMPLETED)
        hangup.cancel()
        if released.done():
            return released.result()
        self.calls_abandoned += 1  # (the waiting thread ends when the test sets ``hold``)
        return False

    async def _chunks(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        base = {
            "id": f"chatcmpl-{self.name}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": body.get("model"),
        }
        words = ["answer ", "from ", self.name]
        ended = False
        try:
            for i, word in enumerate(words):
                if self.mode == "cut" and i == 1:
                    raise ConnectionResetError("the tier died mid-stream")
                if i == 1 and self.stream_gate is not None:
                    await asyncio.to_thread(self.stream_gate.wait, 30)
                delta = {"content": word} if i else {"role": "assistant", "content": word}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()
            end = {"index": 0, "delta": {}, "finish_reason": "stop"}
            yield f"data: {json.dumps({**base, 'choices': [end]})}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 100, "completion_tokens": 3}
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            ended = True
        finally:
            if not ended and self.mode != "cut":
                self.streams_ended_early += 1


async def _disconnected(request: Request) -> None:
    """Return once the caller has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
