"""The ledger's database side: idempotent batch inserts, feedback, and reading a request back.

Every insert is ``INSERT … ON CONFLICT DO NOTHING`` on the request id (requests) and on
(request id, seq) (attempts), so a batch written twice — a spool replayed after a crash between
commit and truncation — is stored once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
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

    async def insert(self, entries: Sequence[LedgerEntry]) -> None:
        """Store requests and their attempts in one transaction; rows already there are kept."""
        if not entries:
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

    async def mark_useless(self, request_id: str) -> bool:
        """Record feedback that a request's answer was of no use; False if no such request.

        Idempotent: marking twice leaves the same row. Its useful tokens drop to 0, so the
        request's whole cost then counts against the other requests' useful tokens.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(Request)
                .where(Request.request_id == request_id)
                .values(useless=True, useful_tokens=0)
            )
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
