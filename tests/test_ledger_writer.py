"""The ledger writer: exact rows, batching, outages spooled and replayed once, clean shutdown."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cascade.ledger import (
    AttemptRecord,
    Ledger,
    LedgerEntry,
    LedgerError,
    LedgerWriter,
    RequestRecord,
    create_engine,
)
from cascade.ledger.migrate import upgrade
from cascade.ledger.models import Attempt, Request
from cascade.ledger.spool import Spool, encode_entry
from tests.ledger_databases import (
    KINDS,
    LedgerDatabase,
    Outage,
    make_entry,
    migrate,
    open_database,
    postgres_url,
)


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """A migrated SQLite file or Postgres schema."""
    with open_database(request.param, tmp_path) as db:
        migrate(db)
        yield db


async def _counts(ledger: Ledger) -> tuple[int, int]:
    async with ledger.engine.connect() as conn:
        requests = (await conn.execute(select(func.count()).select_from(Request))).scalar_one()
        attempts = (await conn.execute(select(func.count()).select_from(Attempt))).scalar_one()
    return requests, attempts


def _submit(writer: LedgerWriter, entries: list[LedgerEntry]) -> None:
    for entry in entries:
        writer.submit(entry.request, entry.attempts)


def test_rows_read_back_exactly(database: LedgerDatabase, tmp_path: Path) -> None:
    """Every field, money to the tenth decimal and times as instants, reads back as written."""
    extreme = LedgerEntry(
        RequestRecord(
            request_id="req-extreme",
            policy="p",
            policy_version="1",
            workload="batch",
            decision_reason="pass_through",
            status="error",
            http_status=503,
            cost_usd=Decimal("12345678.1234567891"),
        ),
        (),
    )
    entries = [make_entry(n, attempts=1 + n % 3) for n in range(6)] + [extreme]

    async def run() -> list[LedgerEntry | None]:
        ledger = Ledger(database.engine())
        async with LedgerWriter(ledger, tmp_path / "spool.jsonl") as writer:
            _submit(writer, entries)
            await writer.flush()
        stored = [await ledger.fetch(e.request.request_id) for e in entries]
        await ledger.aclose()
        return stored

    assert asyncio.run(run()) == entries
    assert make_entry(0).request.created_at.utcoffset() != UTC.utcoffset(None)


def test_batches_share_transactions(database: LedgerDatabase, tmp_path: Path) -> None:
    """450 submissions with batches of 200 take three transactions, not 450."""

    async def run() -> tuple[int, tuple[int, int]]:
        ledger = Ledger(database.engine())
        writer = LedgerWriter(
            ledger, tmp_path / "spool.jsonl", batch_size=200, max_delay_s=60, journal_after_s=60
        )
        async with writer:
            _submit(writer, [make_entry(n) for n in range(450)])
            await writer.flush()
        counts = await _counts(ledger)
        await ledger.aclose()
        return writer.stats.transactions, counts

    assert asyncio.run(run()) == (3, (450, 900))


def test_batch_written_when_delay_runs_out(tmp_path: Path) -> None:
    """A lone submission is written once max_delay_s passes, without any flush."""
    with open_database("sqlite", tmp_path) as database:
        migrate(database)

        async def run() -> tuple[int, int]:
            ledger = Ledger(database.engine())
            async with LedgerWriter(ledger, tmp_path / "spool", max_delay_s=0.01) as writer:
                writer.submit(make_entry(1).request, make_entry(1).attempts)
                # Woken by the writer's own commit (its stats change), never by a fixed sleep.
                await asyncio.wait_for(writer.wait_until_drained(), 5)
                counts = await _counts(ledger)
            await ledger.aclose()
            return counts

        assert asyncio.run(run()) == (1, 2)


def test_sqlite_outage_spools_then_replays_once(tmp_path: Path) -> None:
    """Rows go to the spool while the database is unreachable and are replayed once it is back."""
    db_path = tmp_path / "not-yet" / "ledger.db"
    url = f"sqlite:///{db_path}"
    spool_path = tmp_path / "spool.jsonl"
    entries = [make_entry(n) for n in range(5)]

    async def run() -> None:
        ledger = Ledger(create_engine(url))
        async with LedgerWriter(ledger, spool_path, retry_initial_s=60) as writer:
            _submit(writer, entries)
            await writer.flush()
            assert writer.stats.in_spool == 5
            assert len(spool_path.read_text().splitlines()) == 5
            db_path.parent.mkdir()  # the database comes back
            await upgrade(ledger.engine)
            assert await writer.replay() == 5
            assert await writer.replay() == 0
            assert spool_path.read_text() == ""
            assert writer.stats.replayed == 5
        assert await _counts(ledger) == (5, 10)
        assert [await ledger.fetch(e.request.request_id) for e in entries] == entries
        await ledger.aclose()

    asyncio.run(run())


def test_postgres_restart_spools_then_replays_by_itself(tmp_path: Path) -> None:
    """Postgres going away mid-run spools rows; the writer's retries replay them when it returns."""
    outage = Outage(postgres_url())
    spool_path = tmp_path / "spool.jsonl"

    async def run(database: LedgerDatabase) -> None:
        await outage.start()
        through_relay = LedgerDatabase(outage.url, database.connect_args)
        ledger = Ledger(through_relay.engine())
        writer = LedgerWriter(ledger, spool_path, retry_initial_s=0.05, retry_max_s=0.2)
        async with writer:
            _submit(writer, [make_entry(n) for n in range(3)])
            await writer.flush()
            assert writer.stats.written == 3
            await outage.stop()
            _submit(writer, [make_entry(n) for n in range(3, 10)])
            await writer.flush()
            assert writer.stats.in_spool == 7
            await outage.start()
            await asyncio.wait_for(writer.wait_until_drained(), 15)
        assert await _counts(ledger) == (10, 20)
        assert spool_path.read_text() == ""
        await ledger.aclose()
        await outage.stop()

    with open_database("postgres", tmp_path) as database:
        migrate(database)
        asyncio.run(run(database))


