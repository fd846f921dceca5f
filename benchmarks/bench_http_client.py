"""CPU per forwarded request: aiohttp's client against the keep-alive pool (cascade.tiers.pool).

Starts ``benchmarks.fast_upstream`` and POSTs a small chat request to it from 16 concurrent
tasks, first through ``aiohttp.ClientSession`` (as the proxy did), then through
:class:`cascade.tiers.pool.ConnectionPool` (as it does now), and prints CPU microseconds per request
and requests per second of this process, and how many connections each opened.

    .venv/bin/python -m benchmarks.bench_http_client [--requests 20000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson
import uvloop

from cascade.tiers.pool import ConnectionPool, Endpoint

_BODY = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
)


async def _measure(name: str, one: Callable[[], Awaitable[int]], requests: int, conc: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            if await one() != 200:
                raise RuntimeError(f"{name}: the upstream did not answer 200")

    await asyncio.gather(*(worker(100) for _ in range(conc)))  # warm up, open connections
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(requests // conc) for _ in range(conc)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:>22}: {1e6 * cpu / requests:6.0f} us CPU/request {requests / wall:8.0f} req/s")


async def _run(url: str, requests: int, conc: int) -> None:
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
    print(f"{'':>22}  connections opened by cascade.tiers.pool: {pool.opened}")
    await pool.aclose()


def main() -> None:
    """Start the fast upstream, measure both clients, stop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=9111)
    args = parser.parse_args()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fast_upstream", "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(100):
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        uvloop.run(_run(f"{base}/v1/chat/completions", args.requests, args.concurrency))
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
