"""The ledger as a running server uses it: one call opens it, leaving it closes it.

:func:`open_ledger` is the only way in for a server. In order, it opens the engine, migrates the
schema (unless told the caller's supervisor already did), moves spools left by processes that no
longer run into this process's spool, and starts the write-behind
:class:`~cascade.ledger.writer.LedgerWriter`, which replays that spool first. What it yields, a
:class:`LedgerService`, takes rows without blocking and marks answers useless; leaving the
``async with`` block writes or spools every row submitted, then closes the engine.

A database that cannot be reached at start (refused, timed out, shutting down: see
:func:`cascade.ledger.failures.is_outage`) does not stop the start: rows go to the spool, and
the writer keeps trying (with backoff) to migrate, then replays. One that answers and refuses
(bad credentials, no such database, a URL it does not take), and an SQLite file that cannot be
opened, stop the start with a :class:`~cascade.errors.LedgerError` naming the database.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.errors import LedgerError
from cascade.ledger.database import check_sqlite_folder, create_engine
from cascade.ledger.failures import first_line, is_outage
from cascade.ledger.records import AttemptRecord, RequestRecord
from cascade.ledger.spool import adopt_spools as adopt
from cascade.ledger.store import ANY_TENANT, Ledger, Owner
from cascade.ledger.writer import LedgerWriter, WriterStats

_log = structlog.get_logger("cascade.ledger")


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

    async def mark_useless(self, request_id: str, *, tenant: Owner = ANY_TENANT) -> bool:
        """Record that a request's answer was of no use; False when the ledger has no such request
        (``tenant``: none of that tenant's; another tenant's request is answered the same way, by
        the same steps, as one that does not exist).

        A request answered a moment ago may still be on its way to the database: when the
        request is not found, everything submitted so far is flushed and it is looked up again.
        """
        if await self._ledger.mark_useless(request_id, tenant=tenant):
            return True
        await self._writer.flush()
        if self._writer.stats.in_spool:
            await self._writer.replay()  # journaled while the database was behind
        return await self._ledger.mark_useless(request_id, tenant=tenant)

    async def flush(self) -> None:
        """Wait until every row submitted so far is in the database or the spool."""
        await self._writer.flush()

    async def wait_until_drained(self) -> None:
        """Wait until every row submitted so far, and the spool's, is in the database."""
        await self._writer.wait_until_drained()

    @property
    def stats(self) -> WriterStats:
        """The write-behind writer's counters."""
        return self._writer.stats

    def degraded(self) -> str | None:
        """What is wrong with the ledger, for a readiness probe; None while rows reach the
        database. E.g. ``database unreachable since 2026-05-01T10:00:00+00:00, 42 requests
        spooled``."""
        since = self._writer.down_since
        if since is None:
            return None
        stats = self._writer.stats
        held = f", {stats.unsaved} held in memory" if stats.unsaved > stats.in_spool else ""
        return (
            f"database unreachable since {since.isoformat(timespec='seconds')}, "
            f"{stats.in_spool} requests spooled{held}"
        )

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
    into ``spool_path`` before the writer replays it. A Postgres server that cannot be reached
    starts the ledger spooling, migrated later in the background; one that refuses the
    connection or the migration stops the start (see the module's docstring).
    """
    engine = create_engine(url, connect_args=connect_args)
    ledger = Ledger(engine)
    try:
        prepare = await _migrate(engine) if migrate else None
        await asyncio.to_thread(adopt, adopt_spools, into=spool_path)
        writer = LedgerWriter(ledger, spool_path, prepare=prepare)
        await writer.start()  # replays what a previous run left in the spool
    except BaseException:
        await ledger.aclose()
        raise
    service = LedgerService(ledger, writer)
    try:
        yield service
    finally:
        await service.aclose()


async def _migrate(engine: AsyncEngine) -> Callable[[], Awaitable[None]] | None:
    """Migrate now; when Postgres is out of reach, the migration for the writer to retry."""
    # alembic takes a third of a second to import; workers that skip migrating skip it.
    from cascade.ledger.migrate import upgrade  # noqa: PLC0415

    where = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "sqlite":
        check_sqlite_folder(engine.url)
    try:
        await upgrade(engine)
    except Exception as exc:  # sorted: unreachable starts spooling, anything else stops the start
        if engine.dialect.name != "postgresql" or not is_outage(exc):
            raise LedgerError(f"database {where}: cannot migrate: {first_line(exc)}") from exc
        _log.warning(
            "ledger.database_unreachable_at_start",
            database=where,
            error=first_line(exc),
            spool="rows are spooled until it can be reached and migrated",
        )
        return lambda: upgrade(engine)
    return None
