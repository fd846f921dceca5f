"""Rows the database refuses: found one by one, and kept in a file beside the spool for people.

:func:`write_isolating` writes a batch; when the database refuses it for a reason other than an
outage (:mod:`cascade.ledger.failures`) but takes a known-good row, the batch is written again one
entry at a time, and each entry still refused goes to the :class:`Quarantine` — so one bad row
never holds up the others, and a replay of the spool never fails on it forever.

One line per refused request (shown on two here), its entry in the spool's encoding::

    {"quarantined_at": "2026-…", "error_class": "CharacterNotInRepertoireError",
     "error": "invalid byte sequence for encoding \"UTF8\": 0x00", "entry": {…}}

The file is only appended to (and ``fsync``-ed); the writer never reads it back. Once the cause
is fixed, its entries can be replayed by hand (each line's ``entry`` is a spool line).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from cascade.errors import LedgerError
from cascade.ledger.failures import error_class, first_line, is_outage
from cascade.ledger.records import LedgerEntry
from cascade.ledger.spool import encode_entry
from cascade.ledger.store import Ledger

_log = structlog.get_logger("cascade.ledger")


class Quarantine:
    """An append-only, fsync-ed JSON-lines file of refused ledger entries (blocking file I/O)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, refused: Sequence[tuple[LedgerEntry, BaseException]]) -> None:
        """Append each entry with the error it was refused with; on disk when this returns."""
        if not refused:
            return
        now = json.dumps(datetime.now(UTC).isoformat())
        lines = [
            f'{{"quarantined_at":{now},"error_class":{json.dumps(error_class(error))},'
            f'"error":{json.dumps(first_line(error))},"entry":{encode_entry(entry)}}}\n'
            for entry, error in refused
        ]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as file:
                file.write("".join(lines).encode())
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            raise LedgerError(f"cannot write the ledger quarantine {self.path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What :func:`write_isolating` did with a list of entries."""

    handled: int
    """How many entries, from the first, were written or quarantined (all, unless ``failure``)."""
    written: int
    """Entries committed (rows the database already had count too)."""
    quarantined: int
    """Entries the database refused, now in the quarantine file."""
    transactions: int
    """Transactions committed."""
    failure: BaseException | None = None
    """Why the entries from ``handled`` on are still to be written (the database is out of
    reach, or the quarantine file cannot be written); None when all were handled."""


async def write_isolating(
    ledger: Ledger, quarantine: Quarantine, entries: Sequence[LedgerEntry]
) -> WriteResult:
    """Write ``entries`` in one transaction; if the database refuses them while it still takes a
    known-good row, write them one by one and quarantine each entry it refuses.

    Never raises for a database error: an outage, or a database that refuses even the known-good
    row (tables missing), comes back as ``failure`` with the entries not yet handled.
    """
    if not entries:
        return WriteResult(0, 0, 0, 0)
    try:
        await ledger.insert(entries)
    except Exception as exc:  # sorted below: an outage, or rows the database refuses
        if is_outage(exc):
            return WriteResult(0, 0, 0, 0, exc)
        try:
            await ledger.probe()
        except Exception as probe_error:  # the database itself cannot take rows now
            return WriteResult(0, 0, 0, 0, probe_error)
    else:
        return WriteResult(len(entries), len(entries), 0, 1)
    written = 0
    refused: list[tuple[LedgerEntry, BaseException]] = []
    failure: BaseException | None = None
    for entry in entries:
        try:
            await ledger.insert([entry], arrays=False)  # the path the probe checked
        except Exception as exc:  # fail-safe: an outage stops here, anything else is the row's
            if is_outage(exc):
                failure = exc
                break
            refused.append((entry, exc))
        else:
            written += 1
    handled = written + len(refused)
    try:
        await asyncio.to_thread(quarantine.append, refused)
    except LedgerError as exc:
        # Kept for the next try: the entries from the first refused one on are written again
        # (idempotent) and refused again.
        first = entries.index(refused[0][0])
        return WriteResult(first, written, 0, written, exc)
    for entry, error in refused:
        _log.error(
            "ledger.row_quarantined",
            request_id=entry.request.request_id,
            error_class=error_class(error),
            quarantine=str(quarantine.path),
        )
    return WriteResult(handled, written, len(refused), written, failure)
