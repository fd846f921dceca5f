"""A ``kill -9`` of the proxy loses only the requests answered in the last moments before it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from cascade.ledger import open_ledger
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier, closed_port

POLICY = """\
name: crash
tiers:
  - {{name: small, model: small-model, kind: self_hosted, endpoint: "{url}/v1",
      max_concurrency: 1000, price: {{gpu_usd_per_hour: 2.0, tokens_per_second: 1000}}}}
"""
JOURNAL_AFTER_S = 0.2
"""The writer's default ``journal_after_s``: rows older than this are in the spool."""
ALLOWANCE_S = 0.5
"""Time allowed on top for one spool append and a busy event loop on a loaded CI machine."""


@contextmanager
def _proxy(policy: Path, database: Path, spool: Path) -> Iterator[tuple[str, int]]:
    port = closed_port()
    command = [
        *(sys.executable, "-m", "cascade", "serve", "--policy", str(policy)),
        *("--port", str(port), "--log-level", "warning", "--drain-delay", "0"),
        *("--database-url", f"sqlite:///{database}", "--spool", str(spool)),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, "cascade serve exited"
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        return False

    try:
        assert wait_until(ready, 60)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.terminate()  # a clean stop flushes the ledger
        proc.wait(30)


async def _load_then_kill(url: str, pid: int, database: Path) -> tuple[dict[str, float], float]:
    """Requests from 8 clients; SQLite's write lock taken for the last 1.2 s (the database
    stalls, the backlog grows), then SIGKILL. The ids answered 200 with when, and the kill."""
    answered: dict[str, float] = {}
    body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}

    async def client(http: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.TransportError):
            while True:
                response = await http.post("/v1/chat/completions", json=body)
                if response.status_code == 200:
                    answered[response.headers["x-cascade-request-id"]] = time.monotonic()

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        clients = [asyncio.create_task(client(http)) for _ in range(8)]
        await asyncio.sleep(0.5)
        with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as lock:
            lock.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(1.2)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.gather(*clients)
            lock.execute("ROLLBACK")
    return answered, killed


async def _restart(database: Path, spool: Path) -> None:
    """What the proxy's ledger does as it starts again: open_ledger replays the spool."""
    async with open_ledger(f"sqlite:///{database}", spool_path=spool) as ledger:
        await asyncio.wait_for(ledger.wait_until_drained(), 30)


def test_kill_9_loses_only_the_last_moments(tmp_path: Path) -> None:
    """Killed while its database stalls, the proxy, once its ledger is opened again on the same
    spool, has every request answered more than journal_after_s (+ one spool append) before the
    kill."""
    policy, database, spool = tmp_path / "p.yaml", tmp_path / "ledger.db", tmp_path / "spool"
    with serving(ScriptedTier("small").app()) as tier:
        policy.write_text(POLICY.format(url=tier))
        with _proxy(policy, database, spool) as (url, pid):
            answered, killed = asyncio.run(_load_then_kill(url, pid, database))
    assert spool.stat().st_size > 0  # the journal kept what the stalled database could not take
    asyncio.run(_restart(database, spool))
    assert spool.read_text() == ""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        stored = {row[0] for row in conn.execute("SELECT request_id FROM requests")}
    recent = sum(1 for at in answered.values() if killed - at < JOURNAL_AFTER_S + ALLOWANCE_S)
    lost = [request_id for request_id in answered if request_id not in stored]
    assert len(answered) > recent > 0  # the bound below says something
    assert len(lost) <= recent, f"{len(lost)} lost of {len(answered)}; {recent} were recent"
