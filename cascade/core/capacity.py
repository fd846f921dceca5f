"""How busy each tier is: the calls in flight, the requests waiting for a slot, and admission.

A tier serves ``max_concurrency`` calls at once (its *slots*). A request that finds them all
taken may wait in the tier's queue, first come first served, for at most ``queue_timeout_s``;
a freed slot passes straight to the first in line (no polling). When ``max_queue`` requests
already wait, or the wait runs out, the request is refused and goes elsewhere.

A tier is also saturated when its engines say so: with ``engine.metrics`` on, the counter
asks an :class:`EngineView` (the engines' own ``/metrics``, read in the background by
:mod:`cascade.tiers.engine_scraper`), which counts every proxy's calls, not only this one's.
Such a tier takes no request here: waiting in this proxy's queue would not help (no call of ours
may end to free a slot), and the engine's own queue is what is full. ``decide`` and the Router
read both through :meth:`CapacityView.saturation`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from cascade.errors import TierError
from cascade.policy.model import Tier

SATURATED_RETRY_AFTER_S = 1.0
"""The ``Retry-After`` of a request refused for want of a slot (one may free any moment)."""


class EngineView(Protocol):
    """What the engines behind a tier say of their own load (see
    :class:`~cascade.tiers.engines.EngineLoads`)."""

    def saturation(self, tier: Tier) -> str | None:
        """Why ``tier``'s engines take no request now, or None when they take one."""
        ...


class CapacityView(Protocol):
    """Reads how many calls a tier is serving now, how many requests wait for one, and whether
    it has room."""

    def in_flight(self, tier: str) -> int:
        """Calls to ``tier`` that have started and not finished."""
        ...

    def waiting(self, tier: str) -> int:
        """Requests waiting for one of ``tier``'s slots."""
        ...

    def saturation(self, tier: Tier) -> str | None:
        """Why ``tier`` has no room now (all its slots busy, or its engines full), or None."""
        ...


def _own_saturation(capacity: CapacityView, tier: Tier) -> str | None:
    busy = capacity.in_flight(tier.name)
    return f"{busy}/{tier.max_concurrency} in flight" if busy >= tier.max_concurrency else None


class InFlightCounter:
    """Counts calls in flight per tier in this process, and admits calls to a tier's slots.

    The counts are thread-safe; waiting for a slot (:meth:`wait_for_slot`) belongs to the event
    loop the waiting requests run on. ``engines``: what the engines say of their load (none:
    this process's own counts alone).
    """

    def __init__(self, engines: EngineView | None = None) -> None:
        self.engines = engines
        self._counts: dict[str, int] = {}
        self._queues: dict[str, deque[asyncio.Future[bool]]] = {}
        self._lock = threading.Lock()

    def in_flight(self, tier: str) -> int:
        """Calls to ``tier`` that have started and not finished."""
        return self._counts.get(tier, 0)

    def waiting(self, tier: str) -> int:
        """Requests waiting for one of ``tier``'s slots."""
        queue = self._queues.get(tier)
        return len(queue) if queue else 0

    def saturation(self, tier: Tier) -> str | None:
        """Why ``tier`` has no room now (all its slots busy, or its engines full), or None."""
        own = _own_saturation(self, tier)
        if own is not None or self.engines is None:
            return own
        return self.engines.saturation(tier)

    def snapshot(self) -> Mapping[str, int]:
        """A copy of every tier's count."""
        with self._lock:
            return dict(self._counts)

    @contextmanager
    def track(self, tier: str) -> Iterator[None]:
        """Count one call to ``tier`` for the duration of the ``with`` block, whatever its
        limit."""
        with self._lock:
            self._counts[tier] = self._counts.get(tier, 0) + 1
        try:
            yield
        finally:
            self.release(tier)

    async def admit(self, tier: Tier) -> None:
        """Take one of ``tier``'s slots, waiting in its queue when none is free; TierError
        ``saturated`` when the queue is full or no slot came free in time. Give the slot back
        with :meth:`release`. A tier its engines report full is refused at once."""
        name, limit = tier.name, tier.max_concurrency
        engines = None if self.engines is None else self.engines.saturation(tier)
        if engines is not None:
            raise TierError(name, "saturated", engines, retry_after_s=SATURATED_RETRY_AFTER_S)
        if self.take_slot(name, limit):
            return
        waiting, queue_limit = self.waiting(name), tier.queue_limit
        if waiting >= queue_limit:
            why = f"{waiting} requests already wait for one (max_queue {queue_limit})"
        elif await self.wait_for_slot(name, max_queue=queue_limit, timeout_s=tier.queue_timeout_s):
            return
        else:
            why = f"none came free within queue_timeout_s ({tier.queue_timeout_s:g} s)"
        raise TierError(
            name,
            "saturated",
            f"all {limit} slots are busy and {why}",
            retry_after_s=SATURATED_RETRY_AFTER_S,
        )

    def take_slot(self, tier: str, limit: int) -> bool:
        """Take one of ``tier``'s ``limit`` slots if one is free and nobody waits for it."""
        with self._lock:
            count = self._counts.get(tier, 0)
            if count >= limit:
                return False
            if self._queues.get(tier):  # the limit was raised (a policy reload): the line first
                count = self._admit_waiting(tier, count, limit)
                if count >= limit:
                    return False
            self._counts[tier] = count + 1
            return True

    async def wait_for_slot(self, tier: str, *, max_queue: int, timeout_s: float) -> bool:
        """Wait in ``tier``'s queue until a slot passes to this request (True), or for at most
        ``timeout_s`` (False); False at once when ``max_queue`` requests already wait."""
        queue = self._queues.setdefault(tier, deque())
        if len(queue) >= max_queue or timeout_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        queue.append(turn)
        timer = loop.call_later(timeout_s, self._expire, queue, turn)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.release(tier)  # handed a slot while being cancelled: pass it on
            elif turn in queue:
                queue.remove(turn)
            raise
        finally:
            timer.cancel()

    def release(self, tier: str, limit: int | None = None) -> None:
        """Give back one of ``tier``'s slots: to the first request waiting for one, if any
        (unless more than ``limit`` calls are in flight, after the limit was lowered)."""
        with self._lock:
            count = self._counts[tier]
            queue = self._queues.get(tier)
            while queue and (limit is None or count <= limit):
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(True)  # the slot passes on: the count stays
                    return
            self._counts[tier] = count - 1

    def _admit_waiting(self, tier: str, count: int, limit: int) -> int:
        queue = self._queues[tier]
        while queue and count < limit:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(True)
                count += 1
        self._counts[tier] = count
        return count

    @staticmethod
    def _expire(queue: deque[asyncio.Future[bool]], turn: asyncio.Future[bool]) -> None:
        if not turn.done():
            turn.set_result(False)
            queue.remove(turn)


class StaticCapacity:
    """A fixed view of in-flight counts: for probes, what-if questions and tests."""

    def __init__(
        self, counts: Mapping[str, int] | None = None, waiting: Mapping[str, int] | None = None
    ) -> None:
        self._counts = dict(counts or {})
        self._waiting = dict(waiting or {})

    def in_flight(self, tier: str) -> int:
        """The count given for ``tier`` (0 if none was)."""
        return self._counts.get(tier, 0)

    def waiting(self, tier: str) -> int:
        """The queue length given for ``tier`` (0 if none was)."""
        return self._waiting.get(tier, 0)

    def saturation(self, tier: Tier) -> str | None:
        """Whether the count given for ``tier`` fills its slots (engines are not asked)."""
        return _own_saturation(self, tier)
