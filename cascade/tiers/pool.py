"""Keep-alive HTTP/1.1 for self-hosted tiers: every call, complete or streamed, goes through
:class:`ConnectionPool`.

Forwarding one request through aiohttp's client costs 4-5 times the CPU of writing the request
bytes straight to a pooled keep-alive connection and parsing the answer with httptools (llhttp,
which uvicorn already brings), about 85-100 us against 16-24 us per call on this project's 2-core
machines; a streamed call of 20 events costs about half (``benchmarks/bench_http_client.py``).
At a few thousand requests a second that difference is a fifth of the proxy's CPU. Streams use
the same connections, timeouts, TLS and errors, so a tier behaves the same whether or not the
client asked to stream.

What it does: POST with a body on keep-alive connections per (scheme, host, port), reused LIFO;
the answer read whole (:meth:`ConnectionPool.post`, capped in size) or as it comes
(:meth:`ConnectionPool.open`, a :class:`~cascade.tiers.stream.Stream`), framed by
Content-Length, chunked encoding or connection close (:mod:`cascade.tiers.connection`). TLS for
``https`` with one context per host (``ssl.create_default_context()``, so ``SSL_CERT_FILE``
applies). At most ``max_connections_per_host`` connections per host: a call beyond waits for
one, no longer than its connect timeout. HTTP proxies from the environment
(:mod:`cascade.tiers.proxies`).

**A POST is never sent twice when the upstream may have received it** (it may have run, and
billed, the request). A call moves to a new connection only when its request provably never left
this process: the pooled connection was seen closed before the write (its ``connection_lost``,
``transport.is_closing()``, or its socket readable while idle, which means the server's FIN or a
stray byte arrived), or the write failed at once. A connection that breaks after the request was
written, even before the first byte of the answer, fails the call with
:class:`HTTPConnectionError`, and the caller spills it to another tier. To make that rare, an
idle connection older than ``keepalive_idle_s`` (4 s, under the 5 s keep-alive most servers
use) is closed rather than reused.

Failures raise :class:`HTTPConnectionError` or ``TimeoutError``, with a message that says which
limit or what broke; :class:`UnreachableError` (and :class:`ConnectTimeoutError`, a
``TimeoutError`` too) when no connection could be made, so the request never left and another
replica may take it.
"""

from __future__ import annotations

import asyncio
import ssl

from cascade.tiers.connection import Connection, Host, Sent
from cascade.tiers.http1 import (
    ConnectTimeoutError,
    Endpoint,
    HTTPConnectionError,
    Response,
    UnreachableError,
)
from cascade.tiers.proxies import open_tunnel, route_for
from cascade.tiers.stream import UNFINISHED, Stream

