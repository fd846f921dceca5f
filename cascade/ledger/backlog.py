"""The rows only the writer's memory holds: submitted, and in neither the database nor the spool.

A ``kill -9`` loses exactly these, so the writer watches their number and their age
(:meth:`Backlog.unsaved` and :meth:`Backlog.oldest_unsaved_at`) and journals them to the spool
when either grows too large. They sit in three places: ``pending`` (waiting for a batch), the
batch being written to the database, and the items being appended to the spool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from cascade.ledger.records import LedgerEntry


class Item(NamedTuple):
    """A submitted entry with its submission number and when it was submitted (writer's clock)."""

    seq: int
    at: float
    entry: LedgerEntry


@dataclass(eq=False)
class Batch:
    """Items on their way to the database (the writer's batch in flight)."""

    items: list[Item]
    journaled: bool = False
    """Appended to the spool meanwhile, because the write took too long."""
    journaling: bool = False
    """Being appended to the spool now."""
    rest: list[Item] | None = None
    """Once the database write is over, the items it could not save (None while it runs)."""


@dataclass
class Backlog:
    """Where the unsaved items are; every method is O(1) or O(items moved)."""

    pending: list[Item] = field(default_factory=list)
    writing: Batch | None = None
    journaling: list[Item] = field(default_factory=list)

    def take(self, count: int) -> Batch:
        """The oldest ``count`` pending items, now the batch in flight."""
        batch = Batch(self.pending[:count])
        del self.pending[:count]
        self.writing = batch
        return batch

    def put_back(self, items: list[Item]) -> None:
        """Items that could not be saved go back to pending, in submission order."""
        if items:
            self.pending = sorted([*items, *self.pending], key=lambda item: item.seq)

    def in_flight_unsaved(self) -> list[Item]:
        """The batch in flight when neither the database nor the spool holds it yet."""
        batch = self.writing
        if batch is None or batch.journaled or batch.journaling:
            return []
        return batch.items

    def unsaved(self) -> int:
        """How many items a crash now would lose."""
        return len(self.pending) + len(self.in_flight_unsaved()) + len(self.journaling)

    def oldest_unsaved_at(self) -> float | None:
        """When the oldest item not yet in the database nor on its way to the spool came in."""
        times = [items[0].at for items in (self.pending, self.in_flight_unsaved()) if items]
        return min(times, default=None)

    def first_unsaved_seq(self) -> int | None:
        """The submission number of the oldest item a crash now would lose (each list is in
        submission order)."""
        lists = (self.pending, self.in_flight_unsaved(), self.journaling)
        return min((items[0].seq for items in lists if items), default=None)
