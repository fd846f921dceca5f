"""The cost ledger: one row per request and one per tier call, written off the request path.

A server opens it in its lifespan, never at import, through one entry point::

    async with open_ledger(url, spool_path="cascade-ledger.spool") as ledger:
        ledger.submit(request_record, attempt_records)   # never blocks
        await ledger.mark_useless(request_id)            # feedback

:func:`open_ledger` migrates the schema, adopts orphaned spools and starts the write-behind
writer; leaving the block flushes every row to the database or the spool. ``cascade db`` and the
reports reach the database through :mod:`cascade.ledger.migrate` and
:mod:`cascade.ledger.queries`; :class:`Ledger` and :class:`LedgerWriter` are the parts the
service is built from.
"""

from __future__ import annotations

from cascade.errors import LedgerError
from cascade.ledger.database import DATABASE_URL_ENV, create_engine, database_url
from cascade.ledger.records import AttemptRecord, LedgerEntry, RequestRecord
from cascade.ledger.service import LedgerService, open_ledger
from cascade.ledger.store import Ledger
from cascade.ledger.writer import LedgerWriter, WriterStats

__all__ = [
    "DATABASE_URL_ENV",
    "AttemptRecord",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "LedgerService",
    "LedgerWriter",
    "RequestRecord",
    "WriterStats",
    "create_engine",
    "database_url",
    "open_ledger",
]
