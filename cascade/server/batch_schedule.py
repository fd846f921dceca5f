"""Where deferred (Batch API) work may run now: the self-hosted tiers' spare capacity.

Deferred work fills what interactive traffic leaves idle, and yields to it:

- **Room.** A self-hosted tier the ``batch`` workload may use takes deferred calls while its load
  is below ``(1 - batch_headroom) x max_concurrency``: the rest of its slots stay free for
  interactive requests. Its load is the larger of this proxy's own calls in flight and, when
  every replica's metrics have been read and are fresh, the engines' own running requests
  (which count every proxy's calls).
- **Yield.** A tier with requests waiting (in this proxy's queue for a slot, or inside its
  engines) has no room at all, and while any tier the batch workload may use has interactive
  requests waiting in this proxy, the runner takes no new deferred work and cuts deferred calls
  to give their slots back (:func:`waiting`).
- **Deadline.** A batch whose ``expires_at`` is at most ``batch_deadline_margin_s`` away no
  longer waits for room: its remaining requests are routed with every tier the caller may use,
  API tiers included (at the workload's provider service tier, e.g. ``flex``, where the policy
  names one). A fixed margin rather than a projection of the pace so far: under a day-shaped
  load the pace by day says nothing about the idle night to come.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from cascade.core.capacity import CapacityView
from cascade.policy.model import Policy, Tier
from cascade.tiers.engines import EngineLoads

BATCH_WORKLOAD = "batch"
"""The workload batch requests run as, when their policy defines it (else its default)."""


@dataclass(frozen=True, slots=True)
class Room:
    """A self-hosted tier's spare slots for deferred work now (0: none)."""

    tier: str
    spare: int


def batch_tiers(policies: Iterable[Policy]) -> list[Tier]:
    """The self-hosted tiers deferred work may use: those the ``batch`` workload (else the
    default workload) of each policy allows, each name once (tiers are known by name)."""
    tiers: dict[str, Tier] = {}
    for policy in policies:
        name = BATCH_WORKLOAD if BATCH_WORKLOAD in policy.workloads else policy.default_workload
        allowed = policy.workloads[name].tiers
        for tier in policy.tiers:
            if tier.kind == "self_hosted" and (allowed is None or tier.name in allowed):
                tiers.setdefault(tier.name, tier)
    return list(tiers.values())


def room(tier: Tier, capacity: CapacityView, engines: EngineLoads, headroom: float) -> Room:
    """How many more deferred calls ``tier`` takes now, keeping ``headroom`` of its slots for
    interactive traffic (see the module docstring)."""
    limit = math.floor(tier.max_concurrency * (1.0 - headroom))
    load, queued = capacity.in_flight(tier.name), capacity.waiting(tier.name)
    loads = [engines.replica(tier.name, url) for url in tier.endpoints]
    if loads and all(read is not None and read.reachable for read in loads):
        load = max(load, math.ceil(sum(read.running for read in loads if read is not None)))
        queued += math.ceil(sum(read.waiting for read in loads if read is not None))
    return Room(tier.name, 0 if queued else max(0, limit - load))


def rooms(
    tiers: Iterable[Tier], capacity: CapacityView, engines: EngineLoads, headroom: float
) -> list[Room]:
    """Every tier's :func:`room`."""
    return [room(tier, capacity, engines, headroom) for tier in tiers]


def waiting(tiers: Iterable[Tier], capacity: CapacityView) -> int:
    """Requests waiting in this proxy for a slot of these tiers: interactive traffic that
    deferred calls holding slots would delay."""
    return sum(capacity.waiting(tier.name) for tier in tiers)
