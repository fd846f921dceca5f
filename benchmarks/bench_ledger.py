"""Ledger write throughput: requests (with 1-3 attempts each) per second through the writer.

Submits N requests as fast as the request path would, then waits for them to be committed, into
a fresh SQLite file and, when a URL is given (or CASCADE_TEST_POSTGRES_URL is set), into a fresh
Postgres schema. Deterministic input: request n has 1 + n % 3 attempts. On Postgres the same rows
then go, in the same batches and transactions, into fresh schemas by asyncpg alone: an
``executemany`` of ``INSERT … ON CONFLICT DO NOTHING`` per table, and ``COPY`` straight into the
tables (no conflict handling); the writer's rows/s is printed as a share of each.

    .venv/bin/python -m benchmarks.bench_ledger [--requests 20000] [--batch-size 200]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
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


async def _measure(label: str, url: str, connect_args: dict[str, Any], n: int, batch: int) -> float:
    engine = create_engine(url, connect_args=connect_args)
    await upgrade(engine)
    ledger = Ledger(engine)
    entries = _entries(n)
    rows = n + sum(len(a) for _, a in entries)
    with tempfile.TemporaryDirectory() as spool_dir:
        # The direct path to the database: a burst of 20,000 this large would otherwise be
        # journaled to the spool first (as it should: memory alone must not hold it for long).
        writer = LedgerWriter(
            ledger,
            Path(spool_dir) / "spool.jsonl",
            batch_size=batch,
            journal_after_s=3600,
            max_unsaved=n + 1,
        )
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
    return rows / (done - start)


async def _driver(url: str, schema: str, n: int, batch: int, how: str) -> float:
    """Rows/s of asyncpg alone putting the same rows into a migrated schema, batch by batch."""
    engine = create_engine(url, connect_args={"server_settings": {"search_path": schema}})
    await upgrade(engine)
    await engine.dispose()
    entries = _entries(n)
    request_columns = [f.name for f in dataclasses.fields(RequestRecord)]
    attempt_columns = ["request_id", *(f.name for f in dataclasses.fields(AttemptRecord))]
    chunks = [
        (
            [tuple(getattr(r, c) for c in request_columns) for r, _ in part],
            [
                (r.request_id, *(getattr(a, c) for c in attempt_columns[1:]))
                for r, a_ in part
                for a in a_
            ],
        )
        for part in (entries[i : i + batch] for i in range(0, n, batch))
    ]
    rows = sum(len(r) + len(a) for r, a in chunks)

    def insert(table: str, columns: list[str]) -> str:
        marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"

    connection = await asyncpg.connect(
        url.replace("postgresql://", "postgres://", 1), server_settings={"search_path": schema}
    )
    try:
        start = time.perf_counter()
        for requests, attempts in chunks:
            async with connection.transaction():
                if how == "copy":
                    await connection.copy_records_to_table(
                        "requests", records=requests, columns=request_columns
                    )
                    await connection.copy_records_to_table(
                        "attempts", records=attempts, columns=attempt_columns
                    )
                else:
                    await connection.executemany(insert("requests", request_columns), requests)
                    await connection.executemany(insert("attempts", attempt_columns), attempts)
        elapsed = time.perf_counter() - start
    finally:
        await connection.close()
    rate = rows / elapsed
    label = "COPY" if how == "copy" else "executemany"
    print(f"asyncpg   {label:11s} {rows} rows in batches of {batch} requests: {rate:,.0f} rows/s")
    return rate


async def _postgres(url: str, n: int, batch: int) -> None:
    schemas = [f"cascade_bench_{secrets.token_hex(4)}" for _ in range(3)]
    admin = create_engine(url)
    async with admin.begin() as conn:
        for schema in schemas:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        args = {"server_settings": {"search_path": schemas[0]}}
        writer = await _measure("postgres", url, args, n, batch)
        executemany = await _driver(url, schemas[1], n, batch, "executemany")
        copy = await _driver(url, schemas[2], n, batch, "copy")
        print(
            f"writer / asyncpg executemany: {writer / executemany:.0%}; "
            f"writer / asyncpg COPY: {writer / copy:.0%}"
        )
    finally:
        async with admin.begin() as conn:
            for schema in schemas:
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
