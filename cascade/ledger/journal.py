"""The spool as the writer uses it: the journal that survives a crash, and a cursor to replay it.

Appends and reads run one at a time, in a worker thread (they ``fsync``). A replay reads from
:attr:`Journal.offset` and moves it on as entries reach the database; the file is emptied only
when the replay has reached its end and nothing was appended since, so an append never races a
truncation. A request the writer already stored directly (its batch was journaled while it was
being written) is remembered, and the replay skips it.
"""

from __future__ import annotations

import asyncio

from cascade.ledger.records import LedgerEntry
from cascade.ledger.spool import Spool


class Journal:
    """Appends to a spool and replays it from where the last replay stopped."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.offset = 0
        """Byte offset of the first entry not yet replayed."""
        self.waiting = 0
        """Requests in the spool not yet replayed (as far as this process knows)."""
        self.dirty = False
        """Whether the spool may hold entries not yet replayed."""
        self._done: set[str] = set()
        self._lock = asyncio.Lock()
        self._read: list[tuple[LedgerEntry, int]] = []  # the last read: entries, offsets past
        self._end = 0

    async def load(self) -> None:
        """Count what an earlier process left (setting aside lines a crash tore)."""
        async with self._lock:
            self.waiting = len(await asyncio.to_thread(self.spool.read))
        self.dirty = self.waiting > 0

    async def append(self, entries: list[LedgerEntry]) -> None:
        """Append entries durably (:class:`~cascade.errors.LedgerError` when it cannot)."""
        async with self._lock:
            await asyncio.to_thread(self.spool.append, entries)
        self.waiting += len(entries)
        self.dirty = True

    def stored_meanwhile(self, request_ids: list[str]) -> None:
        """These requests, also in the spool, are in the database now: the replay skips them."""
        self._done.update(request_ids)

    async def read(self, limit: int) -> tuple[list[LedgerEntry], bool]:
        """The entries to store among the next ``limit`` from :attr:`offset` on (those stored
        meanwhile left out), and whether all ``limit`` were there (more may follow).
        :meth:`advance` then says how many of them were stored."""
        async with self._lock:
            self._read, self._end = await asyncio.to_thread(
                self.spool.read_from, self.offset, limit
            )
        todo = [entry for entry, _ in self._read if entry.request.request_id not in self._done]
        return todo, len(self._read) == limit

    def advance(self, todo: list[LedgerEntry], stored: int) -> int:
        """Move past the first ``stored`` entries of ``todo`` (and the skipped ones before the
        next); returns how many spool entries that passed."""
        if stored == len(todo):
            passed, self.offset = len(self._read), self._end
        else:
            first_left = todo[stored]
            passed = next(i for i, (entry, _) in enumerate(self._read) if entry is first_left)
            if passed:
                self.offset = self._read[passed - 1][1]
        for entry, _ in self._read[:passed]:
            self._done.discard(entry.request.request_id)
        self.waiting = max(0, self.waiting - passed)
        return passed

    async def clear_if_replayed(self) -> bool:
        """Empty the spool if the replay has reached its end and nothing was appended since."""
        async with self._lock:
            cleared = await asyncio.to_thread(self.spool.clear, if_size=self.offset)
        if cleared:
            self.offset = self.waiting = 0
            self.dirty = False
            self._done.clear()
        return cleared
