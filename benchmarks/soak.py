"""Soak: the real proxy under a steady mixed load for minutes; does anything grow or degrade?

Starts three simulated tiers (``cascade simulate-tier``: 1.5B, 7B and a frontier API reached
through litellm, faster than real time with ``--time-scale``) and ``cascade serve`` with its
ledger on SQLite, each in its own process, then keeps about the tiers' capacity of requests in
flight: plain ones, streamed ones (the policy streams straight through) and some client
mistakes (a ``temperature`` the tier refuses, a ``max_tokens`` the proxy refuses). Every 15 s
it prints the requests answered, the error rate (5xx, and 4xx apart from the mistakes sent on
purpose), p50/p99 latency over the interval, the proxy's resident memory (from /proc, Linux)
and the ledger's rows; at the end, the calls still counted in flight (none should be) and whether
the proxy's RSS grew from the first third of the run to the last.

    .venv/bin/python -m benchmarks.soak [--minutes 3] [--time-scale 0.05] [--concurrency 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.processes import started
from cascade.simulator.dataset import iter_rows

_KEY_ENV = "CASCADE_SOAK_FRONTIER_KEY"
_POLICY = """\
name: soak
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, max_concurrency: {cap},
      overflow: frontier, threshold: 0.818}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}, max_concurrency: {cap},
      overflow: frontier, threshold: 0.734}}
  - {{name: frontier, model: openai/gpt-4o, kind: api, endpoint: "{frontier}/v1",
      api_key_env: {key_env}, max_concurrency: {cap},
      price: {{input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25,
               output_usd_per_mtok: 10}}}}
escalation:
  checks: [length, empty, invalid_json, invalid_tool_call]
  streaming: passthrough
"""
_REPORT_EVERY_S = 15.0
_GROWTH_LIMIT = 0.10
"""RSS growth (last third over first) above which the run is reported as growing."""


@dataclass
class Interval:
    """What the client saw since the last report."""

    latencies_ms: list[float] = field(default_factory=list)
    server_errors: int = 0
    unexpected_4xx: int = 0
    mistakes: int = 0
    """Requests sent wrong on purpose (each should get a 400)."""
    transport_errors: int = 0
    unexpected: Counter[str] = field(default_factory=Counter)
    """What the errors were: ``503``, ``400 (a mistake)``, ``ReadTimeout``, …"""


def _free_port() -> int:
    import socket  # noqa: PLC0415 - only here

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (0 where /proc is missing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:"), 0)
    return kb / 1024 + sum(_rss_mb(int(child)) for child in children)


def _ledger_rows(database: Path) -> int:
    """Rows in the ledger's requests table now (-1 before the table exists)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("select count(*) from requests").fetchone()[0])
    except sqlite3.Error:
        return -1


