"""The cost ledger: one row per request and one per tier call, written off the request path.

Build it in the app's lifespan, never at import::

    engine = create_engine()                       # CASCADE_DATABASE_URL, else ./cascade.db
    ledger = Ledger(engine)
    async with LedgerWriter(ledger, "cascade-ledger.spool") as writer:
        writer.submit(request_record, attempt_records)   # never blocks
    await ledger.aclose()
"""

from __future__ import annotations

from cascade.errors import LedgerError
from cascade.ledger.database import DATABASE_URL_ENV, create_engine, database_url
from cascade.ledger.records import AttemptRecord, LedgerEntry, RequestRecord
from cascade.ledger.store import Ledger
from cascade.ledger.writer import LedgerWriter, WriterStats

__all__ = [
    "DATABASE_URL_ENV",
    "AttemptRecord",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "LedgerWriter",
    "RequestRecord",
    "WriterStats",
    "create_engine",
    "database_url",
]
