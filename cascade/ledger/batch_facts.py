"""What ``cascade report``'s deferred-work section reads: the Batch API's jobs over a window.

A deferred request is recorded in the ledger under its batch request's own id (the runner's
``request_id``, :mod:`cascade.server.batch_runner`), so the ledger rows of a job are exactly the
requests whose ``request_id`` is one of its ``batch_requests`` ids: no marker of its own is
needed, and an interactive request can never be taken for a deferred one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.batch_results import request_counts
from cascade.ledger.database import run_with_engine
from cascade.ledger.models import Batch, BatchRequest

__all__ = ["BatchFacts", "JobFacts", "fetch_batches", "read_batches"]


@dataclass(frozen=True, slots=True)
class JobFacts:
    """One batch job as the report sees it."""

    batch_id: str
    tenant: str | None
    status: str
    """OpenAI's lifecycle: ``validating``, ``in_progress``, ``finalizing``, ``completed``,
    ``expired``, ``cancelling``, ``cancelled``."""
    total: int
    completed: int
    failed: int
    """Requests failed, expired or cancelled."""
    created_at: datetime
    expires_at: datetime
    """The deadline: the end of the completion window."""
    ended_at: datetime | None
    """When it completed, expired or was cancelled (None: still running)."""


@dataclass(frozen=True, slots=True)
class BatchFacts:
    """The window's jobs, oldest first, and which ledger request belongs to which job."""

    jobs: tuple[JobFacts, ...]
    request_batch: dict[str, str]
    """Ledger ``request_id`` (the batch request's id) → its batch id."""


async def fetch_batches(engine: AsyncEngine, since: datetime | None) -> BatchFacts:
    """The jobs created in the window or with their deadline in it (all: ``since`` None), with
    their request counts and the ids of their requests: three queries."""
    query = select(Batch).order_by(Batch.created_at, Batch.id)
    if since is not None:
        query = query.where(or_(Batch.created_at >= since, Batch.expires_at >= since))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        ids = [row.id for row in rows]
        counts = await request_counts(conn, ids)
        members = (
            (
                await conn.execute(
                    select(BatchRequest.id, BatchRequest.batch_id).where(
                        BatchRequest.batch_id.in_(ids)
                    )
                )
            ).all()
            if ids
            else []
        )
    jobs = tuple(
        JobFacts(
            batch_id=row.id,
            tenant=row.tenant,
            status=row.status,
            total=row.total,
            completed=counts.get(row.id, (0, 0))[0],
            failed=counts.get(row.id, (0, 0))[1],
            created_at=row.created_at,
            expires_at=row.expires_at,
            ended_at=row.completed_at or row.expired_at or row.cancelled_at,
        )
        for row in rows
    )
    return BatchFacts(jobs, {str(r.id): str(r.batch_id) for r in members})


def read_batches(url: str | None, since: datetime | None) -> BatchFacts:
    """:func:`fetch_batches` for a synchronous caller (the CLI), on an engine of its own."""
    return run_with_engine(url, lambda engine: fetch_batches(engine, since), existing=True)