def _body(i: int, prompt: str) -> tuple[dict[str, object], bool]:
    """The ``i``-th request of the mix, and whether it is a mistake sent on purpose."""
    body: dict[str, object] = {
        "model": "cascade",
        "messages": [
            {"role": "system", "content": "You are a concise, careful assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 256,
    }
    kind = i % 20
    if kind == 0:
        body["temperature"] = "hot"  # passes the proxy, refused by the tier: a client error
    elif kind == 10:
        body["max_tokens"] = 0  # refused by the proxy itself
    elif kind % 4 == 1:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body, kind in (0, 10)


async def _one(
    client: httpx.AsyncClient, body: dict[str, object], mistake: bool, tally: list[Interval]
) -> None:
    """Send one request and count it in the interval it ends in (``tally[0]``)."""
    started = time.perf_counter()
    try:
        if body.get("stream"):
            async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                async for _ in reply.aiter_bytes():
                    pass
                status = reply.status_code
        else:
            status = (await client.post("/v1/chat/completions", json=body)).status_code
    except httpx.TransportError as exc:
        tally[0].transport_errors += 1
        tally[0].unexpected[type(exc).__name__] += 1
        return
    now = tally[0]
    now.latencies_ms.append((time.perf_counter() - started) * 1000)
    if mistake:
        now.mistakes += 1
        if status != 400:
            now.unexpected_4xx += 1  # a mistake answered otherwise counts as an error too
            now.unexpected[f"{status} (to a mistake)"] += 1
    elif status >= 500:
        now.server_errors += 1
        now.unexpected[str(status)] += 1
    elif status != 200:
        now.unexpected_4xx += 1
        now.unexpected[str(status)] += 1


async def _drive(
    url: str, proxy_pid: int, database: Path, minutes: float, concurrency: int
) -> list[float]:
    """Keep ``concurrency`` requests in flight for ``minutes``; report; return RSS samples."""
    prompts = [r.prompt for r in iter_rows() if len(r.prompt) < 2000]
    random.Random(0).shuffle(prompts)
    end = time.monotonic() + minutes * 60
    tally = [Interval()]
    counter = 0
    total = 0
    rss: list[float] = []
    unexpected: Counter[str] = Counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal counter
        while time.monotonic() < end:
            i, counter = counter, counter + 1
            body, mistake = _body(i, prompts[i % len(prompts)])
            await _one(client, body, mistake, tally)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        started = time.monotonic()
        print(
            f"{'t':>5} {'requests':>9} {'rps':>6} {'5xx %':>6} {'other %':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7} {'ledger':>8}"
        )
        while time.monotonic() < end:
            await asyncio.sleep(min(_REPORT_EVERY_S, max(0.0, end - time.monotonic())))
            seen, tally[0] = tally[0], Interval()
            done = len(seen.latencies_ms) + seen.transport_errors
            total += done
            rss.append(_rss_mb(proxy_pid))
            unexpected.update(seen.unexpected)
            lat = sorted(seen.latencies_ms) or [0.0]
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            other = seen.unexpected_4xx + seen.transport_errors
            print(
                f"{time.monotonic() - started:5.0f} {total:9d} {done / _REPORT_EVERY_S:6.0f} "
                f"{100 * seen.server_errors / max(done, 1):6.2f} {100 * other / max(done, 1):7.2f} "
                f"{statistics.median(lat):7.0f} {p99:7.0f} {rss[-1]:7.1f} "
                f"{_ledger_rows(database):8d}",
                flush=True,
            )
        await asyncio.gather(*workers)
        metrics = (await client.get("/metrics")).text
    errors = ", ".join(f"{what}: {count}" for what, count in unexpected.most_common()) or "none"
    print(f"errors over the run: {errors}")
    left = [line for line in metrics.splitlines() if line.startswith("cascade_in_flight{")]
    print(f"in flight after the load (each should be 0): {'; '.join(left) or 'none'}")
    return rss


def main() -> None:
    """Run the soak and print what it saw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.05,
        help="the simulated tiers' wall seconds per simulated second",
    )
    parser.add_argument("--max-concurrency", type=int, default=16, help="per tier, in the policy")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests kept in flight (default: about the tiers' capacity, 2.5 x max)",
    )
    args = parser.parse_args()
    concurrency = args.concurrency or int(args.max_concurrency * 2.5)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="cascade-soak-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        tiers = {}
        for profile in ("1.5b", "7b", "frontier"):
            port = _free_port()
            command = [python, "-m", "cascade", "simulate-tier", "--profile", profile]
            command += ["--port", str(port), "--time-scale", str(args.time_scale)]
            command += ["--log-level", "warning"]
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(started(command, f"{url}/health", log=folder / f"{profile}.log"))
            tiers[profile] = url
        policy = folder / "soak.yaml"
        policy.write_text(
            _POLICY.format(
                small=tiers["1.5b"],
                medium=tiers["7b"],
                frontier=tiers["frontier"],
                cap=args.max_concurrency,
                key_env=_KEY_ENV,
            )
        )
        database = folder / "ledger.db"
        port = _free_port()
        command = [python, "-m", "cascade", "serve", "--policy", str(policy), "--port", str(port)]
        command += ["--database-url", f"sqlite:///{database}", "--spool", str(folder / "spool")]
        command += ["--log-level", "warning"]
        os.environ.setdefault(_KEY_ENV, "soak-key-not-secret")
        url = f"http://127.0.0.1:{port}"
        proxy = stack.enter_context(started(command, f"{url}/readyz", log=folder / "proxy.log"))
        print(
            f"soak: {args.minutes:g} min, {concurrency} in flight, tiers at "
            f"max_concurrency {args.max_concurrency}, time scale {args.time_scale:g}; "
            f"proxy pid {proxy.pid}, ledger {database}",
            flush=True,
        )
        rss = asyncio.run(_drive(url, proxy.pid, database, args.minutes, concurrency))
        third = max(1, len(rss) // 3)
        first, last = statistics.mean(rss[:third]), statistics.mean(rss[-third:])
        growth = (last - first) / first if first else 0.0
        verdict = "GREW" if growth > _GROWTH_LIMIT else "flat"
        logged = (folder / "proxy.log").read_text(errors="replace").splitlines()
        print(f"the proxy logged {len(logged)} lines at warning or above" + (":" if logged else ""))
        for line in logged[-5:]:
            print(f"  {line[:300]}")
        print(
            f"RSS first third {first:.1f} MB, last third {last:.1f} MB: {growth:+.1%} ({verdict}; "
            f"over {_GROWTH_LIMIT:.0%} counts as growth)"
        )


if __name__ == "__main__":
    main()
