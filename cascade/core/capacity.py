"""How busy each tier is: the calls in flight, as this process sees them.

``decide`` reads capacity through the small :class:`CapacityView` protocol, so the in-process
counter here can later be replaced by the serving engine's own numbers (vLLM and SGLang export
running and waiting requests on ``/metrics``) without touching the decision.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol


class CapacityView(Protocol):
    """Reads how many calls a tier is serving now."""

    def in_flight(self, tier: str) -> int:
        """Calls to ``tier`` that have started and not finished."""
        ...


class InFlightCounter:
    """Counts calls in flight per tier in this process (thread-safe)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def in_flight(self, tier: str) -> int:
        """Calls to ``tier`` that have started and not finished."""
        return self._counts.get(tier, 0)

    def snapshot(self) -> Mapping[str, int]:
        """A copy of every tier's count."""
        with self._lock:
            return dict(self._counts)

    @contextmanager
    def track(self, tier: str) -> Iterator[None]:
        """Count one call to ``tier`` for the duration of the ``with`` block."""
        with self._lock:
            self._counts[tier] = self._counts.get(tier, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._counts[tier] -= 1


class StaticCapacity:
    """A fixed view of in-flight counts: for probes, what-if questions and tests."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts = dict(counts or {})

    def in_flight(self, tier: str) -> int:
        """The count given for ``tier`` (0 if none was)."""
        return self._counts.get(tier, 0)
