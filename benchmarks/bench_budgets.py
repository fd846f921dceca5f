"""Budget reservations per second, and database round trips per request, for two designs.

- ``blocks`` (what the proxy does, :class:`cascade.server.budget.BudgetBook`): each worker leases
  a block of the key's budget and reserves and settles requests in memory; the database sees a
  lease when a block runs out and a settlement when it is renewed or given back.
- ``row``: every request reserves with a conditional ``UPDATE`` of the key's row and settles
  with another (two transactions per request on one hot row), the simple design.

Each of ``--workers`` processes runs ``--concurrency`` request loops against one key's budget,
on a fresh SQLite file and, when a URL is given (or CASCADE_TEST_POSTGRES_URL is set), a fresh
Postgres schema. A request reserves its worst case ($0.01) and spends a fifth of it. Two runs:

- ``steady``: a budget of $1,000,000 that never runs out, for ``--seconds``: the hot path;
- ``drain``: a budget of ``--drain-usd`` spent to its end (each loop stops at its first
  refusal): leases grow smaller as the budget runs out, so this counts their round trips too,
  and checks what was settled against the budget.

SQL statements are counted on each worker's engine (``BEGIN``/``COMMIT`` not included).

    .venv/bin/python -m benchmarks.bench_budgets [--workers 2] [--concurrency 64] [--seconds 5]
        [--drain-usd 10] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, event, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger import create_engine
from cascade.ledger.budgets import nanos, period_spend, period_start, settle, take
from cascade.ledger.migrate import upgrade
from cascade.ledger.models import BudgetPeriod
from cascade.server.budget import BudgetBook, BudgetExceededError

STEADY_USD = Decimal(1_000_000)
WORST = Decimal("0.01")
SPENT = Decimal("0.002")
_TABLE = cast("Table", BudgetPeriod.__table__)


@dataclass(frozen=True)
class Run:
    """One measurement: a design, a database, a budget, and how long (None: until spent)."""

    design: str
    url: str
    schema: str | None
    limit: Decimal
    seconds: float | None
    concurrency: int


def _engine(url: str, schema: str | None) -> AsyncEngine:
    args = {"server_settings": {"search_path": schema}} if schema else None
    return create_engine(url, connect_args=args)


def _counting(engine: AsyncEngine) -> list[int]:
    count = [0]

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def counted(*_: Any) -> None:
        count[0] += 1

    return count


@dataclass
class Tally:
    """What one worker did: requests served, requests that failed with a database error
    (SQLite's ``database is locked``), and for how long."""

    served: int = 0
    failed: int = 0
    seconds: float = 0.0


async def _loops(run: Run, request: Any) -> Tally:
    """Run ``request`` in ``run.concurrency`` loops until time is up or the budget refuses."""
    tally = Tally()
    began = time.monotonic()
    stop = began + (run.seconds if run.seconds is not None else 600)

    async def loop() -> None:
        while time.monotonic() < stop:
            try:
                if not await request():
                    return
            except OperationalError:
                tally.failed += 1
                continue
            tally.served += 1

    await asyncio.gather(*(loop() for _ in range(run.concurrency)))
    tally.seconds = time.monotonic() - began
    return tally


async def _blocks(engine: AsyncEngine, run: Run) -> Tally:
    book = BudgetBook(engine, idle_s=60)

    async def request() -> bool:
        try:
            reservation = await book.reserve("bench", run.limit, "day", WORST)
        except BudgetExceededError:
            return False
        await asyncio.sleep(0)  # the call
        book.settle(reservation, SPENT, Decimal(0))
        return True

    tally = await _loops(run, request)
    await book.aclose()
    return tally


async def _row(engine: AsyncEngine, run: Run) -> Tally:
    start = period_start("day", datetime.now(UTC))
    where = (_TABLE.c.key_id == "bench", _TABLE.c.period_start == start)
    worst, spent, limit = nanos(WORST), nanos(SPENT), nanos(run.limit)

    async def request() -> bool:
        async with engine.begin() as conn:
            held = await conn.execute(
                update(_TABLE)
                .where(*where, _TABLE.c.settled_nusd + _TABLE.c.leased_nusd + worst <= limit)
                .values(leased_nusd=_TABLE.c.leased_nusd + worst)
            )
        if held.rowcount != 1:
            return False
        await asyncio.sleep(0)  # the call
        async with engine.begin() as conn:
            await conn.execute(
                update(_TABLE)
                .where(*where)
                .values(
                    settled_nusd=_TABLE.c.settled_nusd + spent,
                    leased_nusd=_TABLE.c.leased_nusd - worst,
                )
            )
        return True

    return await _loops(run, request)


def _worker(run: Run, out: Any) -> None:
    async def measure() -> tuple[Tally, int]:
        engine = _engine(run.url, run.schema)
        statements = _counting(engine)
        try:
            tally = await (_blocks if run.design == "blocks" else _row)(engine, run)
        finally:
            await engine.dispose()
        return tally, statements[0]

    out.put(asyncio.run(measure()))


async def _prepare(run: Run) -> None:
    """A migrated database with the key's row for today (as its first lease creates it)."""
    if run.schema:
        admin = create_engine(run.url)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{run.schema}"'))
        await admin.dispose()
    engine = _engine(run.url, run.schema)
    await upgrade(engine)
    start = period_start("day", datetime.now(UTC))
    now = datetime.now(UTC)
    lease, _ = await take(
        engine,
        key_id="bench",
        start=start,
        limit=nanos(run.limit),
        need=1,
        share=10**15,
        worker="setup",
        expires_at=now,
    )
    assert lease is not None
    await settle(engine, lease, spent=0, keep=0, expires_at=now)
    await engine.dispose()


async def _settled(run: Run) -> Decimal:
    engine = _engine(run.url, run.schema)
    spend = await period_spend(engine, "bench", period_start("day", datetime.now(UTC)))
    await engine.dispose()
    assert spend is not None
    return spend.settled_usd


async def _drop(run: Run) -> None:
    admin = create_engine(run.url)
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{run.schema}" CASCADE'))
    await admin.dispose()


def _measure(run: Run, workers: int) -> str:
    asyncio.run(_prepare(run))
    try:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        procs = [context.Process(target=_worker, args=(run, queue)) for _ in range(workers)]
        for proc in procs:
            proc.start()
        results: list[tuple[Tally, int]] = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        settled = asyncio.run(_settled(run))
    finally:
        if run.schema:
            asyncio.run(_drop(run))
    requests = sum(tally.served for tally, _ in results)
    failed = sum(tally.failed for tally, _ in results)
    elapsed = max(tally.seconds for tally, _ in results)
    statements = sum(count for _, count in results)
    line = (
        f"{run.design:6} {requests / elapsed:>10,.0f} requests/s  "
        f"{statements / max(requests, 1):.4f} statements/request "
        f"({statements:,} for {requests:,} requests in {elapsed:.1f} s)"
    )
    if failed:
        line += f"  {failed:,} failed (database locked)"
    if run.seconds is None:
        line += f"  settled ${settled} of ${run.limit}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--drain-usd", type=Decimal, default=Decimal(10))
    parser.add_argument("--postgres", default=os.environ.get("CASCADE_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    print(
        f"{args.workers} worker processes x {args.concurrency} concurrent requests; each "
        f"reserves ${WORST} and spends ${SPENT}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for database in ["sqlite", *(["postgres"] if args.postgres else [])]:
            for mode, limit, seconds in (
                ("steady", STEADY_USD, args.seconds),
                ("drain", args.drain_usd, None),
            ):
                for design in ("blocks", "row"):
                    schema = None
                    url = f"sqlite:///{Path(folder) / f'{mode}-{design}.db'}"
                    if database == "postgres":
                        schema, url = f"bench_budgets_{secrets.token_hex(4)}", args.postgres
                    run = Run(design, url, schema, limit, seconds, args.concurrency)
                    print(f"{database:8} {mode:6} {_measure(run, args.workers)}", flush=True)


if __name__ == "__main__":
    main()
