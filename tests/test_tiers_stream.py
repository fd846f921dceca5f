"""Streamed calls: the pool's streams and the self-hosted client's server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.pool import ConnectionPool, Endpoint, HTTPConnectionError, Stream
from cascade.tiers.self_hosted import OpenAICompatibleClient
from tests.raw_servers import Peer, Server, until

CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


END = b"0\r\n\r\n"


async def open_stream(
    pool: ConnectionPool,
    server: Server,
    *,
    first_byte: float = 5.0,
    idle: float = 5.0,
    total: float = 5.0,
) -> Stream:
    endpoint = Endpoint.parse(server.url(), {"content-type": "application/json"})
    return await pool.open(
        endpoint,
        b"{}",
        connect_timeout=2,
        first_byte_timeout=first_byte,
        idle_timeout=idle,
        timeout=total,
    )


def test_a_stream_yields_its_body_as_it_comes_and_keeps_the_connection() -> None:
    """The head arrives first and the body's pieces follow as the server sends them; a body
    read to its end leaves the connection for the next call."""
    more = asyncio.Event()

    async def two_parts(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD + chunk(b"first"))
        await peer.writer.drain()
        await more.wait()
        more.clear()
        peer.answer(chunk(b"second") + END)
        return True

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(two_parts) as server:
            for _ in range(2):
                async with await open_stream(pool, server) as stream:
                    assert stream.status == 200
                    assert stream.header("Content-Type") == "text/event-stream"
                    assert await anext(stream) == b"first"  # before the server sent the rest
                    more.set()
                    assert [piece async for piece in stream] == [b"second"]
        await pool.aclose()
        assert server.connections == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("answer", "keeps"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world", True),
        (CHUNKED_HEAD + chunk(b"hello") + chunk(b" world") + END, True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello world", False),
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
def test_every_framing_of_a_streamed_body_is_read_whole(answer: bytes, keeps: bool) -> None:
    """Content-Length, chunked and close-delimited bodies all stream to their end."""

    async def framed(peer: Peer, request: bytes) -> bool:
        peer.answer(answer)
        return keeps

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(framed) as server:
            for _ in range(2):
                async with await open_stream(pool, server) as stream:
                    assert b"".join([piece async for piece in stream]) == b"hello world"
        await pool.aclose()
        assert server.connections == (1 if keeps else 2)

    asyncio.run(scenario())


def test_a_large_stream_read_slower_than_it_arrives_is_read_whole() -> None:
    """A body far larger than what the pool reads ahead of its reader arrives intact."""
    body = bytes(range(256)) * 8192  # 2 MiB

    async def large(peer: Peer, request: bytes) -> bool:
        peer.answer(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 65536):
            peer.answer(body[i : i + 65536])
        return True

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(large) as server:
            for _ in range(2):
                async with await open_stream(pool, server) as stream:
                    pieces = [piece async for piece in stream]
                assert b"".join(pieces) == body
        await pool.aclose()
        assert server.connections == 1

    asyncio.run(scenario())


def test_stream_time_limits_first_byte_idle_and_total() -> None:
    """A stream fails with TimeoutError when its head is late (first-byte limit), when it falls
    silent (idle limit), and when it runs past the call's total limit while still sending."""
    release = asyncio.Event()

    async def silent(peer: Peer, request: bytes) -> bool:
        await release.wait()
        return False

    async def one_piece_then_silence(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD + chunk(b"one"))
        await release.wait()
        return False

    async def endless(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD)
        while not release.is_set():
            peer.answer(chunk(b"more"))
            await asyncio.sleep(0.01)  # the server's pace, not the test waiting
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(silent) as server:
            with pytest.raises(TimeoutError, match=r"no answer within 0\.1s"):
                await open_stream(pool, server, first_byte=0.1)
        async with Server(one_piece_then_silence) as server:
            stream = await open_stream(pool, server, idle=0.1)
            assert await anext(stream) == b"one"
            with pytest.raises(TimeoutError, match=r"silent for 0\.1s"):
                await anext(stream)
        async with Server(endless) as server:
            stream = await open_stream(pool, server, idle=1, total=0.3)
            with pytest.raises(TimeoutError, match=r"did not end within 0\.3s"):
                async for _ in stream:
                    pass
            release.set()
        await pool.aclose()

    asyncio.run(scenario())


def test_a_stream_abandoned_midway_closes_its_connection() -> None:
    """A reader that stops before the body's end closes the connection (the server sees it
    go), and the next call gets a new one."""

    async def long_answer(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD + chunk(b"start"))
        await peer.client_gone()
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(long_answer) as server:
            async with await open_stream(pool, server) as stream:
                assert await anext(stream) == b"start"
            await until(lambda: server.closed == 1)
            async with await open_stream(pool, server) as stream:
                assert await anext(stream) == b"start"
        await pool.aclose()
        assert server.connections == 2

    asyncio.run(scenario())


def test_a_stream_cut_by_the_server_is_a_connection_error() -> None:
    """A framed body that ends with the connection, before its end, fails the reader."""

    async def cut(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD + chunk(b"half"))
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(cut) as server:
            stream = await open_stream(pool, server)
            assert await anext(stream) == b"half"
            with pytest.raises(HTTPConnectionError, match="closed the connection while"):
                await anext(stream)
        await pool.aclose()

    asyncio.run(scenario())


