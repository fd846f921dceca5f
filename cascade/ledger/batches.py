"""The Batch API's durable state: files, batch jobs and their requests (all its SQL).

Replicas share a job's requests through leases: :meth:`BatchStore.claim` takes up to N requests
that are queued, or claimed under a lease that has lapsed (its replica died), and marks them
claimed by the caller until ``now + lease``. On Postgres the candidates are locked with ``FOR
UPDATE SKIP LOCKED``, so two replicas claiming at once never get the same row; SQLite serializes
writers, so its single ``UPDATE … RETURNING`` is atomic. :meth:`BatchStore.complete` stores a
request's result and its ledger rows in one transaction, and only while the request is still
claimed: a request is completed once and recorded once, whoever ran it (its id is its
``request_id`` in the ledger, so even a replayed insert is ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import Table, and_, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.batch_lines import BatchLine
from cascade.ledger.batch_results import (
    END_STATUS,
    finalize_batch,
    new_id,
    now,
    record_entry,
    request_counts,
)
from cascade.ledger.models import Batch, BatchFile, BatchRequest
from cascade.ledger.records import LedgerEntry
from cascade.ledger.store import ANY_TENANT, Owner

OPEN = ("queued", "claimed")
"""Request states that keep a batch from finishing."""
_FILES = cast("Table", BatchFile.__table__)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A stored file, without its content."""

    id: str
    purpose: str
    filename: str
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch job and its request counts (``completed``, ``failed``, ``total``)."""

    row: Any
    """The ``batches`` row (its columns as attributes)."""
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A request a runner holds: what it needs to run and record it."""

    id: str
    batch_id: str
    body: dict[str, Any]
    tenant: str | None
    key_id: str | None
    only_tiers: frozenset[str] | None
    attempts: int
    """Times it has been claimed, this one included (a claim given back unrun does not count)."""
    expires_at: datetime


