"""Restart the real Postgres server under load through the proxy; count what the ledger kept.

Starts simulated tiers and the proxy with its ledger on a fresh Postgres database, sends
requests at a steady concurrency, restarts the Postgres cluster (``pg_ctlcluster … restart``)
a third of the way through, then stops the proxy (which flushes) and checks that the ledger
holds exactly one ``requests`` row per request sent and one ``attempts`` row per tier call.
It restarts the machine's Postgres: run it on a development machine, not next to other users.

    .venv/bin/python -m benchmarks.ledger_restart [--requests 600] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy import func, select

from cascade.ledger import create_engine
from cascade.ledger.models import Attempt, Request
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.labels import LabelTable
from cascade.simulator.server import create_app as create_tier
from cascade.simulator.settings import SimulatorSettings

_ADMIN = "postgres://postgres@127.0.0.1:5432/test"
_DATABASE = "cascade_restart_check"
_POLICY = """\
name: restart
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, threshold: 0.8,
      overflow: medium}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}}}
"""


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(_ADMIN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _restart_postgres() -> float:
    cluster = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True, check=True)
    started = time.perf_counter()
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            cluster.stdout.split()[0],
            "main",
            "restart",
        ],
        check=True,
    )
    return time.perf_counter() - started


async def _load(url: str, count: int, concurrency: int) -> tuple[list[httpx.Response], float]:
    gate = asyncio.Semaphore(concurrency)
    restart_s = 0.0

    async def one(i: int) -> httpx.Response:
        nonlocal restart_s
        if i == count // 3:
            restart_s = await asyncio.to_thread(_restart_postgres)
        body = {"model": "cascade", "messages": [{"role": "user", "content": f"What is {i}+{i}?"}]}
        async with gate:
            return await client.post("/v1/chat/completions", json=body)

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(*(one(i) for i in range(count)))
    return list(responses), restart_s


async def _count(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            requests = await conn.scalar(select(func.count()).select_from(Request.__table__))
            attempts = await conn.scalar(select(func.count()).select_from(Attempt.__table__))
    finally:
        await engine.dispose()
    return int(requests or 0), int(attempts or 0)


def main() -> None:
    """Run the check and print what was sent and what the ledger holds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{_DATABASE}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{_DATABASE}"'))
    url = f"postgresql://postgres@127.0.0.1:5432/{_DATABASE}"
    labels = LabelTable.load()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        small = stack.enter_context(
            serve_in_thread(
                create_tier(SimulatorSettings(profile="1.5b", time_scale=0.05), labels=labels)
            )
        )
        medium = stack.enter_context(
            serve_in_thread(
                create_tier(SimulatorSettings(profile="7b", time_scale=0.05), labels=labels)
            )
        )
        policy = Path(tmp, "restart.yaml")
        policy.write_text(_POLICY.format(small=small, medium=medium))
        spool = Path(tmp, "spool")
        settings = ServerSettings(
            policies=(str(policy),), database_url=url, spool_path=str(spool), reload_interval_s=0
        )
        with serve_in_thread(create_app(settings), name="proxy") as proxy:
            responses, restart_s = asyncio.run(_load(proxy, args.requests, args.concurrency))
        spool_left = spool.stat().st_size if spool.exists() else 0
    sent = [r for r in responses if r.status_code == 200]
    expected_attempts = sum(len(r.headers["x-cascade-attempts"].split(",")) for r in sent)
    requests, attempts = asyncio.run(_count(url))
    print(f"postgres restarted in {restart_s:.1f} s during the run")
    print(f"sent {len(responses)} requests ({len(sent)} answered), {expected_attempts} tier calls")
    print(
        f"ledger holds {requests} requests rows, {attempts} attempts rows; spool left "
        f"{spool_left} bytes"
    )
    ok = requests == len(responses) and attempts == expected_attempts and spool_left == 0
    print("exactly one row each: " + ("yes" if ok else "NO"))
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{_DATABASE}" WITH (FORCE)'))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
