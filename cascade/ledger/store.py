"""The ledger's database side: idempotent batch inserts, feedback, and reading a request back.

Every insert is ``INSERT … ON CONFLICT DO NOTHING`` on the request id (requests) and on
(request id, seq) (attempts), so a batch written twice — a spool replayed after a crash between
commit and truncation — is stored once.

On Postgres a batch travels as one statement on asyncpg's own connection: each column as an
array, unnested into both tables by ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (the attempts'
after the requests', in a data-modifying CTE). One round trip and no transaction to open and
commit: it measured as fast as ``COPY`` into staging tables, which takes six, and faster than
SQLAlchemy's multi-row ``INSERT`` (benchmarks/bench_ledger.py). SQLite, and
:meth:`Ledger.probe` with the row-by-row retries that follow it, use the plain ``INSERT``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, cast

from sqlalchemy import Insert, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cascade.ledger.models import Attempt, Request
from cascade.ledger.records import AttemptRecord, LedgerEntry, RequestRecord

_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(AttemptRecord))
_REQUESTS = cast("Table", Request.__table__)
_ATTEMPTS = cast("Table", Attempt.__table__)
_request_values = attrgetter(*_REQUEST_FIELDS)
_attempt_values = attrgetter(*_ATTEMPT_FIELDS)
_ATTEMPT_COLUMNS = ("request_id", *_ATTEMPT_FIELDS)


def _unnested_insert() -> str:
    """Both tables' rows in one statement, each column as an array: one round trip, atomic on
    its own (the data-modifying CTE inserts the requests before their attempts are checked)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy has no stubs here

    def arrays(table: Table, columns: Sequence[str], first: int) -> str:
        types = [table.c[name].type.compile(dialect=dialect) for name in columns]
        return ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(types))

    requests, attempts = ", ".join(_REQUEST_FIELDS), ", ".join(_ATTEMPT_COLUMNS)
    return (
        f"WITH stored AS (INSERT INTO requests ({requests}) "
        f"SELECT * FROM unnest({arrays(_REQUESTS, _REQUEST_FIELDS, 1)}) ON CONFLICT DO NOTHING) "
        f"INSERT INTO attempts ({attempts}) "
        f"SELECT * FROM unnest({arrays(_ATTEMPTS, _ATTEMPT_COLUMNS, len(_REQUEST_FIELDS) + 1)}) "
        "ON CONFLICT DO NOTHING"
    )


_UNNESTED_INSERT = _unnested_insert()


class _AnyTenant(enum.Enum):
    ANY = "any"


ANY_TENANT = _AnyTenant.ANY
"""For :meth:`Ledger.mark_useless`: a request of any tenant (or none)."""
Owner = str | None | _AnyTenant
"""Whose requests feedback may mark: one tenant's, those without a tenant (None), or any."""
_PROBE = LedgerEntry(
    RequestRecord(
        request_id="cascade-ledger-probe",
        policy="probe",
        policy_version="0",
        workload="probe",
        decision_reason="probe",
        status="ok",
        http_status=200,
        created_at=datetime(2000, 1, 1, tzinfo=UTC),
    ),
    (AttemptRecord(seq=0, tier="probe", model="probe", role="primary", outcome="ok"),),
)


class Ledger:
    """Reads and writes ledger rows through an async engine (which the caller owns)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def insert(self, entries: Sequence[LedgerEntry], *, arrays: bool = True) -> None:
        """Store requests and their attempts in one transaction; rows already there are kept.

        ``arrays``: on Postgres, send the rows as column arrays in one statement (False: by
        SQLAlchemy's plain ``INSERT``, as on SQLite).
        """
        if not entries:
            return
        if arrays and self.engine.dialect.name == "postgresql":
            await self._insert_unnested(entries)
            return
        requests = [_request_row(entry.request) for entry in entries]
        attempts = [
            _attempt_row(entry.request.request_id, attempt)
            for entry in entries
            for attempt in entry.attempts
        ]
        async with self.engine.begin() as conn:
            await conn.execute(_insert_ignoring_duplicates(conn, _REQUESTS), requests)
            if attempts:
                await conn.execute(_insert_ignoring_duplicates(conn, _ATTEMPTS), attempts)

    async def probe(self) -> None:
        """Insert a known-good request and attempt, then roll back: raises what the database
        raises when it cannot take rows at all (unreachable, tables missing), else nothing."""
        async with self.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                request = _request_row(_PROBE.request)
                await conn.execute(_insert_ignoring_duplicates(conn, _REQUESTS), [request])
                attempt = _attempt_row(_PROBE.request.request_id, _PROBE.attempts[0])
                await conn.execute(_insert_ignoring_duplicates(conn, _ATTEMPTS), [attempt])
            finally:
                await transaction.rollback()

    async def _insert_unnested(self, entries: Sequence[LedgerEntry]) -> None:
        requests = [_request_values(entry.request) for entry in entries]
        attempts = [
            (entry.request.request_id, *_attempt_values(attempt))
            for entry in entries
            for attempt in entry.attempts
        ]
        # One array per column: zip(*rows) turns rows into columns (empty when there are none).
        columns = [
            *(list(c) for c in zip(*requests, strict=True)),
            *(list(c) for c in zip(*attempts, strict=True)),
        ]
        if not attempts:
            columns += [[] for _ in _ATTEMPT_COLUMNS]
        async with self.engine.connect() as conn:
            pooled = await conn.get_raw_connection()
            driver: Any = pooled.driver_connection  # an asyncpg.Connection
            await driver.execute(_UNNESTED_INSERT, *columns)

    async def mark_useless(self, request_id: str, *, tenant: Owner = ANY_TENANT) -> bool:
        """Record feedback that a request's answer was of no use; False if no such request
        (or, with ``tenant``, none of that tenant's: another tenant's request looks unknown).

        Idempotent: marking twice leaves the same row. Its useful tokens drop to 0, so the
        request's whole cost then counts against the other requests' useful tokens.
        """
        query = update(Request).where(Request.request_id == request_id)
        if tenant is not ANY_TENANT:
            query = query.where(
                Request.tenant.is_(None) if tenant is None else Request.tenant == tenant
            )
        async with self.engine.begin() as conn:
            result = await conn.execute(query.values(useless=True, useful_tokens=0))
        return result.rowcount > 0

    async def fetch(self, request_id: str) -> LedgerEntry | None:
        """The stored request and its attempts (in seq order), or None if it is not stored."""
        async with self.engine.connect() as conn:
            request_row = (
                (await conn.execute(select(Request).where(Request.request_id == request_id)))
                .mappings()
                .first()
            )
            if request_row is None:
                return None
            attempt_rows = (
                (
                    await conn.execute(
                        select(Attempt)
                        .where(Attempt.request_id == request_id)
                        .order_by(Attempt.seq)
                    )
                )
                .mappings()
                .all()
            )
        request = RequestRecord(**{name: request_row[name] for name in _REQUEST_FIELDS})
        attempts = tuple(
            AttemptRecord(**{name: row[name] for name in _ATTEMPT_FIELDS}) for row in attempt_rows
        )
        return LedgerEntry(request, attempts)

    async def aclose(self) -> None:
        """Close the engine's pooled connections."""
        await self.engine.dispose()


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _request_row(record: RequestRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _REQUEST_FIELDS}


def _attempt_row(request_id: str, record: AttemptRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in _ATTEMPT_FIELDS}
    row["request_id"] = request_id
    return row
