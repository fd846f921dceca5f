"""Ledger write throughput: requests (with 1-3 attempts each) per second through the writer.

Submits N requests as fast as the request path would, then waits for them to be committed, into
a fresh SQLite file and, when a URL is given (or CASCADE_TEST_POSTGRES_URL is set), into a fresh
Postgres schema. Deterministic input: request n has 1 + n % 3 attempts.

    .venv/bin/python -m benchmarks.bench_ledger [--requests 20000] [--batch-size 200]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text

from cascade.ledger import AttemptRecord, Ledger, LedgerWriter, RequestRecord, create_engine
from cascade.ledger.migrate import upgrade


def _entries(n: int) -> list[tuple[RequestRecord, tuple[AttemptRecord, ...]]]:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    out = []
    for i in range(n):
        attempts = tuple(
            AttemptRecord(
                seq=s,
                tier=f"t{s}",
                model="m",
                role="primary" if s == 0 else "escalation",
                outcome="ok",
                prompt_tokens=900,
                cached_tokens=512,
                completion_tokens=150,
                cost_usd=Decimal("0.0000231234"),
                latency_ms=40.0,
            )
            for s in range(1 + i % 3)
        )
        request = RequestRecord(
            request_id=f"bench-{i}",
            policy="default",
            policy_version="1",
            workload="interactive",
            decision_reason="threshold",
            status="ok",
            http_status=200,
            created_at=now,
            tenant="team-a",
            confidence=0.75,
            first_tier="t0",
            final_tier=attempts[-1].tier,
            prompt_tokens=900,
            completion_tokens=150,
            cost_usd=Decimal("0.0000231234") * len(attempts),
            useful_tokens=150,
        )
        out.append((request, attempts))
    return out


async def _measure(label: str, url: str, connect_args: dict[str, Any], n: int, batch: int) -> None:
    engine = create_engine(url, connect_args=connect_args)
    await upgrade(engine)
    ledger = Ledger(engine)
    entries = _entries(n)
    rows = n + sum(len(a) for _, a in entries)
    with tempfile.TemporaryDirectory() as spool_dir:
        writer = LedgerWriter(ledger, Path(spool_dir) / "spool.jsonl", batch_size=batch)
        async with writer:
            start = time.perf_counter()
            for request, attempts in entries:
                writer.submit(request, attempts)
            submitted = time.perf_counter()
            await writer.flush()
            done = time.perf_counter()
    await ledger.aclose()
    print(
        f"{label:9s} {n} requests / {rows} rows: submit {(submitted - start) / n * 1e6:.2f} us "
        f"per request; {n / (done - start):,.0f} requests/s, {rows / (done - start):,.0f} rows/s "
        f"({writer.stats.transactions} transactions, {writer.stats.spooled} spooled)"
    )


async def _postgres(url: str, n: int, batch: int) -> None:
    schema = f"cascade_bench_{secrets.token_hex(4)}"
    admin = create_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        await _measure("postgres", url, {"server_settings": {"search_path": schema}}, n, batch)
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


def main() -> None:
    """Parse arguments and print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--postgres", default=os.environ.get("CASCADE_TEST_POSTGRES_URL"))
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(_measure("sqlite", url, {}, ns.requests, ns.batch_size))
    if ns.postgres:
        asyncio.run(_postgres(ns.postgres, ns.requests, ns.batch_size))


if __name__ == "__main__":
    main()
