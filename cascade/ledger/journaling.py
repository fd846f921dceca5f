"""The writer's journal task: rows that should not wait in memory go to the spool.

Mixed into :class:`~cascade.ledger.writer.LedgerWriter` (whose docstring says when rows are
journaled and why); kept apart so that each half of the writer reads on its own. The attributes
below are the writer's, set in its constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog

from cascade.errors import LedgerError
from cascade.ledger.backlog import Backlog
from cascade.ledger.journal import Journal
from cascade.ledger.spool import Spool

_log = structlog.get_logger("cascade.ledger")


class Journaling:
    """The journal task, and the waiting and waking both of the writer's tasks share."""

    spool: Spool
    _backlog: Backlog
    _journal: Journal
    _clock: Callable[[], float]
    _journal_after_s: float
    _max_unsaved: int
    _max_delay_s: float
    _retry_initial_s: float
    _retry_max_s: float
    _down_since: datetime | None
    _database_done: bool
    _spool_failure: LedgerError | None
    _spool_backoff_s: float
    _spool_retry_at: float
    _spooled: int
    _behind: bool
    _journal_wake: asyncio.Event
    _database_wake: asyncio.Event
    _changed: asyncio.Condition

    def _batch_due(self) -> bool:
        raise NotImplementedError  # the writer's batching rule

    async def _journal_task(self) -> None:
        while True:
            await self._wait(self._journal_wake, self._journal_deadline())
            if self._database_done and not self._backlog.pending:
                break
            if self._clock() >= self._spool_retry_at or self._database_done:
                await self._append_unsaved()
            if self._database_done and self._spool_failure is not None:
                break  # aclose() reports the rows left in memory

    def _journal_deadline(self) -> float | None:
        if self._database_done:
            return 0.0
        deadlines = []
        if (oldest := self._backlog.oldest_unsaved_at()) is not None:
            deadlines.append(oldest + self._journal_after_s)
            if self._backlog.unsaved() >= self._max_unsaved:
                deadlines.append(0.0)
        if self._down_since and self._backlog.pending:
            due = self._batch_due()
            deadlines.append(0.0 if due else self._backlog.pending[0].at + self._max_delay_s)
        if not deadlines:
            return None
        return max(min(deadlines), self._spool_retry_at if self._spool_failure else 0.0)

    def _lagging(self) -> bool:
        oldest = self._backlog.oldest_unsaved_at()
        return oldest is not None and (
            self._clock() - oldest >= self._journal_after_s
            or self._backlog.unsaved() >= self._max_unsaved
        )

    async def _append_unsaved(self) -> None:
        lagging = self._lagging()
        if not (lagging or ((self._down_since or self._database_done) and self._batch_due())):
            return
        batch = self._backlog.writing if lagging and self._backlog.in_flight_unsaved() else None
        in_flight = batch.items if batch is not None else []
        pending, self._backlog.pending = self._backlog.pending, []
        if batch is not None:
            batch.journaling = True
        items = self._backlog.journaling = [*in_flight, *pending]
        try:
            await self._journal.append([item.entry for item in items])
        except LedgerError as exc:
            self._backlog.journaling = []
            self._backlog.put_back(pending)
            if batch is not None:
                batch.journaling = False
                self._backlog.put_back(batch.rest or [])
            self._spool_failed(exc, len(items))
        else:
            self._backlog.journaling = []
            if batch is not None:
                batch.journaling, batch.journaled = False, True
            self._spool_failure = None
            self._spool_backoff_s = self._retry_initial_s
            self._spooled += len(items)
            if lagging and not self._down_since and not self._behind:
                _log.info(
                    "ledger.database_behind", journaled=len(items), spool=str(self.spool.path)
                )
            self._behind = lagging and not self._down_since
            self._database_wake.set()
        await self._notify()

    def _spool_failed(self, exc: LedgerError, requests: int) -> None:
        _log.error("ledger.rows_held_in_memory", requests=requests, error=str(exc))
        self._spool_failure = exc
        self._spool_retry_at = self._clock() + self._spool_backoff_s
        self._spool_backoff_s = min(self._spool_backoff_s * 2, self._retry_max_s)

    async def _wait(self, wake: asyncio.Event, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        # A timeout is not a failure: a batch's delay or a retry's backoff ran out.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)
        wake.clear()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
