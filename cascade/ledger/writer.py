"""Write-behind for the ledger: the request path hands rows over and never waits on a database.

:meth:`LedgerWriter.submit` only appends to memory. One background task writes what was
submitted in batches — when ``batch_size`` requests are waiting or the oldest has waited
``max_delay_s`` — each batch in one transaction. When a write fails (database down, restarting,
timing out, or any other failure) the batch goes to the :class:`~cascade.ledger.spool.Spool`
instead, and every later batch follows it there so the order holds; the writer retries the
database with exponential backoff and, once it answers, replays the spool in order and empties
it. A spool left by a crashed process is replayed when the next writer starts. Inserts are
idempotent, so a replay that runs twice stores each row once.

Fail-safe policy: a row the database refuses is spooled rather than dropped, so it is kept even
when the cause is a bug; only if the spool cannot be written either do rows stay in memory, which
:meth:`LedgerWriter.flush` and :meth:`LedgerWriter.aclose` report as a :class:`LedgerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from types import TracebackType

import structlog

from cascade.errors import LedgerError
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
    """Requests appended to the spool."""
    replayed: int
    """Requests replayed from the spool into the database."""
    in_spool: int
    """Requests waiting in the spool now."""


class LedgerWriter:
    """Batches ledger rows into the database off the request path, spooling them during outages.

    Use it as ``async with LedgerWriter(ledger, spool_path) as writer:`` or call :meth:`start`
    and :meth:`aclose` (e.g. in the app's lifespan). The writer does not close ``ledger``.
    """

    def __init__(
        self,
        ledger: Ledger,
        spool_path: str | PathLike[str],
        *,
        batch_size: int = 200,
        max_delay_s: float = 0.1,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1:
            raise LedgerError(f"batch_size: must be 1 or more, got {batch_size}")
        self.ledger = ledger
        self.spool = Spool(spool_path)
        self._batch_size = batch_size
        self._max_delay_s = max_delay_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._clock = clock
        self._pending: list[LedgerEntry] = []
        self._pending_since = 0.0
        self._submitted = self._settled = self._urgent_until = 0
        self._written = self._transactions = self._spooled = self._replayed = 0
        self._in_spool = 0
        self._backoff_s = retry_initial_s
        self._retry_at = 0.0
        self._failure: LedgerError | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._io = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

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
        """Start the background task; a spool left by an earlier run is replayed first."""
        if self._task is not None:
            raise LedgerError("the ledger writer is already started")
        self._in_spool = len(await asyncio.to_thread(self.spool.read))
        self._task = asyncio.create_task(self._run(), name="cascade-ledger-writer")

    def submit(self, request: RequestRecord, attempts: Sequence[AttemptRecord] = ()) -> None:
        """Hand one request and its attempts to the writer; returns at once, never blocks."""
        if self._closing:
            raise LedgerError(f"request {request.request_id!r}: the ledger writer is closed")
        if not self._pending:
            self._pending_since = self._clock()
        self._pending.append(LedgerEntry(request, tuple(attempts)))
        self._submitted += 1
        if len(self._pending) == 1 or len(self._pending) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything submitted so far is in the database or the spool."""
        self._require_started()
        target = self._submitted
        self._urgent_until = max(self._urgent_until, target)
        self._wake.set()
        async with self._changed:
            await self._changed.wait_for(lambda: self._settled >= target or bool(self._failure))
        if self._settled < target and self._failure is not None:
            raise self._failure

    async def replay(self) -> int:
        """Replay the spool into the database now; returns how many requests it replayed.

        Returns 0 and keeps the spool when the database is still unreachable.
        """
        async with self._io:
            return await self._replay_spool()

    async def wait_until_drained(self) -> None:
        """Wait until everything submitted so far is in the database (none left in the spool)."""
        self._require_started()
        await self.flush()
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_spool == 0)

    async def aclose(self) -> None:
        """Write or spool everything submitted, then stop; raises if rows could not be kept."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._pending:
            raise LedgerError(
                f"{len(self._pending)} ledger requests could be written neither to the database "
                f"nor to the spool {self.spool.path}: {self._failure}"
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
            in_spool=self._in_spool,
        )

    def _require_started(self) -> None:
        if self._task is None:
            raise LedgerError("the ledger writer is not started: call start() or use async with")

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            async with self._io:
                if self._in_spool and self._clock() >= self._retry_at:
                    await self._replay_spool()
                while self._pending and self._batch_due():
                    batch = self._pending[: self._batch_size]
                    del self._pending[: self._batch_size]
                    self._pending_since = self._clock()
                    await self._store(batch)
            if self._closing and (not self._pending or self._failure):
                return

    async def _wait_for_work(self) -> None:
        now = self._clock()
        deadlines = []
        if self._pending:
            if self._batch_due():
                return
            deadlines.append(self._pending_since + self._max_delay_s)
        if self._in_spool or self._failure:
            deadlines.append(self._retry_at)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        # A timeout is not a failure: a batch's delay or a retry's backoff ran out.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _batch_due(self) -> bool:
        if self._failure is not None and self._clock() < self._retry_at:
            return False
        return (
            self._closing
            or len(self._pending) >= self._batch_size
            or self._settled < self._urgent_until
            or self._clock() - self._pending_since >= self._max_delay_s
        )

    async def _store(self, batch: list[LedgerEntry]) -> None:
        # Once anything is spooled, later batches follow it there: the spool replays in order.
        if not self._in_spool:
            try:
                await self.ledger.insert(batch)
            except Exception as exc:  # fail-safe: any refusal spools the batch, logged below
                self._database_failed(exc, len(batch))
            else:
                self._transactions += 1
                self._written += len(batch)
                await self._settle(len(batch))
                return
        try:
            await asyncio.to_thread(self.spool.append, batch)
        except LedgerError as exc:
            _log.error("ledger.rows_held_in_memory", requests=len(batch), error=str(exc))
            self._pending[:0] = batch  # keep them first in line for the next attempt
            self._failure = exc
            self._schedule_retry()
            await self._settle(0)
            return
        self._failure = None
        self._in_spool += len(batch)
        self._spooled += len(batch)
        await self._settle(len(batch))

    async def _replay_spool(self) -> int:
        entries = await asyncio.to_thread(self.spool.read)
        try:
            for start in range(0, len(entries), self._batch_size):
                await self.ledger.insert(entries[start : start + self._batch_size])
                self._transactions += 1
        except Exception as exc:  # fail-safe: the spool stays as it is until the next retry
            self._database_failed(exc, len(entries))
            return 0
        # Only now that every chunk is committed may the spool go; a crash before this line
        # replays it again, and the idempotent inserts store each row once.
        await asyncio.to_thread(self.spool.clear)
        self._in_spool = 0
        self._replayed += len(entries)
        self._written += len(entries)
        self._backoff_s = self._retry_initial_s
        if entries:
            _log.info("ledger.spool_replayed", requests=len(entries), spool=str(self.spool.path))
        await self._settle(0)
        return len(entries)

    def _database_failed(self, exc: Exception, requests: int) -> None:
        _log.warning(
            "ledger.database_unavailable",
            requests=requests,
            error_class=type(exc).__name__,
            error=str(exc).splitlines()[0] if str(exc) else "",
            retry_in_s=round(self._backoff_s, 3),
            spool=str(self.spool.path),
        )
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._retry_at = self._clock() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._retry_max_s)

    async def _settle(self, requests: int) -> None:
        self._settled += requests
        async with self._changed:
            self._changed.notify_all()
