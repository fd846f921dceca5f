"""Budgets in the database: leases never let ``settled + leased`` pass the limit, whatever the
number of workers leasing at once, and a dead worker's lease is counted as spent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.budgets import (
    Lease,
    LeaseLost,
    nanos,
    period_end,
    period_spend,
    period_start,
    reclaim_expired,
    settle,
    take,
    usd,
)
from tests.ledger_databases import KINDS, LedgerDatabase, migrate, open_database

_START = datetime(2026, 12, 2, tzinfo=UTC)
_LATER = _START + timedelta(minutes=1)


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """A migrated SQLite file or Postgres schema."""
    with open_database(request.param, tmp_path) as db:
        migrate(db)
        yield db


async def _lease(
    engine: AsyncEngine, need: int, *, share: int = 20, lease: Lease | None = None
) -> tuple[Lease | None, int]:
    """Lease for key ``k1`` (budget 1,000) in the period starting at ``_START``."""
    return await take(
        engine,
        key_id="k1",
        start=_START,
        limit=1000,
        need=need,
        share=share,
        worker="w",
        expires_at=_LATER,
        lease=lease,
    )


async def _take(db: LedgerDatabase, need: int) -> Lease:
    engine = db.engine()
    try:
        lease, left = await _lease(engine, need)
    finally:
        await engine.dispose()
    assert lease is not None, f"refused with {left} left"
    return lease


def test_money_is_counted_in_whole_nano_dollars_rounded_up() -> None:
    """A charge is never counted short: a fraction of a nano-dollar counts as a whole one."""
    assert nanos(Decimal("0.000000001")) == 1
    assert nanos(Decimal("0.0000000011")) == 2
    assert nanos(Decimal("12.5")) == 12_500_000_000
    assert usd(12_500_000_001) == Decimal("12.500000001")


def test_periods_are_utc_calendar_days_and_months() -> None:
    """A day starts at UTC midnight and a month on its first day, whatever the time zone given,
    and each ends where the next begins."""
    now = datetime(2026, 12, 2, 1, 30, tzinfo=timezone(timedelta(hours=3)))  # 2026-12-01 22:30 UTC
    assert period_start("day", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_start("month", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_start(None, now) == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="allowed: day, month"):
        period_start("week", now)
    december = datetime(2026, 12, 1, tzinfo=UTC)
    assert period_end("day", december) == datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    assert period_end("month", december) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def test_a_lease_takes_a_share_of_what_is_left_and_at_least_what_is_needed(
    database: LedgerDatabase,
) -> None:
    """The first lease takes 1/20 of the budget; one that needs more takes what it needs; the
    last takes what is left, and then nothing is left to lease."""

    async def run() -> None:
        engine = database.engine()
        try:
            first, left = await _lease(engine, 10)
            assert first is not None
            assert (first.amount, left) == (50, 1000)
            big, _ = await _lease(engine, 900)
            assert big is not None
            assert big.amount == 900
            refused, left = await _lease(engine, 51)
            assert refused is None
            assert left == 50
            grown, _ = await _lease(engine, 50, lease=first)
            assert grown is not None
            assert grown.lease_id == first.lease_id
            assert grown.amount == 100
            spend = await period_spend(engine, "k1", _START)
            assert spend is not None
            assert (spend.leased_usd, spend.settled_usd, spend.left_usd) == (
                usd(1000),
                usd(0),
                usd(0),
            )
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_concurrent_leases_on_many_connections_never_pass_the_limit(
    database: LedgerDatabase,
) -> None:
    """Forty leases race for a budget of 1,000 on eight engines (eight workers): what they are
    granted adds up to the budget at most, and the table agrees with the grants."""

    async def run() -> None:
        engines = [database.engine() for _ in range(8)]
        try:

            async def one(n: int) -> int:
                lease, _ = await _lease(engines[n % 8], 70, share=5)
                return 0 if lease is None else lease.amount

            granted = await asyncio.gather(*(one(n) for n in range(40)))
            spend = await period_spend(engines[0], "k1", _START)
        finally:
            for engine in engines:
                await engine.dispose()
        assert sum(granted) <= 1000
        assert sum(1 for g in granted if g) >= 2
        assert spend is not None
        assert spend.leased_usd == usd(sum(granted))

    asyncio.run(run())


def test_settling_moves_what_was_spent_and_gives_back_the_rest(database: LedgerDatabase) -> None:
    """Settling 30 of a 50 lease and keeping 10: 30 settled, 10 still leased, 10 back in the
    budget; settling the rest with nothing kept removes the lease."""

    async def run() -> None:
        lease = await _take(database, 10)
        engine = database.engine()
        try:
            kept = await settle(engine, lease, spent=30, keep=10, expires_at=_LATER)
            assert kept is not None
            assert kept.amount == 10
            spend = await period_spend(engine, "k1", _START)
            assert spend is not None
            assert (spend.settled_usd, spend.leased_usd) == (usd(30), usd(10))
            assert await settle(engine, kept, spent=10, keep=0, expires_at=_LATER) is None
            spend = await period_spend(engine, "k1", _START)
            assert spend is not None
            assert (spend.settled_usd, spend.leased_usd, spend.left_usd) == (
                usd(40),
                usd(0),
                usd(960),
            )
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_an_expired_lease_is_reclaimed_as_spent_and_its_worker_finds_it_gone(
    database: LedgerDatabase,
) -> None:
    """A worker that died leaves its lease: once expired, it counts wholly as spent (nobody
    knows how much was used), exactly once; if the worker was only slow, its settle finds the
    lease gone and counts nothing twice."""

    async def run() -> None:
        lease = await _take(database, 10)
        engine = database.engine()
        try:
            assert await reclaim_expired(engine, _START) == 0  # not expired yet
            assert await reclaim_expired(engine, _LATER + timedelta(seconds=1)) == 1
            assert await reclaim_expired(engine, _LATER + timedelta(seconds=1)) == 0
            with pytest.raises(LeaseLost):
                await settle(engine, lease, spent=5, keep=0, expires_at=_LATER)
            with pytest.raises(LeaseLost):
                await _lease(engine, 1, lease=lease)
            spend = await period_spend(engine, "k1", _START)
            assert spend is not None
            assert (spend.settled_usd, spend.leased_usd) == (usd(50), usd(0))
        finally:
            await engine.dispose()

    asyncio.run(run())
