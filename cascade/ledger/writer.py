"""Write-behind for the ledger: the request path hands rows over and never waits on a database.

:meth:`LedgerWriter.submit` only appends to memory. Two background tasks take it from there:

- the **database task** writes batches — when ``batch_size`` requests wait or the oldest has
  waited ``max_delay_s`` — each in one transaction, and replays the spool, in order, whenever it
  holds rows and the database answers;
- the **journal task** appends rows to the :class:`~cascade.ledger.spool.Spool` (``fsync``-ed)
  when they should not wait in memory: while the database is unreachable, each batch as it falls
  due; and whenever the rows only memory holds (waiting, or in a batch still being written) grow
  ``journal_after_s`` old or ``max_unsaved`` many, because the database has fallen behind.

The spool is the journal: what it holds survives a crash and is replayed. A ``kill -9`` loses
only the rows memory alone held, so at most those submitted in the last ``journal_after_s`` plus
the time of one spool append; and once ``max_unsaved`` wait, they are journaled at once.

When a write fails because the database is out of reach, the writer retries with exponential
backoff (from ``retry_initial_s`` to ``retry_max_s``) and rows go to the spool meanwhile. Rows the
database refuses are found one by one and quarantined (:mod:`cascade.ledger.quarantine`), so the
rest flow on. Inserts are idempotent: a spool replayed twice, or a batch both committed and
journaled, stores each row once.

Fail-safe policy: a row is dropped from memory only once the database, the spool or the
quarantine file holds it. If neither the database nor the spool can take rows, they stay in
memory, which :meth:`LedgerWriter.flush` and :meth:`LedgerWriter.aclose` report as a
:class:`~cascade.errors.LedgerError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from types import TracebackType

import structlog

from cascade.errors import LedgerError
from cascade.ledger.backlog import Backlog, Item
from cascade.ledger.failures import error_class, first_line
from cascade.ledger.journal import Journal
from cascade.ledger.journaling import Journaling
from cascade.ledger.quarantine import Quarantine, WriteResult, write_isolating
from cascade.ledger.records import AttemptRecord, LedgerEntry, RequestRecord
from cascade.ledger.spool import Spool
from cascade.ledger.store import Ledger

_log = structlog.get_logger("cascade.ledger")


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters since the writer was built (requests, not rows, unless said otherwise)."""

    submitted: int
    """Requests handed to :meth:`LedgerWriter.submit`."""
    written: int
    """Requests committed to the database, replayed ones included."""
    transactions: int
    """Database transactions committed (one per batch or replayed chunk)."""
    spooled: int
    """Requests appended to the spool (during outages, or journaled while the database lags)."""
    replayed: int
    """Requests replayed from the spool into the database."""
    in_spool: int
    """Requests waiting in the spool now."""
    quarantined: int = 0
    """Requests (each with its attempts) the database refused, now in the quarantine file."""
    unsaved: int = 0
    """Requests only memory holds now (a crash now would lose them)."""


