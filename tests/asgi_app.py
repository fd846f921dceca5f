"""An ASGI app driven in process, lifespan and all, for tests that send what no HTTP client
would put on the wire (NUL bytes in headers, a Content-Length of ``²``).

    with running_app(create_app(settings)) as app:
        response = app.request("POST", "/v1/chat/completions", headers=[...], content=b"...")

The app runs on an event loop in a thread of its own, so that synchronous tests (hypothesis's
``@given``) can call it; its lifespan starts before the block and shuts down after it (which
flushes the proxy's ledger). Requests go through ``httpx.ASGITransport``, with the lifespan's
state in each request's scope, as uvicorn puts it there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RunningApp", "running_app"]

_T = TypeVar("_T")
_TIMEOUT_S = 60.0


class RunningApp:
    """Synchronous requests to an app whose lifespan has started."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop = loop
        self._client = client

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        content: bytes = b"",
    ) -> httpx.Response:
        """Send one request and read its whole answer (a stream too)."""
        request = self._client.build_request(method, path, headers=list(headers), content=content)
        return self._run(self._send(request))

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._client.send(request, stream=True)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_TIMEOUT_S)


@contextmanager
def running_app(app: ASGIApp) -> Iterator[RunningApp]:
    """Start ``app``'s lifespan on a loop thread; yield a caller; shut it down afterwards."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asgi-app", daemon=True)
    thread.start()
    lifespan = _Lifespan(app)
    try:
        state = asyncio.run_coroutine_threadsafe(lifespan.start(), loop).result(_TIMEOUT_S)

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://proxy.test")
        try:
            yield RunningApp(loop, client)
        finally:
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(_TIMEOUT_S)
            asyncio.run_coroutine_threadsafe(lifespan.stop(), loop).result(_TIMEOUT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_TIMEOUT_S)
        loop.close()


class _Lifespan:
    """The server's side of the ASGI lifespan protocol."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}

        async def run() -> None:
            await self._app(scope, self._inbox.get, self._outbox.put)

        self._task = asyncio.create_task(run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")
        return state

    async def stop(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        assert self._task is not None
        await self._task

    async def _expect(self, kind: str) -> None:
        message = await self._outbox.get()
        if message["type"] != kind:
            raise RuntimeError(f"lifespan: expected {kind}, got {message}")
