"""The local spool: where ledger rows wait while the database is unreachable.

An append-only file of JSON lines, one line per request with its attempts, money as decimal
text and times in ISO 8601. Every append is flushed and ``fsync``-ed before it returns, so what
the writer has spooled survives a crash of the process or the machine. The spool is emptied
only after its rows are committed to the database; a crash in between replays them again, which
the ledger's idempotent inserts absorb.

A line that cannot be read back (a torn last line from a crash mid-append, or a damaged file)
is moved to ``<spool>.rejected`` with a log line, never silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import structlog

from cascade.errors import LedgerError
from cascade.ledger.records import AttemptRecord, LedgerEntry, RequestRecord

_log = structlog.get_logger("cascade.ledger")


class Spool:
    """An append-only, fsync-ed JSON-lines file of ledger entries (blocking file I/O)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")

    def append(self, entries: list[LedgerEntry]) -> None:
        """Append entries durably: they are on disk when this returns."""
        if not entries:
            return
        data = "".join(encode_entry(entry) + "\n" for entry in entries).encode()
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as file:
                # A crash mid-append can leave a torn last line; start on a fresh line so the
                # torn part never swallows a good entry.
                if file.seek(0, os.SEEK_END) > 0:
                    file.seek(-1, os.SEEK_END)
                    if file.read(1) != b"\n":
                        data = b"\n" + data
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if created:
                _fsync_directory(self.path.parent)
        except OSError as exc:
            raise LedgerError(
                f"cannot write the ledger spool {self.path}: {exc}; the rows are still in memory"
            ) from exc

    def read(self) -> list[LedgerEntry]:
        """Every entry in the spool, in the order it was appended."""
        try:
            with self.path.open("rb") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger spool {self.path}: {exc}") from exc
        entries: list[LedgerEntry] = []
        rejected: list[bytes] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entries.append(decode_entry(line.decode()))
            except (ValueError, KeyError, TypeError, InvalidOperation, LedgerError) as exc:
                _log.error(
                    "ledger.spool_line_rejected",
                    spool=str(self.path),
                    line=number,
                    error=str(exc),
                    moved_to=str(self.rejected_path),
                )
                rejected.append(line)
        if rejected:
            # Keep unreadable lines for a person to look at, and take them out of the spool so
            # the next read neither reports nor keeps them twice.
            _append_lines(self.rejected_path, rejected)
            _replace_lines(self.path, [encode_entry(entry).encode() for entry in entries])
        return entries

    def read_from(self, offset: int, limit: int) -> tuple[list[tuple[LedgerEntry, int]], int]:
        """Up to ``limit`` entries from byte ``offset`` on, each with the offset just past its
        line, and the offset just past the last line read (which counts unreadable lines too).

        Unreadable lines, a torn last one included, are copied to ``<spool>.rejected`` and
        skipped (the spool itself is only rewritten by :meth:`read`).
        """
        entries: list[tuple[LedgerEntry, int]] = []
        rejected: list[bytes] = []
        try:
            with self.path.open("rb") as file:
                file.seek(offset)
                while len(entries) < limit:
                    line = file.readline()
                    if not line:
                        break
                    # Appends hold the writer's lock and write whole lines: a line without its
                    # newline was torn by a crash, and is rejected below like any bad line.
                    offset += len(line)
                    if not line.strip():
                        continue
                    try:
                        entries.append((decode_entry(line.decode()), offset))
                    except (ValueError, KeyError, TypeError, InvalidOperation, LedgerError) as exc:
                        _log.error(
                            "ledger.spool_line_rejected",
                            spool=str(self.path),
                            offset=offset - len(line),
                            error=str(exc),
                            moved_to=str(self.rejected_path),
                        )
                        rejected.append(line.rstrip(b"\n"))
        except FileNotFoundError:
            return [], offset
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger spool {self.path}: {exc}") from exc
        if rejected:
            _append_lines(self.rejected_path, rejected)
        return entries, offset

    def clear(self, *, if_size: int | None = None) -> bool:
        """Empty the spool (call only once its entries are committed); with ``if_size``, only
        if the file is still that long (nothing was appended since). True when emptied."""
        try:
            with self.path.open("r+b") as file:
                if if_size is not None and os.fstat(file.fileno()).st_size != if_size:
                    return False
                file.truncate(0)
                file.flush()
                os.fsync(file.fileno())
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise LedgerError(f"cannot empty the ledger spool {self.path}: {exc}") from exc
        return True


def adopt_spools(paths: Sequence[str | os.PathLike[str]], *, into: str | os.PathLike[str]) -> int:
    """Move the entries of other spool files into ``into`` (then delete them); returns how many.

    For a worker taking over the spools of processes that no longer run. Appended before the
    old file is deleted: a crash in between replays an entry twice, which the ledger absorbs.
    """
    target = Spool(into)
    moved = 0
    for path in paths:
        source = Spool(path)
        if Path(path).resolve() == target.path.resolve() or not source.path.exists():
            continue
        entries = source.read()
        target.append(entries)
        source.path.unlink()
        moved += len(entries)
        _log.info(
            "ledger.spool_adopted", spool=str(source.path), into=str(target.path), rows=len(entries)
        )
    return moved


def _append_lines(path: Path, lines: list[bytes]) -> None:
    with path.open("ab") as file:
        file.write(b"".join(line + b"\n" for line in lines))
        file.flush()
        os.fsync(file.fileno())


def _replace_lines(path: Path, lines: list[bytes]) -> None:
    # Write-then-rename: a crash leaves either the old spool or the new one, never half of each.
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(b"".join(line + b"\n" for line in lines))
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    _fsync_directory(path.parent)


def encode_entry(entry: LedgerEntry) -> str:
    """One spool line (without its newline) for an entry."""
    return json.dumps(
        {
            "request": _encode(asdict(entry.request)),
            "attempts": [_encode(asdict(attempt)) for attempt in entry.attempts],
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode_entry(line: str) -> LedgerEntry:
    """The entry a spool line holds."""
    data = json.loads(line)
    request = _decode(data["request"])
    request["cost_usd"] = Decimal(request["cost_usd"])
    request["created_at"] = datetime.fromisoformat(request["created_at"])
    attempts = []
    for raw in data["attempts"]:
        attempt = _decode(raw)
        attempt["cost_usd"] = Decimal(attempt["cost_usd"])
        attempts.append(AttemptRecord(**attempt))
    return LedgerEntry(RequestRecord(**request), tuple(attempts))


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        key: str(value)
        if isinstance(value, Decimal)
        else value.isoformat()
        if isinstance(value, datetime)
        else value
        for key, value in fields.items()
    }


def _decode(fields: Any) -> dict[str, Any]:
    if not isinstance(fields, dict):
        raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
    return dict(fields)


def _fsync_directory(directory: Path) -> None:
    # A new file's directory entry is durable only once the directory itself is synced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
