"""The ledger as a running server uses it: one call opens it, leaving it closes it.

:func:`open_ledger` is the only way in for a server. In order, it opens the engine, migrates the
schema (unless told the caller's supervisor already did), moves spools left by processes that no
longer run into this process's spool, and starts the write-behind
:class:`~cascade.ledger.writer.LedgerWriter`, which replays that spool first. What it yields, a
:class:`LedgerService`, takes rows without blocking and marks answers useless; leaving the
``async with`` block writes or spools every row submitted, then closes the engine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import URL

from cascade.ledger.database import create_engine
from cascade.ledger.records import AttemptRecord, RequestRecord
from cascade.ledger.spool import adopt_spools as adopt
from cascade.ledger.store import Ledger
from cascade.ledger.writer import LedgerWriter, WriterStats


class LedgerService:
    """An open ledger: rows go in through :meth:`submit`, feedback through :meth:`mark_useless`.

    Built by :func:`open_ledger`, never directly.
    """

    def __init__(self, ledger: Ledger, writer: LedgerWriter) -> None:
        self._ledger = ledger
        self._writer = writer

    def submit(self, request: RequestRecord, attempts: Sequence[AttemptRecord] = ()) -> None:
        """Hand one request and its attempts over; returns at once, never blocks on the database."""
        self._writer.submit(request, attempts)

    async def mark_useless(self, request_id: str) -> bool:
        """Record that a request's answer was of no use; False when the ledger has no such request.

        A request answered a moment ago may still be on its way to the database: when the
        request is not found, everything submitted so far is flushed and it is looked up again.
        """
        if await self._ledger.mark_useless(request_id):
            return True
        await self._writer.flush()
        return await self._ledger.mark_useless(request_id)

    async def flush(self) -> None:
        """Wait until every row submitted so far is in the database or the spool."""
        await self._writer.flush()

    @property
    def stats(self) -> WriterStats:
        """The write-behind writer's counters."""
        return self._writer.stats

    async def aclose(self) -> None:
        """Write or spool every row submitted, then close the engine (raises if rows could be
        kept nowhere)."""
        try:
            await self._writer.aclose()
        finally:
            await self._ledger.aclose()


@asynccontextmanager
async def open_ledger(
    url: str | URL | None,
    *,
    spool_path: str | os.PathLike[str],
    migrate: bool = True,
    adopt_spools: Sequence[str | os.PathLike[str]] = (),
    connect_args: Mapping[str, Any] | None = None,
) -> AsyncIterator[LedgerService]:
    """Open the ledger at ``url`` (None: ``$CASCADE_DATABASE_URL``, else ``./cascade.db``).

    ``migrate``: bring the schema to the newest revision first; pass False when a supervisor has
    migrated once before starting its workers (workers migrating one database at the same time
    can collide). ``adopt_spools``: spool files of processes that no longer run, whose rows move
    into ``spool_path`` before the writer replays it. A database that cannot be migrated stops
    the start; one that goes away later only sends rows to the spool until it is back.
    """
    engine = create_engine(url, connect_args=connect_args)
    ledger = Ledger(engine)
    try:
        if migrate:
            # alembic takes a third of a second to import; workers that skip migrating skip it.
            from cascade.ledger.migrate import upgrade  # noqa: PLC0415

            await upgrade(engine)
        await asyncio.to_thread(adopt, adopt_spools, into=spool_path)
        writer = LedgerWriter(ledger, spool_path)
        await writer.start()  # replays what a previous run left in the spool
    except BaseException:
        await ledger.aclose()
        raise
    service = LedgerService(ledger, writer)
    try:
        yield service
    finally:
        await service.aclose()
