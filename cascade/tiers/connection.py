"""One keep-alive HTTP/1.1 connection to a tier, and the bookkeeping of all those to one host.

A :class:`Connection` answers one request at a time, read whole (a future of the
:class:`~cascade.tiers.http1.Response`) or as a stream (a future of the head, then body bytes
handed over with :meth:`Connection.pop` and :meth:`Connection.wait`), framed by Content-Length,
chunked encoding or the connection's close, and parsed by httptools. Its :class:`Host` holds the
idle connections and counts the open ones.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
from collections import deque
from typing import cast

import httptools

from cascade.tiers.http1 import HTTPConnectionError, Response
from cascade.tiers.proxies import Route

__all__ = ["Connection", "Host", "Sent"]

_STREAM_BUFFER_BYTES = 256 * 1024  # read no further ahead of a slow stream consumer
_DRAIN_GRACE_S = 2.0  # how long a released stream's connection may take to end its body
_MAX_DRAINED_BYTES = 64 * 1024


class Host:
    """The connections to one (scheme, host, port): idle ones, how many are open (connecting,
    busy or idle), and the calls waiting for one at the cap."""

    def __init__(
        self,
        authority: str,
        route: Route,
        *,
        max_idle: int,
        keepalive_idle_s: float,
        max_response_bytes: int,
    ) -> None:
        self.authority = authority
        self.route = route
        self.max_idle = max_idle
        self.keepalive_idle_s = keepalive_idle_s
        self.max_response_bytes = max_response_bytes
        self.tls: ssl.SSLContext | None = None
        self.idle: deque[Connection] = deque()  # oldest first: reused from the right
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False  # its pool is closed: connections are not kept

    def reuse(self, data: bytes, *, streaming: bool) -> Sent | None:
        """Send on an idle connection, skipping (and closing) any that is stale or too old; the
        request moves on only when it provably did not leave (see :mod:`cascade.tiers.pool`)."""
        idle = self.idle
        if not idle:
            return None
        oldest = time.monotonic() - self.keepalive_idle_s
        while idle:
            connection = idle.pop()
            if connection.idle_since <= oldest or connection.stale():
                connection.close()
                continue
            answer = connection.send(data, streaming=streaming)
            if answer is not None:
                return connection, answer
            connection.close()  # closed under us before the request left: try another
        return None

    def give_back(self, connection: Connection) -> None:
        """A connection's answer was read whole: keep it for the next call (or close it)."""
        connection.busy = False
        if connection.closed or self.closed or len(self.idle) >= self.max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self.idle.append(connection)
        if self.waiters:
            self.wake_one()

    def lost(self, connection: Connection) -> None:
        """A connection closed: its slot is free."""
        self.open -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        if self.waiters:
            self.wake_one()

    def wake_one(self) -> None:
        """Let the first call still waiting for a connection look again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time, whole or as a stream."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._readable: select.poll | None = None  # polls the socket for bytes or its close
        self._parser = httptools.HttpResponseParser(self)
        self.counted = False  # holds one of its host's connection slots
        self.closed = False
        self.idle_since = 0.0
        # The exchange in progress:
        self.busy = False
        self._answer: asyncio.Future[Response] | None = None  # whole answer, or a stream's head
        self._streaming = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._framed = False  # Content-Length or chunked: the parser knows where the body ends
        self._head_done = False
        self.complete = True  # the answer has been read whole
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None  # a stream's reader, waiting for bytes
        self._paused = False
        self._drain: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):  # not on Windows: no check there
            self._readable = select.poll()
            self._readable.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes nobody asked for on an idle connection: not keep-alive HTTP
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPConnectionError(f"the answer is not valid HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drain is not None:
            self._drain.cancel()
        if self.counted:
            self.counted = False
            self.host.lost(self)
        if self.complete:
            return
        if self._head_done and not self._framed:
            self.on_message_complete()  # a body delimited by the close
            return
        where = "while answering" if self._head_done else "before answering"
        self._fail(HTTPConnectionError(f"the server closed the connection {where}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True
        self._headers.append((lower, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        if self._streaming:
            self._resolve(Response(self._parser.get_status_code(), b"", tuple(self._headers)))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._drain is not None:
            if self._size > _MAX_DRAINED_BYTES:
                self.close()
            return
        if self._streaming:
            self._body.append(body)
            if self._size > _STREAM_BUFFER_BYTES and not self._paused:
                self._paused = True
                self._pause(True)
            self._wake()
            return
        if self._size > self.host.max_response_bytes:
            limit = self.host.max_response_bytes
            self._fail(HTTPConnectionError(f"the answer is over {limit} bytes; refused"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
            self.host.give_back(self)
        elif self._streaming:
            self._wake()
        else:
            status = self._parser.get_status_code()
            self._resolve(Response(status, b"".join(self._body), tuple(self._headers)))
            self._body = []
        if not self._parser.should_keep_alive():
            self.close()

    # the request side
    def send(self, data: bytes, *, streaming: bool) -> asyncio.Future[Response] | None:
        """Write a request; None when it provably did not leave (the connection is closed)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return None
        answer = self._answer = self._loop.create_future()
        self.busy, self._streaming, self.complete, self.error = True, streaming, False, None
        self._headers, self._body, self._size = [], [], 0
        self._framed = self._head_done = False
        transport.write(data)
        if transport.is_closing():  # the write failed at once: no byte of it left this process
            self.complete, self._answer = True, None
            return None
        return answer

    def stale(self) -> bool:
        """Whether an idle connection must not be reused: closed, closing, or readable (the
        server's FIN, or bytes nobody asked for, arrived and wait in the socket)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return True
        return self._readable is not None and bool(self._readable.poll(0))

    def expire(self, template: str, seconds: float) -> None:
        """A call's time limit passed: fail it with TimeoutError and drop the connection."""
        self._fail(TimeoutError(template % seconds))
        self.close()

    def pop(self) -> bytes | None:
        """A stream's body bytes that arrived so far; b"" once it is read whole; None while
        nothing is there yet. Raises what broke the stream."""
        body = self._body
        if body:
            chunk = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            self._size = 0
            if self._paused:
                self._paused = False
                self._pause(False)
            return chunk
        if self.error is not None:
            raise self.error
        return b"" if self.complete else None

    async def wait(self, when: float, template: str, seconds: float) -> None:
        """Wait for stream bytes (or its end, or a failure) until loop time ``when``."""
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_at(when, self._expire_wait, waiter, template, seconds)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def release(self) -> None:
        """The reader is done with a stream: back to the pool once the rest of the body (which
        is discarded) has arrived, closed if it does not within a short grace."""
        self._body.clear()
        if self.complete and self.error is None:
            self.host.give_back(self)
        elif self.error is not None or self.closed:
            self.close()
        else:
            self._size = 0
            self._drain = self._loop.call_later(_DRAIN_GRACE_S, self.close)
            if self._paused:
                self._paused = False
                self._pause(False)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _pause(self, pause: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _expire_wait(self, waiter: asyncio.Future[None], template: str, seconds: float) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError(template % seconds))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resolve(self, response: Response) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result(response)

    def _fail(self, error: Exception) -> None:
        self.error = error
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self._wake()


Sent = tuple[Connection, asyncio.Future[Response]]
"""A request written on a connection, and its answer to come."""