# The self-hosted client's streams


def tier(url: str, **timeouts: float) -> Tier:
    """A self-hosted tier at ``url`` (the server's root)."""
    return Tier.model_validate(
        {
            "name": "small",
            "model": "distill-1.5b",
            "kind": "self_hosted",
            "endpoint": f"{url}/v1",
            "price": {"gpu_usd_per_hour": 1, "tokens_per_second": 100},
            "timeouts": timeouts,
        }
    )


def root(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in stream]


async def read_into(received: list[dict[str, Any]], stream: AsyncIterator[dict[str, Any]]) -> None:
    async for item in stream:
        received.append(item)


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: %s\r\n\r\n" % event for event in events)


def test_events_split_anywhere_across_chunks_are_parsed_until_done() -> None:
    """Events cut at any byte (CRLF line ends included) arrive whole and in order, the stream
    stops at [DONE], and the connection goes back to the pool when the body's end follows."""
    events = sse(b'{"n": 1}', b'{"n": 2, "text": "a\\nb"}', b"[DONE]")
    end = asyncio.Event()

    async def in_pieces(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD)
        for i in range(0, len(events), 3):
            peer.answer(chunk(events[i : i + 3]))
            await peer.writer.drain()
        await end.wait()  # the body's end comes after the reader has seen [DONE]
        end.clear()
        peer.answer(END)
        return True

    async def scenario() -> None:
        pool = ConnectionPool()
        client = OpenAICompatibleClient(pool)
        async with Server(in_pieces) as server:
            for _ in range(2):
                chunks = await collect(client.stream(tier(root(server)), {"messages": []}))
                assert chunks == [{"n": 1}, {"n": 2, "text": "a\nb"}]
                end.set()
                await until(lambda: pool.idle_connections() == 1)
        await pool.aclose()
        assert server.connections == 1
        assert b'"stream":true' in server.requests[0]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("events", "kind", "message"),
    [
        (sse(b'{"n": 1}'), "connection", "ended without \\[DONE\\]"),
        (sse(b'{"n": 1}', b"{not json", b"[DONE]"), "connection", "not JSON"),
        (sse(b'{"error": {"message": "out of memory"}}'), "server_error", "out of memory"),
    ],
    ids=["no-done", "not-json", "error-event"],
)
def test_a_broken_event_stream_is_a_tier_error(events: bytes, kind: str, message: str) -> None:
    """A stream that ends without [DONE], sends an event that is not JSON, or reports an error
    mid-stream fails with a TierError, after the chunks that came before it."""

    async def broken(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD + chunk(events) + END)
        return True

    async def scenario() -> None:
        pool = ConnectionPool()
        client = OpenAICompatibleClient(pool)
        received: list[dict[str, Any]] = []
        async with Server(broken) as server:
            stream = client.stream(tier(root(server)), {"messages": []})
            with pytest.raises(TierError, match=message) as caught:
                await read_into(received, stream)
        await pool.aclose()
        assert caught.value.kind == kind
        assert received == ([{"n": 1}] if b'"n": 1' in events else [])

    asyncio.run(scenario())


def test_a_refused_stream_carries_the_status_kind_and_retry_after() -> None:
    """A streamed call answered 429 fails before any chunk, as rate_limited, with the tier's
    Retry-After and the message from its body."""

    async def busy(peer: Peer, request: bytes) -> bool:
        body = b'{"error": "slow down"}'
        peer.answer(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        return True

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(busy) as server:
            with pytest.raises(TierError, match="slow down") as caught:
                await collect(OpenAICompatibleClient(pool).stream(tier(root(server)), {}))
        await pool.aclose()
        assert (caught.value.kind, caught.value.status, caught.value.retry_after_s) == (
            "rate_limited",
            429,
            7.0,
        )

    asyncio.run(scenario())


def test_a_client_that_abandons_a_stream_closes_the_upstream_connection() -> None:
    """When the consumer stops reading (the async generator is closed), the connection to the
    tier is closed at once, so the tier can stop generating."""

    async def long_answer(peer: Peer, request: bytes) -> bool:
        peer.answer(CHUNKED_HEAD + chunk(sse(b'{"n": 1}')))
        await peer.client_gone()
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(long_answer) as server:
            stream = OpenAICompatibleClient(pool).stream(tier(root(server)), {})
            assert await anext(stream) == {"n": 1}
            await stream.aclose()  # type: ignore[attr-defined]
            await until(lambda: server.closed == 1)
        await pool.aclose()

    asyncio.run(scenario())


def test_the_tiers_first_byte_timeout_bounds_a_streamed_call() -> None:
    """A tier that does not start answering within timeouts.first_byte_s fails as a timeout."""
    release = asyncio.Event()

    async def silent(peer: Peer, request: bytes) -> bool:
        await release.wait()
        return False

    async def scenario() -> None:
        pool = ConnectionPool()
        async with Server(silent) as server:
            stream = OpenAICompatibleClient(pool).stream(tier(root(server), first_byte_s=0.1), {})
            with pytest.raises(TierError, match=r"no answer within 0\.1s") as caught:
                await collect(stream)
            release.set()
        await pool.aclose()
        assert caught.value.kind == "timeout"

    asyncio.run(scenario())
