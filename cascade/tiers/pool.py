"""A small pooled HTTP/1.1 client for the proxy's hot path: non-streamed calls to self-hosted tiers.

Forwarding one request through aiohttp's client costs about 137 us of CPU on this project's
2-core machines; writing the request bytes straight to a pooled keep-alive connection and parsing
the answer with httptools (llhttp, which uvicorn already brings) costs about 27 us
(``benchmarks/bench_http_client.py``). At a few thousand requests a second that difference is a
fifth of the proxy's CPU, so the one call every routed request makes goes through
:class:`ConnectionPool`. Streams keep using aiohttp.

What it does: POST with a body, keep-alive connections per (scheme, host, port) reused LIFO,
TLS for ``https``, responses framed by Content-Length, chunked encoding or connection close, a
cap on the answer's size, a connect timeout and an overall deadline. A pooled connection that the
server closed while idle is detected (its ``connection_lost``) and dropped; if one fails before
any byte of the answer arrives, the request is sent once more on a new connection, as browsers
and urllib3 do. Failures raise :class:`HTTPConnectionError` (or ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectionPool", "Endpoint", "HTTPConnectionError", "Response"]

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HTTPConnectionError(ConnectionError):
    """The connection failed, closed early, or the answer was not valid HTTP/1.1."""


@dataclass(frozen=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    """Where requests for one URL go, parsed once."""

    scheme: str
    host: str
    port: int
    head: bytes
    """The request line and the headers every request to this URL carries."""

    @property
    def key(self) -> tuple[str, str, int]:
        """What connections are pooled by."""
        return self.scheme, self.host, self.port

    @classmethod
    def parse(cls, url: str, headers: dict[str, str]) -> Endpoint:
        """Parse ``url`` (http or https); ``headers`` go on every request to it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: expected an http:// or https:// URL with a host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            host_header += f":{port}"
        lines = [f"POST {path} HTTP/1.1", f"host: {host_header}", "user-agent: cascade-router"]
        lines += [f"{name}: {_header_value(name, value)}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return cls(parts.scheme, host, port, head)


def _header_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name}: a line break in the value is not allowed")
    return value


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self, pool: ConnectionPool, key: tuple[str, str, int]) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Response] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._framed = False  # Content-Length or chunked: the parser knows where the body ends
        self.started = False  # a byte of the current answer has arrived
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPConnectionError(f"the answer is not valid HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        if self._answer is None or self._answer.done():
            return
        if self.started and not self._framed and self._parser.get_status_code():
            self._finish(self._parser.get_status_code())  # a body delimited by the close
            return
        where = "while answering" if self.started else "before answering"
        self._fail(HTTPConnectionError(f"the server closed the connection {where}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._pool.max_response_bytes:
            self._fail(
                HTTPConnectionError(
                    f"the answer is over {self._pool.max_response_bytes} bytes; refused"
                )
            )
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._finish(self._parser.get_status_code())
        if not self._parser.should_keep_alive():
            self.close()

    # the request side
    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._body, self._size, self._framed, self.started = [], 0, False, False
        self.transport.write(data)
        return self._answer

    def expire(self) -> None:
        """The call's deadline passed: fail it with TimeoutError and drop the connection."""
        self._fail(TimeoutError("no complete answer before the deadline"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self, status: int) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result(Response(status, b"".join(self._body)))
        self._body = []

    def _fail(self, error: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections, pooled per (scheme, host, port); one per event loop."""

    def __init__(
        self,
        *,
        max_idle_per_host: int = 1024,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.max_response_bytes = max_response_bytes
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False
        self.opened = 0
        """Connections opened so far (a measure of how well keep-alive works)."""

    async def post(
        self,
        endpoint: Endpoint,
        body: bytes,
        *,
        headers: bytes = b"",
        connect_timeout: float,
        timeout: float,
    ) -> Response:
        """POST ``body`` (``headers``: extra ``name: value\\r\\n`` lines) and read the answer.

        Raises ``TimeoutError`` past ``timeout`` seconds in all (or ``connect_timeout`` to
        connect), :class:`HTTPConnectionError` when the connection fails or the answer is not
        HTTP/1.1.
        """
        if self._closed:
            raise HTTPConnectionError("the connection pool is closed")
        data = b"%scontent-length: %d\r\n%s\r\n%s" % (endpoint.head, len(body), headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection, reused = self._take(endpoint)
        if connection is None:
            connection = await self._connect(endpoint, connect_timeout, deadline)
        try:
            answer = await self._exchange(connection, data, deadline)
        except HTTPConnectionError:
            if not (reused and not connection.started):
                raise
            # The server dropped the idle connection as we sent: it never saw the request.
            connection = await self._connect(endpoint, connect_timeout, deadline)
            answer = await self._exchange(connection, data, deadline)
        self._give_back(connection)
        return answer

    async def _exchange(self, connection: _Connection, data: bytes, deadline: float) -> Response:
        # One timer handle per call: asyncio.timeout() cost several times more on this path.
        answer = connection.send(data)
        timer = asyncio.get_running_loop().call_at(deadline, connection.expire)
        try:
            return await answer
        except BaseException:
            connection.close()  # cancelled, timed out or broken: never reuse it mid-answer
            raise
        finally:
            timer.cancel()

    def _take(self, endpoint: Endpoint) -> tuple[_Connection | None, bool]:
        idle = self._idle.get(endpoint.key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection, True
        return None, False

    def _give_back(self, connection: _Connection) -> None:
        if connection.closed or self._closed:
            connection.close()
            return
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle_per_host:
            connection.close()
            return
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def _connect(self, endpoint: Endpoint, timeout: float, deadline: float) -> _Connection:
        key = endpoint.key
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout_at(min(loop.time() + timeout, deadline)):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key), endpoint.host, endpoint.port, ssl=tls
                )
            self.opened += 1
        except OSError as exc:
            raise HTTPConnectionError(
                f"cannot connect to {endpoint.host}:{endpoint.port}: {exc.strerror or exc}"
            ) from None
        return connection

    async def aclose(self) -> None:
        """Close every idle connection; later calls fail."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
