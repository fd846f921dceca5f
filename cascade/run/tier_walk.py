"""Where a request may go next: the tiers its workload may use, the next stronger tier that can
take a call, and where a failed call spills.

A tier can take a call when it is not cooling down after failures (:mod:`cascade.run.health`)
and neither its own slots nor its engines are full (:mod:`cascade.core.capacity`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from cascade.core.capacity import InFlightCounter
from cascade.policy.model import Policy, Tier
from cascade.run.health import TierHealth

__all__ = ["TierWalk"]


class TierWalk:
    """The tier-order questions of one router (``policy``: its policy now, reloads included)."""

    def __init__(
        self, policy: Callable[[], Policy], capacity: InFlightCounter, health: TierHealth
    ) -> None:
        self._policy, self._capacity, self._health = policy, capacity, health

    def allowed(self, workload: str, only: Collection[str] | None = None) -> list[Tier]:
        """The policy's tiers that ``workload`` may use (of ``only``, if given), cheapest first."""
        policy = self._policy()
        names = policy.workloads[workload].tiers
        kept = [t for t in policy.tiers if names is None or t.name in names]
        return kept if only is None else [t for t in kept if t.name in only]

    def usable(self, tier: Tier) -> bool:
        busy = self._capacity.saturation(tier) is not None  # its slots, or its engines, full
        return self._health.available(tier) and not busy

    def stronger(self, tier: Tier, allowed: list[Tier]) -> Tier | None:
        """The next tier after ``tier`` in ``allowed`` that can take a call."""
        # By identity: comparing pydantic models field by field costs microseconds per request.
        place = next((i for i, t in enumerate(allowed) if t is tier), None)
        later = allowed[place + 1 :] if place is not None else []
        return next((t for t in later if self.usable(t)), None)

    def spill_target(self, tier: Tier, allowed: list[Tier], spill: bool) -> Tier | None:
        """Where a request goes when ``tier`` fails: its overflow, else the next stronger tier."""
        if not spill:
            return None
        if tier.overflow is not None:
            overflow = self._policy().tier(tier.overflow)
            if any(t is overflow for t in allowed) and self.usable(overflow):
                return overflow
        return self.stronger(tier, allowed)
