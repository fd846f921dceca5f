"""What the hot path sends back, as plain ASGI callables: a JSON answer, an error in OpenAI's
shape, and a server-sent-event stream that always closes its source.

:class:`StreamReply` exists because a relayed stream must end *somewhere we can see*: when the
client goes away, the stream's source (and with it the tier's connection, its in-flight count and
the request's ledger row) has to be closed at once, not whenever the garbage collector gets to an
abandoned generator. It watches ``receive`` for the disconnect while it relays, and closes the
source in every case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import orjson
from starlette.types import Receive, Scope, Send

from cascade.server.openai_format import error_body

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


@dataclass(frozen=True)
class JSONReply:
    """A complete JSON answer, encoded once, sent as one ASGI response."""

    status: int
    body: bytes
    headers: dict[str, str]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            _JSON,
            (b"content-length", str(len(self.body)).encode()),
            *_encoded(self.headers),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def error_reply(
    status: int,
    message: str,
    *,
    request_id: str,
    param: str | None = None,
    code: str | None = None,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONReply:
    """An error in OpenAI's shape, with the request id to quote when asking about it."""
    body = orjson.dumps(error_body(status, message, param=param, code=code, kind=kind))
    return JSONReply(status, body, {**(headers or {}), "x-cascade-request-id": request_id})


@dataclass(frozen=True)
class StreamReply:
    """A 200 ``text/event-stream`` relayed from ``events``; closed when the client leaves."""

    events: AsyncGenerator[bytes, None]
    headers: dict[str, str]
    closing: Callable[[], Awaitable[None]] | None = None
    """Awaited last, however the reply ended: what ``events`` would do in its ``finally`` had
    it started (a generator closed before its first step runs none of its code)."""
    farewell: Callable[[], bytes | None] | None = None
    """Asked when the server (not the client) cancels the relay: the last event to send before
    the stream ends properly (why it was cut), or None to let the cancellation go on."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        relaying = True
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if relaying:
                gone = True
                task.cancel()  # wakes the relay wherever it waits: on the tier or on the socket

        watcher = asyncio.create_task(watch())
        started = False
        try:
            headers = [_SSE, (b"cache-control", b"no-cache"), *_encoded(self.headers)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            started = True
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            last = None if gone or not started or self.farewell is None else self.farewell()
            if not gone and last is None:
                raise  # the server is stopping, and nothing says how to end the stream
            task.uncancel()
            relaying = False  # a client leaving from here on cancels nothing
            if last is not None:  # the server cut the stream: end it properly, saying why
                await send({"type": "http.response.body", "body": last, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the socket broke under us: the client is gone all the same
        finally:
            relaying = False
            watcher.cancel()
            try:
                await self.events.aclose()  # a no-op when the relay ran to its end
            finally:
                if self.closing is not None:
                    await self.closing()
