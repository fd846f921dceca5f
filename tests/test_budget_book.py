"""The worker's book of budget blocks: reservations from memory, leases only when a block runs
out, blocks given back when idle, and never more spent than the budget across workers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from cascade.ledger.budgets import PeriodSpend, period_spend, period_start
from cascade.server.budget import BudgetBook, BudgetExceededError, BudgetUnavailableError
from tests.ledger_databases import (
    KINDS,
    LedgerDatabase,
    Outage,
    migrate,
    open_database,
    postgres_url,
)

LIMIT = Decimal("1.00")


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """A migrated SQLite file or Postgres schema."""
    with open_database(request.param, tmp_path) as db:
        migrate(db)
        yield db


async def _spend(engine: AsyncEngine, key_id: str = "k1") -> PeriodSpend:
    spend = await period_spend(engine, key_id, period_start("day", datetime.now(UTC)))
    assert spend is not None
    return spend


def test_reservations_come_from_the_block_without_the_database(database: LedgerDatabase) -> None:
    """A hundred requests of a cent each fit in the first block (a twentieth of $1 is 5 cents,
    refilled as they settle): the database sees one lease, not a hundred."""

    async def run() -> None:
        engine = database.engine()
        book = BudgetBook(engine, idle_s=60)
        try:
            for _ in range(100):
                reservation = await book.reserve("k1", LIMIT, "day", Decimal("0.01"))
                book.settle(reservation, Decimal("0.0001"), Decimal(0))
            assert book.transactions == 1
            await book.aclose()
            spend = await _spend(engine)
        finally:
            await engine.dispose()
        assert spend.settled_usd == Decimal("0.01")
        assert spend.leased_usd == 0

    asyncio.run(run())


def test_a_request_the_budget_cannot_cover_is_refused_saying_what_is_left(
    database: LedgerDatabase,
) -> None:
    """After 95 cents are spent, a request that may cost 10 cents is refused with what it may
    cost and what is left; one that may cost 5 cents still goes."""

    async def run() -> None:
        engine = database.engine()
        book = BudgetBook(engine)
        try:
            spender = await book.reserve("k1", LIMIT, "day", Decimal("0.95"))
            book.settle(spender, Decimal("0.95"), Decimal(0))
            with pytest.raises(BudgetExceededError) as refused:
                await book.reserve("k1", LIMIT, "day", Decimal("0.10"))
            assert "may cost up to $0.100000" in str(refused.value)
            assert "$0.050000 of the budget is left" in str(refused.value)
            last = await book.reserve("k1", LIMIT, "day", Decimal("0.05"))
            book.settle(last, Decimal("0.05"), Decimal(0))
            with pytest.raises(BudgetExceededError):
                await book.reserve("k1", LIMIT, "day", Decimal("0.000000001"))
            await book.aclose()
            spend = await _spend(engine)
        finally:
            await engine.dispose()
        assert spend.settled_usd == LIMIT

    asyncio.run(run())


def test_a_spent_budget_refuses_from_memory(database: LedgerDatabase) -> None:
    """Once a lease was refused, the requests right after it are refused without asking the
    database again."""

    async def run() -> None:
        engine = database.engine()
        book = BudgetBook(engine)
        try:
            whole = await book.reserve("k1", LIMIT, "day", LIMIT)
            book.settle(whole, LIMIT, Decimal(0))
            with pytest.raises(BudgetExceededError):
                await book.reserve("k1", LIMIT, "day", Decimal("0.01"))
            asked = book.transactions
            for _ in range(50):
                with pytest.raises(BudgetExceededError):
                    await book.reserve("k1", LIMIT, "day", Decimal("0.01"))
            assert book.transactions == asked
            await book.aclose()
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_many_workers_never_spend_more_than_the_budget(database: LedgerDatabase) -> None:
    """Four books (four workers) on their own engines serve 400 concurrent requests that each
    may cost up to 3 cents and spend up to that: what they settle never passes $1, the table
    agrees with what the requests spent, and every request was either served or refused."""

    async def run() -> None:
        engines = [database.engine() for _ in range(4)]
        books = [BudgetBook(engine, idle_s=60) for engine in engines]
        rng = random.Random(7)
        costs = [Decimal(rng.randint(1, 30_000)) / 1_000_000 for _ in range(400)]
        served: list[Decimal] = []
        refused = 0

        async def one(n: int) -> None:
            nonlocal refused
            book = books[n % 4]
            try:
                reservation = await book.reserve("k1", LIMIT, "day", Decimal("0.03"))
            except BudgetExceededError:
                refused += 1
                return
            await asyncio.sleep(0)  # the call
            book.settle(reservation, costs[n], Decimal(0))
            served.append(costs[n])

        try:
            await asyncio.gather(*(one(n) for n in range(400)))
            for book in books:
                await book.aclose()
            spend = await _spend(engines[0])
        finally:
            for engine in engines:
                await engine.dispose()
        assert len(served) + refused == 400
        assert refused > 0
        assert spend.settled_usd == sum(served)
        assert spend.settled_usd <= LIMIT
        assert spend.leased_usd == 0

    asyncio.run(run())


def test_an_idle_block_goes_back_to_the_budget(database: LedgerDatabase) -> None:
    """A block nobody reserved from for ``idle_s`` is settled and given back on the next tick,
    so another worker can lease it."""

    async def run() -> None:
        engine = database.engine()
        book = BudgetBook(engine, idle_s=0)
        try:
            reservation = await book.reserve("k1", LIMIT, "day", Decimal("0.02"))
            held = await _spend(engine)
            assert held.leased_usd == Decimal("0.05")
            await book.tick()
            assert (await _spend(engine)).leased_usd == Decimal("0.05")  # still reserved
            book.settle(reservation, Decimal("0.015"), Decimal(0))
            await book.tick()
            spend = await _spend(engine)
        finally:
            await engine.dispose()
        assert (spend.settled_usd, spend.leased_usd) == (Decimal("0.015"), Decimal(0))

    asyncio.run(run())


def test_a_dead_workers_block_is_counted_as_spent_once_it_expires(
    database: LedgerDatabase,
) -> None:
    """A worker that leased and died never settles: when its lease expires, another worker
    counts the whole block as spent (nobody knows how much of it was used), so the budget is
    never overspent; what is left stays available."""

    async def run() -> None:
        engine = database.engine()
        dead = BudgetBook(engine, lease_s=0.2)
        alive = BudgetBook(engine, lease_s=0.2)
        try:
            await dead.reserve("k1", LIMIT, "day", Decimal("0.02"))  # and never settles
            deadline = time.monotonic() + 10  # the lease expires after 0.2 s; poll until seen
            while (await _spend(engine)).leased_usd and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                await alive.tick()
            spend = await _spend(engine)
            assert (spend.settled_usd, spend.leased_usd) == (Decimal("0.05"), Decimal(0))
            reservation = await alive.reserve("k1", LIMIT, "day", Decimal("0.5"))
            alive.settle(reservation, Decimal("0.5"), Decimal(0))
            await alive.aclose()
            spend = await _spend(engine)
        finally:
            await engine.dispose()
        assert spend.settled_usd == Decimal("0.55")

    asyncio.run(run())


def test_spend_beyond_a_reservation_is_counted_and_logged(database: LedgerDatabase) -> None:
    """A tier that bills more than the request's worst case (it reported more tokens than it
    may produce) is counted as spent all the same, with a warning naming the key."""

    async def run() -> None:
        engine = database.engine()
        book = BudgetBook(engine)
        try:
            reservation = await book.reserve("k1", LIMIT, "day", Decimal("0.01"))
            with capture_logs() as logs:
                book.settle(reservation, Decimal("0.02"), Decimal(0))
            await book.aclose()
            spend = await _spend(engine)
        finally:
            await engine.dispose()
        assert [e["event"] for e in logs] == ["budget.overrun"]
        assert logs[0]["key_id"] == "k1"
        assert spend.settled_usd == Decimal("0.02")

    asyncio.run(run())


def test_self_hosted_spend_is_recorded_beside_the_budget(database: LedgerDatabase) -> None:
    """Spend the budget does not cover (self-hosted tiers under ``on_spent: self_hosted``) is
    kept in its own column and leaves the budget untouched."""

    async def run() -> None:
        engine = database.engine()
        book = BudgetBook(engine)
        try:
            reservation = await book.reserve("k1", LIMIT, "day", Decimal(0))
            book.settle(reservation, Decimal(0), Decimal("0.25"))
            await book.tick()
            spend = await _spend(engine)
        finally:
            await engine.dispose()
        assert spend.self_hosted_usd == Decimal("0.25")
        assert (spend.settled_usd, spend.leased_usd) == (Decimal(0), Decimal(0))
        assert spend.left_usd == LIMIT

    asyncio.run(run())


def test_a_block_is_spent_through_a_database_outage_and_then_refused(tmp_path: Path) -> None:
    """With Postgres gone, a worker keeps reserving from the block it holds (were the block
    reclaimed meanwhile, it was counted as spent whole); a request the block cannot cover is
    refused with BudgetUnavailableError (fail closed); when the database is back, the spend
    made meanwhile is settled."""
    outage = Outage(postgres_url())

    async def run(database: LedgerDatabase) -> PeriodSpend:
        await outage.start()
        engine = LedgerDatabase(outage.url, database.connect_args).engine()
        book = BudgetBook(engine, lease_s=0.2)
        try:
            first = await book.reserve("k1", LIMIT, "day", Decimal("0.02"))  # a block of 5 cents
            book.settle(first, Decimal("0.01"), Decimal(0))
            await outage.stop()
            await asyncio.sleep(0.2)  # past the block's renewal: the next reservation tries it
            second = await book.reserve("k1", LIMIT, "day", Decimal("0.02"))
            book.settle(second, Decimal("0.01"), Decimal(0))
            with pytest.raises(BudgetUnavailableError, match="k1"):
                await book.reserve("k1", LIMIT, "day", Decimal("0.10"))
            await outage.start()
            await book.aclose()
            return await _spend(engine)
        finally:
            await engine.dispose()
            await outage.stop()

    with open_database("postgres", tmp_path) as database:
        migrate(database)
        spend = asyncio.run(run(database))
    assert (spend.settled_usd, spend.leased_usd) == (Decimal("0.02"), Decimal(0))
