"""The tiers' keep-alive HTTP/1.1 pool against real sockets and scripted servers."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from cascade.tiers.pool import ConnectionPool, Endpoint, HTTPConnectionError, Response
from tests.raw_servers import Peer, Server, answer_ok, body_of, ok, until


async def post(
    pool: ConnectionPool,
    server: Server,
    body: bytes = b"{}",
    *,
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
) -> bytes:
    answer = await call(pool, server, body, timeout=timeout, connect_timeout=connect_timeout)
    assert answer.status == 200
    return answer.body


async def call(
    pool: ConnectionPool,
    server: Server,
    body: bytes = b"{}",
    *,
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
) -> Response:
    endpoint = Endpoint.parse(server.url(), {"content-type": "application/json"})
    return await pool.post(endpoint, body, connect_timeout=connect_timeout, timeout=timeout)


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
    """Calls in flight at once each get a connection and their own answer; later calls reuse
    those connections."""

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
    """Chunked answers keep the connection; an answer ended by closing is read to the close."""

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


def test_the_answers_headers_are_kept() -> None:
    """An answer's headers (Retry-After among them) reach the caller, found in any case."""

    async def busy(peer: Peer, request: bytes) -> bool:
        peer.answer(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\ncontent-length: 0\r\n\r\n"
        )
        return True

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(busy) as server:
            answer = await call(pool, server)
        await pool.aclose()
        assert (answer.status, answer.header("retry-after"), answer.header("X-None")) == (
            429,
            "7",
            None,
        )

    asyncio.run(scenario())


def test_a_request_the_upstream_may_have_received_is_never_sent_again() -> None:
    """A reused connection that the server closes after reading the request, before answering,
    fails the call: the upstream got the request exactly once, and it is not resent."""

    seen: list[bytes] = []

    async def drop_the_second(peer: Peer, request: bytes) -> bool:
        seen.append(request)
        if len(seen) == 2:
            return False  # read the request, then close without answering
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(drop_the_second) as server:
            assert await post(pool, server, b"1") == b"1"
            with pytest.raises(HTTPConnectionError, match="closed the connection before"):
                await post(pool, server, b"2")
        await pool.aclose()
        assert [body_of(r) for r in server.requests] == [b"1", b"2"]
        assert server.connections == 1

    asyncio.run(scenario())


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    """A keep-alive connection the server closed while it sat idle is never written to: the
    next request goes out on a new connection, once, and succeeds."""

    async def answer_then_close(peer: Peer, request: bytes) -> bool:
        peer.answer(ok(b"first" if peer.number == 1 else b"second"))
        return peer.number != 1

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(answer_then_close) as server:
            assert await post(pool, server) == b"first"
            await until(lambda: server.closed == 1)  # the server hung up on the idle connection
            assert await post(pool, server) == b"second"
        await pool.aclose()
        assert len(server.requests) == 2
        assert server.connections == 2

    asyncio.run(scenario())


def test_an_idle_connection_past_the_keepalive_limit_is_not_reused() -> None:
    """keepalive_idle_s bounds how long a connection may sit idle and still be reused."""

    async def scenario() -> None:
        async with Server(answer_ok) as server:
            eager = ConnectionPool(keepalive_idle_s=0)
            for _ in range(3):
                await post(pool=eager, server=server)
            await eager.aclose()
            assert eager.opened == 3
            patient = ConnectionPool(keepalive_idle_s=60)
            for _ in range(3):
                await post(pool=patient, server=server)
            await patient.aclose()
            assert patient.opened == 1

    asyncio.run(scenario())


def test_a_new_connection_closed_before_the_answer_fails_without_a_retry() -> None:
    """A fresh connection that breaks before answering fails the call; the request went once."""

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
    """A call past its deadline fails with TimeoutError and its connection is dropped."""
    release = asyncio.Event()

    async def first_hangs(peer: Peer, request: bytes) -> bool:
        if peer.number == 1:
            await release.wait()
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(first_hangs) as server:
            with pytest.raises(TimeoutError, match=r"no complete answer within 0\.2s"):
                await post(pool, server, timeout=0.2)
            assert await post(pool, server, b"next") == b"next"
            assert server.connections == 2
            release.set()
        await pool.aclose()

    asyncio.run(scenario())


