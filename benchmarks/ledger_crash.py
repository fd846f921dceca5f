"""What a ``kill -9`` of the proxy costs its ledger: requests answered but never recorded.

Starts a fast upstream (``benchmarks.fast_upstream``) and ``cascade serve`` with an SQLite ledger
and a three-tier policy whose tiers all point at it, drives it with concurrent clients that note
the request id of every 200, sends the proxy SIGKILL mid-load, then starts it once more on the
same database and spool (it replays the spool), waits until the spool is empty, stops it cleanly
and counts. Printed per run: answered, recorded (answered requests found in the ledger), lost
(answered - recorded) and how long before the kill the oldest lost request was answered.
``--hold-lock S`` keeps SQLite's write lock taken from S seconds before the kill, so that the
database stalls and the backlog grows however fast the machine is.

    .venv/bin/python -m benchmarks.ledger_crash [--runs 3] [--clients 32] [--seconds 3]
        [--hold-lock 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

from benchmarks.bench_proxy import FAST_POLICY
from benchmarks.processes import started

_BODY = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@dataclass(frozen=True)
class Hold:
    """Hold SQLite's write lock on ``database`` for the last ``seconds`` before the kill."""

    database: Path
    seconds: float


@dataclass(frozen=True)
class Outcome:
    """One run: what the clients were answered and what the ledger kept."""

    answered: int
    recorded: int
    oldest_lost_ms: float
    load_s: float

    @property
    def lost(self) -> int:
        """Answered requests the ledger does not hold."""
        return self.answered - self.recorded


def serve_command(policy: Path, port: int, database: Path, spool: Path) -> list[str]:
    """``cascade serve`` with an SQLite ledger (the test of the bound uses it too)."""
    return [
        sys.executable,
        "-m",
        "cascade",
        "serve",
        "--policy",
        str(policy),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--database-url",
        f"sqlite:///{database}",
        "--spool",
        str(spool),
    ]


async def _load(
    url: str, clients: int, seconds: float, proxy: subprocess.Popen[bytes], hold: Hold | None
) -> tuple[dict[str, float], float, float]:
    """Drive the proxy, kill it after ``seconds``; the ids answered 200 with when, the kill's
    time and how long the load ran."""
    answered: dict[str, float] = {}
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(f"{url}/v1/chat/completions", json=_BODY) as response:
                    await response.read()
                    if response.status == 200:
                        answered[response.headers["x-cascade-request-id"]] = time.monotonic()
            except (TimeoutError, aiohttp.ClientError):
                return  # the proxy is gone

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        held: sqlite3.Connection | None = None
        await asyncio.sleep(seconds - (hold.seconds if hold else 0.0))
        if hold is not None:
            held = sqlite3.connect(hold.database, isolation_level=None, timeout=30)
            held.execute("BEGIN IMMEDIATE")  # the proxy's writer now waits on SQLite's lock
            await asyncio.sleep(hold.seconds)
        os.kill(proxy.pid, signal.SIGKILL)
        killed = time.monotonic()
        stop.set()
        await asyncio.gather(*tasks)
        if held is not None:
            held.rollback()
            held.close()
    return answered, killed, killed - started


def _stored(database: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM requests")}


def _wait_until_empty(spool: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not spool.exists() or spool.stat().st_size == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the spool {spool} was not replayed within {seconds} s")


def run_once(upstream: str, port: int, clients: int, seconds: float, hold_s: float) -> Outcome:
    """One run: load, kill -9, restart (the spool replays), clean stop, count."""
    with tempfile.TemporaryDirectory() as tmp:
        policy, database, spool = Path(tmp, "crash.yaml"), Path(tmp, "crash.db"), Path(tmp, "spool")
        policy.write_text(FAST_POLICY.format(url=upstream))
        command = serve_command(policy, port, database, spool)
        url = f"http://127.0.0.1:{port}"
        with started(command, f"{url}/readyz") as proxy:
            httpx.post(f"{url}/v1/chat/completions", json=_BODY, timeout=30).raise_for_status()
            answered, killed, load_s = asyncio.run(
                _load(url, clients, seconds, proxy, Hold(database, hold_s) if hold_s else None)
            )
        with started(command, f"{url}/readyz"):
            _wait_until_empty(spool)
        stored = _stored(database)
    lost = [at for request_id, at in answered.items() if request_id not in stored]
    oldest = (killed - min(lost)) * 1000 if lost else 0.0
    return Outcome(len(answered), len(answered) - len(lost), oldest, load_s)


def main() -> None:
    """Run the crash a few times and print what each run lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="load before the kill")
    parser.add_argument(
        "--hold-lock", type=float, default=0.0, help="hold SQLite's write lock this long first"
    )
    parser.add_argument("--upstream-port", type=int, default=9111)
    parser.add_argument("--proxy-port", type=int, default=9112)
    args = parser.parse_args()
    upstream = f"http://127.0.0.1:{args.upstream_port}"
    upstream_command = [
        sys.executable,
        "-m",
        "benchmarks.fast_upstream",
        "--port",
        str(args.upstream_port),
    ]
    print(
        f"kill -9 under load: {args.clients} clients, {args.seconds} s of load, SQLite ledger"
        + (f", write lock held the last {args.hold_lock} s" if args.hold_lock else "")
    )
    print(
        f"{'run':>3} {'answered':>9} {'recorded':>9} {'lost':>6} {'oldest lost':>12} {'req/s':>7}"
    )
    with started(upstream_command, f"{upstream}/"):
        outcomes = []
        for run in range(1, args.runs + 1):
            outcome = run_once(
                upstream, args.proxy_port, args.clients, args.seconds, args.hold_lock
            )
            outcomes.append(outcome)
            print(
                f"{run:>3} {outcome.answered:>9} {outcome.recorded:>9} {outcome.lost:>6} "
                f"{outcome.oldest_lost_ms:>9.0f} ms {outcome.answered / outcome.load_s:>7.0f}"
            )
    print(f"most lost in one run: {max(o.lost for o in outcomes)}")


if __name__ == "__main__":
    main()