def test_replaying_the_same_spool_twice_stores_rows_once(
    database: LedgerDatabase, tmp_path: Path
) -> None:
    """A spool replayed again (crash between commit and truncation) adds no duplicate rows."""
    spool_path = tmp_path / "spool.jsonl"
    Spool(spool_path).append([make_entry(n, attempts=3) for n in range(4)])
    copy = tmp_path / "copy.jsonl"
    shutil.copy(spool_path, copy)

    async def run() -> tuple[int, int]:
        ledger = Ledger(database.engine())
        writer = LedgerWriter(ledger, spool_path)
        assert await writer.replay() == 4
        shutil.copy(copy, spool_path)
        assert await writer.replay() == 4
        counts = await _counts(ledger)
        await ledger.aclose()
        return counts

    assert asyncio.run(run()) == (4, 12)


def test_spool_left_by_a_crash_is_replayed_on_start(
    database: LedgerDatabase, tmp_path: Path
) -> None:
    """A new writer replays a previous process's spool, keeping a torn last line aside."""
    spool_path = tmp_path / "spool.jsonl"
    entries = [make_entry(n) for n in range(3)]
    torn = encode_entry(make_entry(99))[:40]
    spool_path.write_text("".join(encode_entry(e) + "\n" for e in entries) + torn)

    async def run() -> tuple[int, int]:
        ledger = Ledger(database.engine())
        async with LedgerWriter(ledger, spool_path) as writer:
            await writer.wait_until_drained()
        counts = await _counts(ledger)
        await ledger.aclose()
        return counts

    assert asyncio.run(run()) == (3, 6)
    assert spool_path.read_text() == ""
    assert (tmp_path / "spool.jsonl.rejected").read_text() == torn + "\n"


def test_clean_shutdown_flushes(database: LedgerDatabase, tmp_path: Path) -> None:
    """aclose() writes what is still waiting for its batch, with no flush asked."""

    async def run() -> tuple[int, int]:
        ledger = Ledger(database.engine())
        writer = LedgerWriter(ledger, tmp_path / "spool.jsonl", max_delay_s=60)
        await writer.start()
        _submit(writer, [make_entry(n) for n in range(7)])
        await writer.aclose()
        counts = await _counts(ledger)
        await ledger.aclose()
        return counts

    assert asyncio.run(run()) == (7, 14)


def test_shutdown_during_outage_spools_for_next_start(tmp_path: Path) -> None:
    """Closing while the database is down leaves the rows in the spool for the next writer."""
    db_path = tmp_path / "later" / "ledger.db"
    spool_path = tmp_path / "spool.jsonl"

    async def run() -> tuple[int, int]:
        ledger = Ledger(create_engine(f"sqlite:///{db_path}"))
        writer = LedgerWriter(ledger, spool_path, max_delay_s=60)
        await writer.start()
        _submit(writer, [make_entry(n) for n in range(4)])
        await writer.aclose()
        assert len(spool_path.read_text().splitlines()) == 4
        db_path.parent.mkdir()
        await upgrade(ledger.engine)
        async with LedgerWriter(ledger, spool_path) as again:
            await again.wait_until_drained()
        counts = await _counts(ledger)
        await ledger.aclose()
        return counts

    assert asyncio.run(run()) == (4, 8)


def test_mark_useless(database: LedgerDatabase, tmp_path: Path) -> None:
    """Feedback marks a request useless and zeroes its useful tokens, idempotently."""

    async def run() -> None:
        ledger = Ledger(database.engine())
        async with LedgerWriter(ledger, tmp_path / "spool.jsonl") as writer:
            writer.submit(make_entry(1).request, make_entry(1).attempts)
        assert await ledger.mark_useless("req-000001") is True
        assert await ledger.mark_useless("req-000001") is True
        assert await ledger.mark_useless("no-such-request") is False
        stored = await ledger.fetch("req-000001")
        assert stored is not None
        assert stored.request.useless is True
        assert stored.request.useful_tokens == 0
        assert stored.request.cost_usd == make_entry(1).request.cost_usd
        await ledger.aclose()

    asyncio.run(run())


def test_records_refuse_float_money_and_naive_times() -> None:
    """Records refuse float money, naive timestamps and repeated attempt numbers."""
    with pytest.raises(LedgerError, match=r"cost_usd: must be a decimal.Decimal, got float"):
        AttemptRecord(seq=0, tier="t", model="m", role="primary", outcome="ok", cost_usd=0.1)  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="timezone-aware"):
        RequestRecord(
            request_id="r",
            policy="p",
            policy_version="1",
            workload="w",
            decision_reason="d",
            status="ok",
            http_status=200,
            created_at=datetime(2026, 1, 1),
        )
    attempt = AttemptRecord(seq=0, tier="t", model="m", role="primary", outcome="ok")
    with pytest.raises(LedgerError, match="seq values repeat"):
        LedgerEntry(make_entry(1).request, (attempt, attempt))


def test_submit_after_close_is_refused(tmp_path: Path) -> None:
    """A closed writer refuses new rows loudly instead of dropping them."""

    async def run() -> None:
        ledger = Ledger(create_engine(f"sqlite:///{tmp_path / 'x.db'}"))
        writer = LedgerWriter(ledger, tmp_path / "spool.jsonl")
        await writer.start()
        await writer.aclose()
        with pytest.raises(LedgerError, match="closed"):
            writer.submit(make_entry(1).request)
        await ledger.aclose()

    asyncio.run(run())