class BatchStore:
    """Reads and writes the Batch API's tables through an async engine (which it owns)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def aclose(self) -> None:
        """Close the engine's pooled connections."""
        await self.engine.dispose()

    async def add_file(
        self, content: bytes, *, purpose: str, filename: str, tenant: str | None, key_id: str | None
    ) -> FileInfo:
        """Store a file; its id is new."""
        file_id, created = new_id("file-"), now()
        row = {
            "id": file_id,
            "tenant": tenant,
            "key_id": key_id,
            "purpose": purpose,
            "filename": filename,
            "bytes": len(content),
            "created_at": created,
            "content": content,
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(_FILES).values(**row))
        return FileInfo(file_id, purpose, filename, len(content), created)

    async def file(self, file_id: str, tenant: Owner) -> FileInfo | None:
        """A file of ``tenant``'s (another tenant's looks like none)."""
        columns = (BatchFile.id, BatchFile.purpose, BatchFile.filename, BatchFile.size)
        query = select(*columns, BatchFile.created_at).where(BatchFile.id == file_id)
        async with self.engine.connect() as conn:
            found = (await conn.execute(_owned(query, BatchFile.tenant, tenant))).first()
        return None if found is None else FileInfo(*found)

    async def content(self, file_id: str, tenant: Owner) -> bytes | None:
        """A file's bytes (None: no such file of ``tenant``'s)."""
        query = _owned(
            select(BatchFile.content).where(BatchFile.id == file_id), BatchFile.tenant, tenant
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def delete_file(self, file_id: str, tenant: Owner) -> bool:
        """Delete a file; False when ``tenant`` has no such file."""
        query = _owned(delete(BatchFile).where(BatchFile.id == file_id), BatchFile.tenant, tenant)
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount > 0

    async def create_batch(
        self,
        lines: Sequence[BatchLine],
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        window: timedelta,
        metadata: dict[str, str] | None,
        tenant: str | None,
        key_id: str | None,
        only_tiers: frozenset[str] | None,
    ) -> BatchInfo:
        """Queue a batch of valid lines (in progress at once: they were checked already)."""
        created = now()
        batch_id = new_id("batch_")
        row = {
            "id": batch_id,
            "tenant": tenant,
            "key_id": key_id,
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
            "status": "in_progress",
            "metadata_json": None if metadata is None else orjson.dumps(metadata).decode(),
            "only_tiers": None if only_tiers is None else ",".join(sorted(only_tiers)),
            "total": len(lines),
            "created_at": created,
            "expires_at": created + window,
            "in_progress_at": created,
        }
        requests = [
            {
                "id": f"{batch_id}-{line.line}",
                "batch_id": batch_id,
                "line": line.line,
                "custom_id": line.custom_id,
                "body": orjson.dumps(line.body).decode(),
                "status": "queued",
                "attempts": 0,
            }
            for line in lines
        ]
        async with self.engine.begin() as conn:
            await conn.execute(insert(Batch).values(**row))
            await conn.execute(insert(BatchRequest), requests)
        found = await self.batch(batch_id, ANY_TENANT)
        assert found is not None
        return found

    async def batch(self, batch_id: str, tenant: Owner) -> BatchInfo | None:
        """A batch of ``tenant``'s with its counts (another tenant's looks like none)."""
        found = await self.batches(tenant, ids=(batch_id,))
        return found[0] if found else None

    async def batches(
        self,
        tenant: Owner,
        *,
        limit: int = 20,
        after: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[BatchInfo]:
        """``tenant``'s batches, newest first (``after``: those older than that batch)."""
        query = _owned(select(Batch), Batch.tenant, tenant)
        if ids is not None:
            query = query.where(Batch.id.in_(ids))
        if after is not None:
            older = select(Batch.created_at).where(Batch.id == after).scalar_subquery()
            query = query.where(
                or_(Batch.created_at < older, and_(Batch.created_at == older, Batch.id < after))
            )
        query = query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(query)).all())
            counts = await request_counts(conn, [row.id for row in rows])
        return [BatchInfo(row, *counts.get(row.id, (0, 0))) for row in rows]

    async def cancel(self, batch_id: str, tenant: Owner) -> BatchInfo | None:
        """Stop a batch: its queued requests are cancelled, those running finish; the runner's
        :meth:`finalize` then ends it as ``cancelled``. Cancelling twice changes nothing."""
        async with self.engine.begin() as conn:
            starting = _owned(
                update(Batch).where(Batch.id == batch_id, Batch.status == "in_progress"),
                Batch.tenant,
                tenant,
            )
            moved = await conn.execute(starting.values(status="cancelling", cancelling_at=now()))
            if moved.rowcount:
                await conn.execute(
                    update(BatchRequest)
                    .where(BatchRequest.batch_id == batch_id, BatchRequest.status == "queued")
                    .values(status="cancelled")
                )
        return await self.batch(batch_id, tenant)

    async def claim(
        self, worker: str, count: int, lease: timedelta, *, expiring_within: timedelta | None = None
    ) -> list[Claimed]:
        """Take up to ``count`` runnable requests of in-progress batches, oldest batch first,
        under a lease until ``now + lease``: queued ones (whose retry delay has passed), or
        claimed ones whose lease lapsed. ``expiring_within``: only batches whose deadline is
        at most that far away."""
        if count <= 0:
            return []
        at = now()
        due = Batch.expires_at > at
        if expiring_within is not None:
            due = and_(due, Batch.expires_at <= at + expiring_within)
        runnable = (
            select(BatchRequest.id)
            .join(Batch, Batch.id == BatchRequest.batch_id)
            .where(
                Batch.status == "in_progress",
                due,
                BatchRequest.status.in_(OPEN),
                # claimed: its lease lapsed; queued: its retry's backoff, when it has one, passed
                or_(BatchRequest.claimed_until.is_(None), BatchRequest.claimed_until < at),
            )
            .order_by(Batch.created_at, BatchRequest.line)
            .limit(count)
            .with_for_update(of=BatchRequest, skip_locked=True)
        )
        taking = (
            update(BatchRequest)
            .where(BatchRequest.id.in_(runnable.scalar_subquery()))
            .values(
                status="claimed",
                claimed_by=worker,
                claimed_until=at + lease,
                attempts=BatchRequest.attempts + 1,
            )
            .returning(
                BatchRequest.id, BatchRequest.batch_id, BatchRequest.body, BatchRequest.attempts
            )
        )
        async with self.engine.begin() as conn:
            taken = (await conn.execute(taking)).all()
            if not taken:
                return []
            batch_ids = {row.batch_id for row in taken}
            owners = await conn.execute(
                select(
                    Batch.id, Batch.tenant, Batch.key_id, Batch.only_tiers, Batch.expires_at
                ).where(Batch.id.in_(batch_ids))
            )
            by_batch = {row.id: row for row in owners}
        return [_claimed(row, by_batch[row.batch_id]) for row in taken]

    async def renew(self, worker: str, request_ids: Sequence[str], lease: timedelta) -> None:
        """Extend the lease of requests ``worker`` still holds (while it runs them)."""
        if request_ids:
            async with self.engine.begin() as conn:
                await conn.execute(_held(worker, request_ids).values(claimed_until=now() + lease))

    async def release(self, worker: str, request_ids: Sequence[str]) -> None:
        """Give requests back to the queue unrun (a clean shutdown), for any replica to take."""
        if request_ids:
            async with self.engine.begin() as conn:
                await conn.execute(
                    _held(worker, request_ids).values(
                        status="queued", claimed_by=None, claimed_until=None
                    )
                )

    async def requeue(
        self, worker: str, request_id: str, *, delay: timedelta, counted: bool
    ) -> None:
        """Give a request back to the queue, to be claimed again no sooner than ``delay`` from
        now (a retry's backoff); ``counted`` False: this claim does not count as an attempt
        (the request yielded to interactive traffic, nothing failed)."""
        attempts = BatchRequest.attempts - (0 if counted else 1)
        async with self.engine.begin() as conn:
            await conn.execute(
                _held(worker, [request_id]).values(
                    status="queued", claimed_by=None, claimed_until=now() + delay, attempts=attempts
                )
            )

    async def complete(
        self,
        request_id: str,
        *,
        ok: bool,
        status_code: int,
        body: Any,
        entry: LedgerEntry | None,
    ) -> bool:
        """Store a request's result and its ledger rows, once: False (nothing stored) when it
        is no longer claimed, because another runner completed it first."""
        async with self.engine.begin() as conn:
            stored = await conn.execute(
                update(BatchRequest)
                .where(BatchRequest.id == request_id, BatchRequest.status == "claimed")
                .values(
                    status="done" if ok else "failed",
                    response_status=status_code,
                    response_body=orjson.dumps(body).decode(),
                    claimed_until=None,
                )
            )
            if stored.rowcount != 1:
                return False
            if entry is not None:
                await record_entry(conn, entry)
        return True

    async def sweep(self) -> None:
        """Expire what a batch past its deadline has not run, and cancel the lapsed claims of
        cancelling batches (their runner died); running requests are left to finish."""
        at = now()
        unrun = or_(
            BatchRequest.status == "queued",
            and_(BatchRequest.status == "claimed", BatchRequest.claimed_until < at),
        )
        expired = select(Batch.id).where(Batch.status == "in_progress", Batch.expires_at <= at)
        cancelling = select(Batch.id).where(Batch.status == "cancelling")
        async with self.engine.begin() as conn:
            for batches, status in ((expired, "expired"), (cancelling, "cancelled")):
                await conn.execute(
                    update(BatchRequest)
                    .where(BatchRequest.batch_id.in_(batches.scalar_subquery()), unrun)
                    .values(status=status, claimed_until=None)
                )

    async def finalize(self) -> list[str]:
        """End every batch with no request left to run: write its output and error files and
        set its final status. Returns the ids it ended (each ends in one transaction, once)."""
        pending = exists().where(BatchRequest.batch_id == Batch.id, BatchRequest.status.in_(OPEN))
        ready = select(Batch.id, Batch.status).where(Batch.status.in_(tuple(END_STATUS)), ~pending)
        async with self.engine.connect() as conn:
            candidates = (await conn.execute(ready)).all()
        ended = []
        for row in candidates:
            async with self.engine.begin() as conn:
                if await finalize_batch(conn, row.id, row.status):
                    ended.append(row.id)
        return ended


def _owned(query: Any, column: Any, tenant: Owner) -> Any:
    """``query`` narrowed to ``tenant``'s rows (ANY_TENANT: everyone's)."""
    if tenant is ANY_TENANT:
        return query
    return query.where(column.is_(None) if tenant is None else column == tenant)


def _held(worker: str, request_ids: Sequence[str]) -> Any:
    return update(BatchRequest).where(
        BatchRequest.id.in_(request_ids),
        BatchRequest.status == "claimed",
        BatchRequest.claimed_by == worker,
    )


def _claimed(row: Any, batch: Any) -> Claimed:
    tiers = (
        None if batch.only_tiers is None else frozenset(filter(None, batch.only_tiers.split(",")))
    )
    return Claimed(
        row.id,
        row.batch_id,
        orjson.loads(row.body),
        batch.tenant,
        batch.key_id,
        tiers,
        row.attempts,
        batch.expires_at,
    )
