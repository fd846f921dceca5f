"""The proxy's keep-alive HTTP/1.1 client against real sockets and scripted servers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from cascade.tiers.pool import ConnectionPool, Endpoint, HTTPConnectionError

Handler = Callable[["Peer", bytes], Awaitable[bool]]
"""Gets each request (head + body); returns False to stop serving that connection."""


@dataclass
class Peer:
    """One accepted connection of a scripted server."""

    number: int
    writer: asyncio.StreamWriter

    def answer(self, raw: bytes) -> None:
        self.writer.write(raw)


@dataclass
class Server:
    """A raw HTTP/1.1 server on loopback that hands each request to ``handler``."""

    handler: Handler
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = Peer(self.connections, writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.handler(peer, request):
                    return
                await writer.drain()
        finally:
            writer.close()


def ok(body: bytes = b'{"ok":true}') -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def answer_ok(peer: Peer, request: bytes) -> bool:
    peer.answer(ok(request.rsplit(b"\r\n\r\n", 1)[1]))  # echo the body
    return True


async def post(
    pool: ConnectionPool, server: Server, body: bytes = b"{}", *, timeout: float = 5.0
) -> bytes:
    endpoint = Endpoint.parse(server.url(), {"content-type": "application/json"})
    answer = await pool.post(endpoint, body, connect_timeout=2.0, timeout=timeout)
    assert answer.status == 200
    return answer.body


def test_connections_are_kept_alive_and_reused() -> None:
    """Sequential calls share one connection; each gets its own answer; the request is whole."""

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(answer_ok) as server:
            bodies = [await post(pool, server, b'{"n":%d}' % i) for i in range(5)]
            endpoint = Endpoint.parse(server.url(), {"content-type": "application/json"})
            await pool.post(
                endpoint,
                b"{}",
                headers=b"authorization: Bearer k\r\n",
                connect_timeout=2,
                timeout=5,
            )
        await pool.aclose()
        assert bodies == [b'{"n":%d}' % i for i in range(5)]
        assert server.connections == 1
        assert pool.opened == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{server.port}\r\n".encode() in first
        assert b'content-type: application/json\r\ncontent-length: 7\r\n\r\n{"n":0}' in first
        assert b"authorization: Bearer k\r\n" in server.requests[-1]

    asyncio.run(scenario())


def test_concurrent_calls_get_their_own_connections_and_answers() -> None:
    async def slow_echo(peer: Peer, request: bytes) -> bool:
        await asyncio.sleep(0.01)
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(slow_echo) as server:
            bodies = await asyncio.gather(*(post(pool, server, b"%d" % i) for i in range(20)))
            again = await asyncio.gather(*(post(pool, server, b"%d" % i) for i in range(20)))
        await pool.aclose()
        assert list(bodies) == list(again) == [b"%d" % i for i in range(20)]
        assert server.connections == 20  # the second round reused the first round's

    asyncio.run(scenario())


def test_chunked_and_close_delimited_answers_are_read_whole() -> None:
    async def chunked(peer: Peer, request: bytes) -> bool:
        peer.answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        return True

    async def until_close(peer: Peer, request: bytes) -> bool:
        peer.answer(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(chunked) as server:
            assert await post(pool, server) == b"hello world"
            assert await post(pool, server) == b"hello world"
            assert server.connections == 1
        async with Server(until_close) as server:
            assert await post(pool, server) == b"all of it"
            assert await post(pool, server) == b"all of it"
            assert server.connections == 2  # connection: close is honoured
        await pool.aclose()

    asyncio.run(scenario())


def test_a_pooled_connection_dropped_as_the_request_arrives_is_retried_once() -> None:
    """The server closes an idle keep-alive connection just as a request goes out on it (it
    never saw it): the request goes out again on a new connection and succeeds."""

    seen: list[bytes] = []

    async def drop_second_on_first_connection(peer: Peer, request: bytes) -> bool:
        seen.append(request)
        if peer.number == 1 and len(seen) == 2:
            return False  # read the request, then close without answering
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(drop_second_on_first_connection) as server:
            assert await post(pool, server, b"1") == b"1"
            assert await post(pool, server, b"2") == b"2"
        await pool.aclose()
        assert server.connections == 2
        assert len(seen) == 3

    asyncio.run(scenario())


def test_a_new_connection_closed_before_the_answer_fails_without_a_retry() -> None:
    async def hang_up(peer: Peer, request: bytes) -> bool:
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(hang_up) as server:
            with pytest.raises(HTTPConnectionError, match="closed the connection before"):
                await post(pool, server)
        await pool.aclose()
        assert len(server.requests) == 1  # sent once: a fresh connection is not retried

    asyncio.run(scenario())


def test_a_timed_out_connection_is_not_reused() -> None:
    async def first_hangs(peer: Peer, request: bytes) -> bool:
        if peer.number == 1:
            await asyncio.sleep(10)
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(first_hangs) as server:
            with pytest.raises(TimeoutError):
                await post(pool, server, timeout=0.2)
            assert await post(pool, server, b"next") == b"next"
            assert server.connections == 2
        await pool.aclose()

    asyncio.run(scenario())


def test_refused_connection_oversized_and_invalid_answers_are_connection_errors() -> None:
    async def huge(peer: Peer, request: bytes) -> bool:
        peer.answer(ok(b"x" * 5000))
        return True

    async def garbage(peer: Peer, request: bytes) -> bool:
        peer.answer(b"this is not HTTP\r\n\r\n")
        return True

    async def scenario() -> None:
        pool = ConnectionPool(max_response_bytes=4096)
        async with Server(huge) as server:
            with pytest.raises(HTTPConnectionError, match="over 4096 bytes"):
                await post(pool, server)
        async with Server(garbage) as server:
            with pytest.raises(HTTPConnectionError, match="not valid HTTP"):
                await post(pool, server)
        port = server.port  # closed now: nothing listens there
        endpoint = Endpoint.parse(f"http://127.0.0.1:{port}/", {})
        with pytest.raises(HTTPConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
            await pool.post(endpoint, b"{}", connect_timeout=2, timeout=5)
        await pool.aclose()
        with pytest.raises(HTTPConnectionError, match="closed"):
            await pool.post(endpoint, b"{}", connect_timeout=2, timeout=5)

    asyncio.run(scenario())


def test_endpoints_are_checked_when_parsed() -> None:
    endpoint = Endpoint.parse("https://example.com/v1/chat/completions?x=1", {})
    assert (endpoint.scheme, endpoint.host, endpoint.port) == ("https", "example.com", 443)
    assert endpoint.head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: example.com")
    with pytest.raises(ValueError, match="http:// or https://"):
        Endpoint.parse("ftp://example.com/", {})
    with pytest.raises(ValueError, match="line break"):
        Endpoint.parse("http://example.com/", {"x-key": "a\r\nx-injected: 1"})


def test_https_endpoints_are_called_over_tls_and_the_certificate_is_checked() -> None:
    """An https:// tier gets TLS with certificate and host name checks; a certificate the
    client does not trust fails the call as a connection error."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)

    async def scenario() -> None:
        server = await asyncio.start_server(_tls_echo, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        endpoint = Endpoint.parse(f"https://127.0.0.1:{port}/v1/chat/completions", {})
        pool = ConnectionPool(ssl_context=trusting)
        answers = [
            await pool.post(endpoint, b"%d" % i, connect_timeout=5, timeout=5) for i in range(3)
        ]
        assert [a.body for a in answers] == [b"0", b"1", b"2"]
        assert pool.opened == 1
        await pool.aclose()
        stranger = ConnectionPool()  # the system's trust store: it does not know this CA
        with pytest.raises(HTTPConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.post(endpoint, b"{}", connect_timeout=5, timeout=5)
        await stranger.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


async def _tls_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            writer.write(ok(await reader.readexactly(length)))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