__all__ = [
    "ConnectTimeoutError",
    "ConnectionPool",
    "Endpoint",
    "HTTPConnectionError",
    "Response",
    "Stream",
    "UnreachableError",
]

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_NO_HEAD = "no answer within %ss"


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections, pooled per (scheme, host, port); one per event loop.

    ``keepalive_idle_s``: an idle connection older than this is closed, not reused.
    ``ssl_context``: for every https host (default: ``ssl.create_default_context()`` per host).
    Proxies come from the environment when a host is first called (:mod:`cascade.tiers.proxies`).
    """

    def __init__(
        self,
        *,
        max_connections_per_host: int = 1024,
        max_idle_per_host: int = 1024,
        keepalive_idle_s: float = 4.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections_per_host = max_connections_per_host
        self.max_idle_per_host = max_idle_per_host
        self.keepalive_idle_s = keepalive_idle_s
        self.max_response_bytes = max_response_bytes
        self._ssl = ssl_context
        self._hosts: dict[tuple[str, str, int], Host] = {}
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        host, data = self._request(endpoint, body, headers)
        connection, answer = host.reuse(data, streaming=False) or await self._send_new(
            endpoint, host, data, connect_timeout, deadline, streaming=False
        )
        # One timer handle per call: asyncio.timeout() cost several times more on this path.
        timer = loop.call_at(deadline, connection.expire, "no complete answer within %ss", timeout)
        try:
            response = await answer
        except BaseException:
            connection.close()  # cancelled, timed out or broken: never reuse it mid-answer
            raise
        finally:
            timer.cancel()
        connection.host.give_back(connection)
        return response

    async def open(
        self,
        endpoint: Endpoint,
        body: bytes,
        *,
        headers: bytes = b"",
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
        timeout: float,
    ) -> Stream:
        """POST ``body`` and return the answer once its head arrives, its body to be read as it
        comes (see :class:`Stream`).

        Raises ``TimeoutError`` when the head takes over ``first_byte_timeout`` seconds from the
        call's start, :class:`HTTPConnectionError` as :meth:`post` does.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        host, data = self._request(endpoint, body, headers)
        connection, answer = host.reuse(data, streaming=True) or await self._send_new(
            endpoint, host, data, connect_timeout, deadline, streaming=True
        )
        if started + first_byte_timeout < deadline:
            when, template, limit = started + first_byte_timeout, _NO_HEAD, first_byte_timeout
        else:
            when, template, limit = deadline, UNFINISHED, timeout
        timer = loop.call_at(when, connection.expire, template, limit)
        try:
            head = await answer
        except BaseException:
            connection.close()
            raise
        finally:
            timer.cancel()
        return Stream(
            connection, head, idle_timeout=idle_timeout, deadline=deadline, timeout=timeout
        )

    def _request(self, endpoint: Endpoint, body: bytes, headers: bytes) -> tuple[Host, bytes]:
        """The host a call goes to and the request's bytes."""
        if self._closed:
            raise HTTPConnectionError("the connection pool is closed")
        host = self._hosts.get(endpoint.key) or self._host(endpoint)
        route = host.route
        head = endpoint.absolute_head + route.authorization if route.forward else endpoint.head
        return host, b"%scontent-length: %d\r\n%s\r\n%s" % (head, len(body), headers, body)

    async def _send_new(
        self,
        endpoint: Endpoint,
        host: Host,
        data: bytes,
        connect_timeout: float,
        deadline: float,
        *,
        streaming: bool,
    ) -> Sent:
        """Write the request on a new connection, once the host has a free slot (or on an idle
        connection that comes back meanwhile)."""
        if host.open >= self.max_connections_per_host:
            sent = await self._wait_for_slot(host, data, streaming, connect_timeout, deadline)
            if sent is not None:
                return sent
        connection = await self._connect(endpoint, host, connect_timeout, deadline)
        answer = connection.send(data, streaming=streaming)
        if answer is None:
            connection.close()
            raise UnreachableError(f"the connection to {host.authority} closed at once")
        return connection, answer

    async def _wait_for_slot(
        self, host: Host, data: bytes, streaming: bool, connect_timeout: float, deadline: float
    ) -> Sent | None:
        """At the per-host cap: wait (at most ``connect_timeout``) for an idle connection, which
        is returned, or a free slot (None)."""
        loop = asyncio.get_running_loop()
        until = min(loop.time() + connect_timeout, deadline)
        while host.open >= self.max_connections_per_host:
            waiter = loop.create_future()
            host.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(until):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    host.wake_one()  # woken, but leaving: the next in line gets the turn
                if isinstance(exc, TimeoutError):
                    raise HTTPConnectionError(
                        f"all {self.max_connections_per_host} connections to {host.authority} "
                        f"are busy and none came free within {connect_timeout}s"
                    ) from None
                raise
            if self._closed:
                raise HTTPConnectionError("the connection pool is closed")
            sent = host.reuse(data, streaming=streaming)
            if sent is not None:
                return sent
        return None

    def _host(self, endpoint: Endpoint) -> Host:
        try:
            route = route_for(endpoint.scheme, endpoint.host)
        except ValueError as exc:
            raise HTTPConnectionError(str(exc)) from None
        host = self._hosts[endpoint.key] = Host(
            endpoint.authority,
            route,
            max_idle=self.max_idle_per_host,
            keepalive_idle_s=self.keepalive_idle_s,
            max_response_bytes=self.max_response_bytes,
        )
        return host

    async def _connect(
        self, endpoint: Endpoint, host: Host, timeout: float, deadline: float
    ) -> Connection:
        loop = asyncio.get_running_loop()
        host.open += 1
        connection = Connection(host)
        try:
            async with asyncio.timeout_at(min(loop.time() + timeout, deadline)):
                await self._dial(endpoint, host, connection)
        except BaseException as exc:
            connection.close()
            host.open -= 1
            if host.waiters:
                host.wake_one()
            where = host.route.name and f" through the proxy {host.route.name}"
            if isinstance(exc, TimeoutError):
                raise ConnectTimeoutError(
                    f"no connection to {host.authority}{where} within {timeout}s"
                ) from None
            if isinstance(exc, OSError) and not isinstance(exc, HTTPConnectionError):
                raise UnreachableError(
                    f"cannot connect to {host.authority}{where}: {exc.strerror or exc}"
                ) from None
            raise
        connection.counted = True
        self.opened += 1
        return connection

    async def _dial(self, endpoint: Endpoint, host: Host, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        route = host.route
        tls: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            if host.tls is None:
                host.tls = self._ssl or ssl.create_default_context()
            tls = host.tls
        if route.proxy is None:
            await loop.create_connection(lambda: connection, endpoint.host, endpoint.port, ssl=tls)
            return
        if not route.tunnel:
            await loop.create_connection(lambda: connection, *route.proxy)
            return
        assert tls is not None
        transport = await open_tunnel(route, endpoint.authority)
        try:
            secure = await loop.start_tls(transport, connection, tls, server_hostname=endpoint.host)
        except BaseException:
            transport.close()
            raise
        assert secure is not None
        connection.connection_made(secure)

    def idle_connections(self) -> int:
        """Connections idle in the pool now, all hosts together."""
        return sum(len(host.idle) for host in self._hosts.values())

    async def aclose(self) -> None:
        """Close every idle connection; later calls fail."""
        self._closed = True
        for host in self._hosts.values():
            host.closed = True
            while host.idle:
                host.idle.pop().close()
            while host.waiters:
                host.wake_one()
