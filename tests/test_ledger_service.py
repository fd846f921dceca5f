"""open_ledger, the server's one way into the ledger: migrate, adopt, replay, record, flush."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cascade.ledger import Ledger, open_ledger
from cascade.ledger.spool import Spool
from tests.ledger_databases import KINDS, LedgerDatabase, make_entry, open_database


@pytest.fixture(params=KINDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """An SQLite file or Postgres schema that was never migrated."""
    with open_database(request.param, tmp_path) as db:
        yield db


async def _stored(database: LedgerDatabase, request_id: str) -> tuple[bool, int] | None:
    ledger = Ledger(database.engine())
    try:
        entry = await ledger.fetch(request_id)
    finally:
        await ledger.aclose()
    return None if entry is None else (entry.request.useless, len(entry.attempts))


def test_open_ledger_migrates_adopts_orphans_and_replays_the_spool(
    fresh: LedgerDatabase, tmp_path: Path
) -> None:
    """On a database never migrated, open_ledger creates the tables, takes in the spool of a
    process that no longer runs, replays it with its own, and stores what is submitted."""
    spool = tmp_path / "ledger.spool.worker0"
    orphan = tmp_path / "ledger.spool"
    Spool(spool).append([make_entry(1)])
    Spool(orphan).append([make_entry(2), make_entry(3)])

    async def run() -> None:
        async with open_ledger(
            fresh.url,
            spool_path=spool,
            adopt_spools=[orphan],
            connect_args=fresh.connect_args,
        ) as ledger:
            ledger.submit(make_entry(4).request, make_entry(4).attempts)

    asyncio.run(run())
    assert not orphan.exists()
    assert Spool(spool).read() == []
    for n in (1, 2, 3, 4):
        assert asyncio.run(_stored(fresh, make_entry(n).request.request_id)) == (False, 2)


def test_mark_useless_finds_a_request_still_on_its_way(
    fresh: LedgerDatabase, tmp_path: Path
) -> None:
    """Feedback sent right after the answer finds the request even though its row was still
    waiting for its batch; an unknown request id is reported as such."""
    request_id = make_entry(1).request.request_id

    async def run() -> tuple[bool, bool]:
        async with open_ledger(
            fresh.url, spool_path=tmp_path / "spool", connect_args=fresh.connect_args
        ) as ledger:
            ledger.submit(make_entry(1).request, make_entry(1).attempts)
            return await ledger.mark_useless(request_id), await ledger.mark_useless("req-nope")

    assert asyncio.run(run()) == (True, False)
    assert asyncio.run(_stored(fresh, request_id)) == (True, 2)


def test_without_migrate_the_schema_is_left_alone_and_rows_wait_in_the_spool(
    tmp_path: Path,
) -> None:
    """A worker told its supervisor migrated runs no migration; rows it cannot store (here: no
    tables) are kept in its spool, none lost."""
    database = tmp_path / "ledger.db"
    spool = tmp_path / "spool"

    async def run() -> list[str]:
        async with open_ledger(f"sqlite:///{database}", spool_path=spool, migrate=False) as ledger:
            for n in range(3):
                ledger.submit(make_entry(n).request, make_entry(n).attempts)
            await ledger.flush()
        engine = LedgerDatabase(f"sqlite:///{database}").engine()
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == []
    assert [e.request.request_id for e in Spool(spool).read()] == [
        make_entry(n).request.request_id for n in range(3)
    ]
