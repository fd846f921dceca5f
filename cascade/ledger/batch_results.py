"""The Batch API's results: a finished batch's output and error files, its request counts,
and a completed request's ledger rows (each in the caller's transaction).

Result lines are in OpenAI's format (:func:`cascade.ledger.batch_lines.result_line`); a request
that never ran (its batch expired or was cancelled) appears in the error file with
``response: null`` and an ``error`` saying why.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cascade.ledger.batch_lines import result_line
from cascade.ledger.models import Attempt, Batch, BatchFile, BatchRequest, Request
from cascade.ledger.records import LedgerEntry

FAILED = ("failed", "expired", "cancelled")
"""Request states counted as failed (they go to the error file)."""
END_STATUS = {"in_progress": "completed", "cancelling": "cancelled"}
"""A batch's final status by the status it ends from (``expired`` when any request expired)."""
_REQUESTS = cast("Table", Request.__table__)
_ATTEMPTS = cast("Table", Attempt.__table__)
_FILES = cast("Table", BatchFile.__table__)


def now() -> datetime:
    """The current time in UTC (the store's clock for leases and timestamps)."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A fresh public id (``file-…``, ``batch_…``)."""
    return prefix + secrets.token_hex(12)


async def finalize_batch(conn: AsyncConnection, batch_id: str, status: str) -> bool:
    """End one batch that has nothing left to run, in the caller's transaction: its output and
    error files, its final status. False when another replica got to it first."""
    at = now()
    moving = update(Batch).where(Batch.id == batch_id, Batch.status == status)
    if (await conn.execute(moving.values(status="finalizing", finalizing_at=at))).rowcount != 1:
        return False  # another replica finalizes it
    batch = (await conn.execute(select(Batch).where(Batch.id == batch_id))).one()
    rows = (
        await conn.execute(
            select(BatchRequest)
            .where(BatchRequest.batch_id == batch_id)
            .order_by(BatchRequest.line)
        )
    ).all()
    output, errors, expired = _result_files(rows)
    files: dict[str, str | None] = {}
    for name, lines in (("output", output), ("error", errors)):
        files[f"{name}_file_id"] = (
            await _add_result_file(conn, batch, name, lines) if lines else None
        )
    end = "expired" if expired and status == "in_progress" else END_STATUS[status]
    stamp = {"completed": "completed_at", "cancelled": "cancelled_at"}.get(end, "expired_at")
    await conn.execute(
        update(Batch).where(Batch.id == batch_id).values(status=end, **{stamp: now()}, **files)
    )
    return True


async def request_counts(conn: AsyncConnection, batch_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per batch: requests completed (done) and failed (failed, expired or cancelled)."""
    if not batch_ids:
        return {}
    query = (
        select(BatchRequest.batch_id, BatchRequest.status, func.count())
        .where(BatchRequest.batch_id.in_(batch_ids))
        .group_by(BatchRequest.batch_id, BatchRequest.status)
    )
    counts: dict[str, tuple[int, int]] = {}
    for batch_id, status, count in await conn.execute(query):
        done, failed = counts.get(batch_id, (0, 0))
        counts[batch_id] = (
            done + (count if status == "done" else 0),
            failed + (count if status in FAILED else 0),
        )
    return counts


_ERRORS = {
    "expired": ("batch_expired", "the batch's completion window ended before this request ran"),
    "cancelled": ("batch_cancelled", "the batch was cancelled before this request ran"),
}


def _result_files(rows: Any) -> tuple[list[bytes], list[bytes], bool]:
    """A batch's output lines (answered), error lines (failed, expired, cancelled), and whether
    any request expired."""
    output: list[bytes] = []
    errors: list[bytes] = []
    expired = False
    for row in rows:
        if row.status in _ERRORS:
            expired = expired or row.status == "expired"
            code, message = _ERRORS[row.status]
            line = result_line(
                row.id,
                row.custom_id,
                status_code=None,
                body=None,
                error={"code": code, "message": message},
            )
            errors.append(line)
            continue
        body = orjson.loads(row.response_body) if row.response_body else None
        line = result_line(row.id, row.custom_id, status_code=row.response_status, body=body)
        (output if row.status == "done" else errors).append(line)
    return output, errors, expired


async def _add_result_file(conn: AsyncConnection, batch: Any, name: str, lines: list[bytes]) -> str:
    content = b"\n".join(lines) + b"\n"
    file_id = new_id("file-")
    await conn.execute(
        insert(_FILES).values(
            id=file_id,
            tenant=batch.tenant,
            key_id=batch.key_id,
            purpose="batch_output",
            filename=f"{batch.id}_{name}.jsonl",
            bytes=len(content),
            created_at=now(),
            content=content,
        )
    )
    return file_id


async def record_entry(conn: AsyncConnection, entry: LedgerEntry) -> None:
    """The request's ledger rows, in the caller's transaction (a stored id is left alone)."""
    request = {f.name: getattr(entry.request, f.name) for f in dataclasses.fields(entry.request)}
    attempts = [
        {"request_id": entry.request.request_id}
        | {f.name: getattr(a, f.name) for f in dataclasses.fields(a)}
        for a in entry.attempts
    ]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(_REQUESTS).on_conflict_do_nothing(), [request])
    if attempts:
        await conn.execute(dialect.insert(_ATTEMPTS).on_conflict_do_nothing(), attempts)
