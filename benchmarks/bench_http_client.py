"""CPU per forwarded request: aiohttp's client against the keep-alive pool (cascade.tiers.pool).

Starts ``benchmarks.fast_upstream`` and POSTs a small chat request to it from 16 concurrent
tasks, first through ``aiohttp.ClientSession`` (as the proxy once did), then through
:class:`cascade.tiers.pool.ConnectionPool` (as it does now), and prints CPU microseconds per request
and requests per second of this process, and how many connections each opened.

Then the same for streamed calls against a streaming upstream started from this module (20
server-sent events and ``[DONE]`` per call): aiohttp reading lines and parsing each event, as the
proxy's streams once did, against :meth:`OpenAICompatibleClient.stream` on the pool.

    .venv/bin/python -m benchmarks.bench_http_client [--requests 20000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
import httptools
import httpx
import orjson
import uvloop

from cascade.policy.model import Tier
from cascade.tiers.pool import ConnectionPool, Endpoint
from cascade.tiers.self_hosted import OpenAICompatibleClient

_BODY = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
)
_EVENTS = 20


async def _measure(name: str, one: Callable[[], Awaitable[int]], requests: int, conc: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            if await one() != 200:
                raise RuntimeError(f"{name}: the upstream did not answer 200")

    await asyncio.gather(*(worker(100) for _ in range(conc)))  # warm up, open connections
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(requests // conc) for _ in range(conc)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:>24}: {1e6 * cpu / requests:6.0f} us CPU/request {requests / wall:8.0f} req/s")


async def _complete(url: str, requests: int, conc: int) -> None:
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)

        async def via_aiohttp() -> int:
            async with session.post(url, data=_BODY, headers=headers, timeout=timeout) as r:
                await r.read()
                return r.status

        await _measure("aiohttp.ClientSession", via_aiohttp, requests, conc)

    pool = ConnectionPool()
    endpoint = Endpoint.parse(url, headers)

    async def via_pool() -> int:
        answer = await pool.post(endpoint, _BODY, connect_timeout=5, timeout=60)
        return answer.status

    await _measure("cascade.tiers.pool", via_pool, requests, conc)
    print(f"{'':>24}  connections opened by cascade.tiers.pool: {pool.opened}")
    await pool.aclose()


async def _streamed(base: str, requests: int, conc: int) -> None:
    url = f"{base}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=5, sock_read=30)

        async def via_aiohttp() -> int:
            events = 0
            async with session.post(url, data=_BODY, headers=headers, timeout=timeout) as r:
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    orjson.loads(data)
                    events += 1
            return r.status if events == _EVENTS else 0

        await _measure("aiohttp stream", via_aiohttp, requests, conc)

    pool = ConnectionPool()
    client = OpenAICompatibleClient(pool)
    tier = Tier.model_validate(
        {
            "name": "bench",
            "model": "m",
            "kind": "self_hosted",
            "endpoint": f"{base}/v1",
            "price": {"gpu_usd_per_hour": 1, "tokens_per_second": 100},
        }
    )
    payload = orjson.loads(_BODY)

    async def via_pool() -> int:
        events = 0
        async for _ in client.stream(tier, payload):
            events += 1
        return 200 if events == _EVENTS else 0

    await _measure("OpenAICompatibleClient", via_pool, requests, conc)
    print(f"{'':>24}  connections opened by cascade.tiers.pool: {pool.opened}")
    await pool.aclose()


def _stream_answer() -> bytes:
    parts = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"]
    parts.append(b"transfer-encoding: chunked\r\n\r\n")
    for i in range(_EVENTS):
        choice = {"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [choice]}
        event = b"data: %s\n\n" % orjson.dumps(chunk)
        parts.append(b"%x\r\n%s\r\n" % (len(event), event))
    parts.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    return b"".join(parts)


class _StreamingUpstream(asyncio.Protocol):
    """One keep-alive connection: every request gets the same streamed answer."""

    answer = b""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(self.answer)


async def _serve_streams(port: int) -> None:
    _StreamingUpstream.answer = _stream_answer()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_StreamingUpstream, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _start(command: list[str], base: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            httpx.post(base, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    return process


def main() -> None:
    """Start the upstreams, measure both clients on each, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=9111)
    parser.add_argument("--serve-streams", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_streams:
        uvloop.run(_serve_streams(args.serve_streams))
        return
    base = f"http://127.0.0.1:{args.port}"
    streams = f"http://127.0.0.1:{args.port + 1}"
    upstreams = [
        _start(["benchmarks.fast_upstream", "--port", str(args.port)], base),
        _start(["benchmarks.bench_http_client", "--serve-streams", str(args.port + 1)], streams),
    ]
    try:
        print("complete answers")
        uvloop.run(_complete(f"{base}/v1/chat/completions", args.requests, args.concurrency))
        print(f"streamed answers ({_EVENTS} events each)")
        uvloop.run(_streamed(streams, args.requests // 4, args.concurrency))
    finally:
        for upstream in upstreams:
            upstream.terminate()
            upstream.wait(10)


if __name__ == "__main__":
    main()