def test_connections_per_host_are_capped_and_a_call_waits_for_a_free_one() -> None:
    """Beyond max_connections_per_host, calls wait for a free connection (never opening more);
    one that waits past its connect timeout fails saying all connections are busy."""
    release = asyncio.Event()

    async def held(peer: Peer, request: bytes) -> bool:
        await release.wait()
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool(max_connections_per_host=2)
        async with Server(held) as server:
            calls = [asyncio.create_task(post(pool, server, b"%d" % i)) for i in range(6)]
            await until(lambda: len(server.requests) == 2)
            with pytest.raises(HTTPConnectionError, match=r"all 2 connections .* are busy"):
                await post(pool, server, connect_timeout=0.05)
            release.set()
            assert await asyncio.gather(*calls) == [b"%d" % i for i in range(6)]
        await pool.aclose()
        assert server.connections == 2
        assert len(server.requests) == 6

    asyncio.run(scenario())


def test_idle_connections_beyond_max_idle_per_host_are_closed() -> None:
    """max_idle_per_host bounds the connections kept for reuse; the rest close after answering."""
    arrived = asyncio.Event()
    calls: list[bytes] = []

    async def together(peer: Peer, request: bytes) -> bool:
        calls.append(request)
        if len(calls) % 3 == 0:
            arrived.set()
        await arrived.wait()  # all three calls are in flight at once
        return await answer_ok(peer, request)

    async def scenario() -> None:
        pool = ConnectionPool(max_idle_per_host=1)
        async with Server(together) as server:
            for _ in range(2):
                arrived.clear()
                await asyncio.gather(*(post(pool, server) for _ in range(3)))
                assert pool.idle_connections() == 1
        await pool.aclose()
        assert pool.opened == 5  # three, then the one kept and two new

    asyncio.run(scenario())


def test_refused_connection_oversized_and_invalid_answers_are_connection_errors() -> None:
    """A refused connection, an answer over the size cap and a non-HTTP answer are connection
    errors, as is any call after the pool is closed."""

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
    """An endpoint is an http(s) URL with a host; header values cannot smuggle line breaks."""
    endpoint = Endpoint.parse("https://example.com/v1/chat/completions?x=1", {})
    assert (endpoint.scheme, endpoint.host, endpoint.port) == ("https", "example.com", 443)
    assert endpoint.head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: example.com")
    assert endpoint.absolute_head.startswith(
        b"POST https://example.com/v1/chat/completions?x=1 HTTP/1.1\r\nhost: example.com\r\n"
    )
    assert Endpoint.parse("http://[::1]:8000/v1", {}).authority == "[::1]:8000"
    with pytest.raises(ValueError, match="http:// or https://"):
        Endpoint.parse("ftp://example.com/", {})
    with pytest.raises(ValueError, match="line break"):
        Endpoint.parse("http://example.com/", {"x-key": "a\r\nx-injected: 1"})


def _tls_server(authority: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(host).configure_cert(context)
    return context


def test_https_endpoints_are_called_over_tls_and_the_certificate_is_checked() -> None:
    """An https:// tier gets TLS with certificate and host name checks; a certificate the
    client does not trust fails the call as a connection error."""
    authority = trustme.CA()
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)

    async def scenario() -> None:
        async with Server(answer_ok, tls=_tls_server(authority)) as server:
            pool = ConnectionPool(ssl_context=trusting)
            answers = [await post(pool, server, b"%d" % i) for i in range(3)]
            assert answers == [b"0", b"1", b"2"]
            assert pool.opened == 1
            await pool.aclose()
            stranger = ConnectionPool()  # the system's trust store: it does not know this CA
            with pytest.raises(HTTPConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(stranger, server)
            await stranger.aclose()

    asyncio.run(scenario())


def test_ssl_cert_file_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SSL_CERT_FILE naming a CA bundle, as Python's default context reads it, an https
    tier signed by that CA is trusted without any other setting."""
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    async def scenario() -> None:
        async with Server(answer_ok, tls=_tls_server(authority)) as server:
            pool = ConnectionPool()
            assert await post(pool, server, b"trusted") == b"trusted"
            await pool.aclose()

    asyncio.run(scenario())