class LedgerWriter(Journaling):
    """Batches ledger rows into the database off the request path, spooling them during outages.

    Use it as ``async with LedgerWriter(ledger, spool_path) as writer:`` or call :meth:`start`
    and :meth:`aclose` (e.g. in the app's lifespan). The writer does not close ``ledger``.
    ``prepare``: when given, the database was not ready at start (unreachable); the writer runs
    it (e.g. the migration) until it succeeds, before writing anything, and spools meanwhile.
    """

    def __init__(
        self,
        ledger: Ledger,
        spool_path: str | PathLike[str],
        *,
        batch_size: int = 200,
        max_delay_s: float = 0.1,
        journal_after_s: float = 0.2,
        max_unsaved: int = 1000,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 10.0,
        prepare: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1:
            raise LedgerError(f"batch_size: must be 1 or more, got {batch_size}")
        if max_unsaved < 1:
            raise LedgerError(f"max_unsaved: must be 1 or more, got {max_unsaved}")
        self.ledger = ledger
        self.spool = Spool(spool_path)
        self._journal = Journal(self.spool)
        self.quarantine = Quarantine(
            self.spool.path.with_name(self.spool.path.name + ".quarantine")
        )
        self._batch_size = batch_size
        self._max_delay_s = max_delay_s
        self._journal_after_s = journal_after_s
        self._max_unsaved = max_unsaved
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._prepare = prepare
        self._clock = clock
        self._backlog = Backlog()
        self._submitted = self._urgent_until = 0
        self._written = self._transactions = self._spooled = self._replayed = 0
        self._quarantined = 0
        self._backoff_s = self._spool_backoff_s = retry_initial_s
        self._retry_at = self._spool_retry_at = 0.0
        self._down_since = datetime.now(UTC) if prepare is not None else None
        self._spool_failure: LedgerError | None = None
        self._behind = False
        self._replaying = 0  # requests replayed since the spool was last empty
        self._database_wake = asyncio.Event()
        self._journal_wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._database_lock = asyncio.Lock()  # one database write at a time
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = self._database_done = False

    async def __aenter__(self) -> LedgerWriter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the background tasks; a spool left by an earlier run is replayed first."""
        if self._tasks:
            raise LedgerError("the ledger writer is already started")
        await self._journal.load()
        self._tasks = [
            asyncio.create_task(self._database_task(), name="cascade-ledger-database"),
            asyncio.create_task(self._journal_task(), name="cascade-ledger-journal"),
        ]

    def submit(self, request: RequestRecord, attempts: Sequence[AttemptRecord] = ()) -> None:
        """Hand one request and its attempts to the writer; returns at once, never blocks."""
        if self._closing:
            raise LedgerError(f"request {request.request_id!r}: the ledger writer is closed")
        pending = self._backlog.pending
        pending.append(Item(self._submitted, self._clock(), LedgerEntry(request, tuple(attempts))))
        self._submitted += 1
        if len(pending) == 1:
            self._database_wake.set()
            self._journal_wake.set()
        elif len(pending) >= self._batch_size:
            self._database_wake.set()
        if len(pending) + self._batch_size >= self._max_unsaved:  # the journal counts exactly
            self._journal_wake.set()

    async def flush(self) -> None:
        """Wait until everything submitted so far is in the database, the spool or quarantine."""
        self._require_started()
        target = self._submitted
        self._urgent_until = max(self._urgent_until, target)
        self._database_wake.set()
        self._journal_wake.set()
        async with self._changed:
            await self._changed.wait_for(lambda: self._saved_through(target) or self._stuck())
        if not self._saved_through(target) and self._spool_failure is not None:
            raise self._spool_failure

    async def replay(self) -> int:
        """Replay the spool into the database now; returns how many requests it replayed.

        Stops, keeping what is left in the spool, when the database is unreachable.
        """
        total = 0
        async with self._database_lock:
            while self._prepared() or await self._run_prepare():
                handled, more = await self._replay_chunk()
                total += handled
                if not more:
                    break
        return total

    async def wait_until_drained(self) -> None:
        """Wait until everything submitted so far is in the database (none left in the spool)."""
        self._require_started()
        await self.flush()
        async with self._changed:
            await self._changed.wait_for(lambda: not self._journal.dirty)

    async def aclose(self) -> None:
        """Write or spool everything submitted, then stop; raises if rows could not be kept."""
        if self._closing:
            return
        self._closing = True
        self._database_wake.set()
        self._journal_wake.set()
        for task in self._tasks:
            await task
        if unsaved := self._backlog.unsaved():
            raise LedgerError(
                f"{unsaved} ledger requests could be written neither to the database nor to "
                f"the spool {self.spool.path}: {self._spool_failure}"
            )

    @property
    def stats(self) -> WriterStats:
        """A snapshot of the writer's counters."""
        return WriterStats(
            submitted=self._submitted,
            written=self._written,
            transactions=self._transactions,
            spooled=self._spooled,
            replayed=self._replayed,
            in_spool=self._journal.waiting,
            quarantined=self._quarantined,
            unsaved=self._backlog.unsaved(),
        )

    @property
    def down_since(self) -> datetime | None:
        """Since when the database has been unreachable (UTC), or None while it answers."""
        return self._down_since

    def _require_started(self) -> None:
        if not self._tasks:
            raise LedgerError("the ledger writer is not started: call start() or use async with")

    def _saved_through(self, target: int) -> bool:
        first = self._backlog.first_unsaved_seq()
        return first is None or first >= target

    def _stuck(self) -> bool:
        return self._spool_failure is not None and self._down_since is not None

    def _prepared(self) -> bool:
        return self._prepare is None

    # The database task: prepare, replay the spool, write batches.

    async def _database_task(self) -> None:
        while True:
            await self._wait(self._database_wake, self._database_deadline())
            if self._closing and (
                self._down_since or not (self._backlog.pending or self._journal.dirty)
            ):
                break
            if self._clock() < self._retry_at:
                continue
            async with self._database_lock:
                if not self._prepared() and not await self._run_prepare():
                    continue
                if self._journal.dirty:
                    await self._replay_chunk()
                elif self._batch_due():
                    await self._write_batch()
        self._database_done = True
        self._journal_wake.set()

    def _database_deadline(self) -> float | None:
        if self._closing:
            return 0.0
        if self._journal.dirty or not self._prepared():
            return self._retry_at
        if not self._backlog.pending:
            return None
        if self._batch_due():
            return max(self._retry_at, 0.0) if self._down_since else 0.0
        return max(self._retry_at, self._backlog.pending[0].at + self._max_delay_s)

    def _batch_due(self) -> bool:
        pending = self._backlog.pending
        return bool(pending) and (
            self._closing
            or len(pending) >= self._batch_size
            or pending[0].seq < self._urgent_until
            or self._clock() - pending[0].at >= self._max_delay_s
        )

    async def _run_prepare(self) -> bool:
        assert self._prepare is not None
        try:
            await self._prepare()
        except Exception as exc:  # fail-safe: rows wait in the spool until it succeeds
            self._database_failed(exc)
            return False
        self._prepare = None
        _log.info("ledger.database_ready")
        self._database_back()
        return True

    async def _write_batch(self) -> None:
        batch = self._backlog.take(self._batch_size)
        self._journal_wake.set()  # its age counts toward journaling while it is written
        result = await write_isolating(self.ledger, self.quarantine, [i.entry for i in batch.items])
        self._backlog.writing = None
        batch.rest = batch.items[result.handled :]
        if batch.journaled or batch.journaling:
            # The spool holds these too: its replay skips the ones now in the database.
            self._journal.stored_meanwhile(
                [i.entry.request.request_id for i in batch.items[: result.handled]]
            )
        else:
            self._backlog.put_back(batch.rest)
        self._count(result)
        await self._notify()

    async def _replay_chunk(self) -> tuple[int, bool]:
        """Replay up to one batch from the spool, and empty the spool once all of it is in:
        (requests handled, whether more may follow)."""
        journal = self._journal
        try:
            todo, full = await journal.read(self._batch_size)
            result = await write_isolating(self.ledger, self.quarantine, todo)
            passed = journal.advance(todo, result.handled)
            self._replayed += result.written
            self._replaying += passed
            self._count(result)
            more = result.failure is None and (full or not await journal.clear_if_replayed())
        except LedgerError as exc:  # the spool cannot be read or emptied: try again later
            self._database_failed(exc)
            return 0, False
        if not journal.dirty:
            self._behind = False
            if self._replaying:
                _log.info(
                    "ledger.spool_replayed", requests=self._replaying, spool=str(self.spool.path)
                )
            self._replaying = 0
        await self._notify()
        return passed, more

    def _count(self, result: WriteResult) -> None:
        self._written += result.written
        self._transactions += result.transactions
        self._quarantined += result.quarantined
        if result.failure is not None:
            self._database_failed(result.failure)
        elif result.transactions or result.quarantined:
            self._database_back()

    def _database_back(self) -> None:
        if self._down_since is not None:
            _log.info("ledger.database_back", down_since=self._down_since.isoformat())
        self._down_since = None
        self._backoff_s = self._retry_initial_s
        self._retry_at = 0.0

    def _database_failed(self, exc: BaseException) -> None:
        _log.warning(
            "ledger.database_unavailable",
            error_class=error_class(exc),
            error=first_line(exc),
            retry_in_s=round(self._backoff_s, 3),
            spool=str(self.spool.path),
        )
        self._down_since = self._down_since or datetime.now(UTC)
        self._retry_at = self._clock() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._retry_max_s)
        self._journal_wake.set()  # waiting rows go to the spool as their batches fall due
