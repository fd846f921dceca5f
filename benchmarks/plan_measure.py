"""What serving ``cascade plan``'s fleet measured, beside what the plan said
(``benchmarks/plan_check.py``).

Per day, at the replay's scale (it is the day at ``1 / scale``: :mod:`benchmarks.day_replay`):

- **cost**: the API tiers' spend in the ledger x scale, plus each self-hosted tier's bill for
  24 hours, computed as ``cascade report``'s fleet section does (:func:`~cascade.core.fleet_cost.
  fleet_cost` over 24 hours with the ledger's tokens and charges x scale: the bill, its
  utilization -- GPU time charged against GPU time billed -- and effective against nominal
  cost). Within the plan's error when between the plan's cost with every step
  ``CAPACITY_ERROR`` shorter and longer (``total_usd_range``), give or take one API call of
  the replay at scale (:func:`_cost`);
- **spill**: per self-hosted tier, the share of the visits reaching it that went on to the
  API (spilled by the decision, refused when an escalation found it full, or passed over by
  an escalation), over the day and in its worst hour, beside the plan's (and its range for
  the same capacity error);
- **utilization**: per tier, the plan's (slots busy, every step as long as at the operating
  batch) beside ``cascade report``'s (GPU time charged, each token at that batch's price,
  against GPU time billed), and the slots the replicas' batches really held (busy for as many
  steps, each shorter in a batch not full: the plan's figure is the larger);
- **time per output token**: per tier, every sequence's, from the replicas' ``x-simulated-*``
  headers (simulated ms). The plan states it at a full operating batch, the most any hour
  sees: within its error when the busiest hour's mean is at most ``TPOT_ERROR`` above it.
  The share of sequences above the workload's ``max_tpot_ms`` is shown too (the target limits
  the mean; one sequence's steps vary with the prompts that join them).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from benchmarks.day_replay import DIURNAL, SELF_HOSTED, Fleet, Replay, Sent
from cascade.core.fleet_cost import Fleet as Billed
from cascade.core.fleet_cost import FleetCost, Served, fleet_cost
from cascade.ledger.queries import RequestFacts, read_requests
from cascade.policy import load_policy
from cascade.policy.model import GpuPrice, Policy

__all__ = ["Figure", "Measured", "TierTiming", "day_fleet", "measure"]

_DAY_HOURS = Decimal(24)
_EVIDENCE = ("sample", "witness")


@dataclass(frozen=True, slots=True)
class Figure:
    """One number the plan gave and the replay measured."""

    name: str
    plan: float
    measured: float
    within: bool | None
    """Inside the plan's stated error (None: shown, not judged)."""
    bounds: tuple[float, float] | None = None
    """What the stated error allows (None: not stated for this figure)."""

    @property
    def error(self) -> float | None:
        """(measured - plan) / plan (None: the plan said 0)."""
        return (self.measured - self.plan) / self.plan if self.plan else None


@dataclass(frozen=True, slots=True)
class TierTiming:
    """One self-hosted tier's sequences over the served day (simulated ms per output token)."""

    tier: str
    sequences: int
    mean_ms: float
    p90_ms: float
    busiest_hour: int
    busiest_mean_ms: float
    over_target: float | None
    """Share of sequences above the workload's max_tpot_ms (None: no target)."""


@dataclass(frozen=True, slots=True)
class Measured:
    """Everything measured on the served day."""

    figures: tuple[Figure, ...]
    timings: tuple[TierTiming, ...]
    fleets: dict[str, FleetCost]
    """Per self-hosted tier, its day as ``cascade report``'s fleet section computes it."""

    @property
    def within(self) -> bool:
        """No judged figure outside the plan's stated error."""
        return all(f.within is not False for f in self.figures)


def measure(
    plan: dict[str, Any],
    candidate: dict[str, Any],
    served: Replay,
    fleet: Fleet,
    *,
    scale: float,
    day_s: float,
    time_scale: float,
) -> Measured:
    """The served replay's day against ``candidate``, one of the plan's fleets (``--json``'s
    ``scenarios[].fleets[]``); judged only where the plan states its error: the cheapest's cost
    range, and the operating batch's time per token (module docstring)."""
    policy = load_policy(served.policy)
    facts = read_requests(f"sqlite:///{served.database}", None)
    fleets = {
        name: day_fleet(policy, facts, name, fleet.replicas[name], scale) for name in SELF_HOSTED
    }
    api_calls = [a for f in facts for a in f.attempts if policy.tier(a.tier).kind == "api"]
    api = float(sum((a.cost_usd for a in api_calls), Decimal(0))) * scale
    gpu = float(sum((cost.billed_usd for cost in fleets.values()), Decimal(0)))
    figures = [
        _cost(candidate, api + gpu, api / max(len(api_calls), 1)),
        Figure("  gpu bill", candidate["gpu_usd"], gpu, None),
        Figure("  api spend", sum(candidate["api_usd"].values()), api, None),
    ]
    spills = _spill_shares(served.sent, [t.name for t in policy.tiers], day_s)
    ranges = candidate.get("spill_share_range", {})
    for name in SELF_HOSTED:
        tier = candidate["tiers"][name]
        share, peak = spills.get(name, (0.0, 0.0))
        bounds = tuple(ranges[name]) if name in ranges else None
        figures += [
            Figure(f"spill {name}", tier["spill_share"], share, None, bounds),
            Figure("  busiest hour", tier["peak_spill_share"], peak, None),
        ]
        planned = tier["utilization"] or 0.0
        used = float(fleets[name].utilization or 0)
        slots = fleet.replicas[name] * fleet.batch[name] * day_s / time_scale
        busy = sum(s.busy_s for s in served.sequences[name])
        figures += [
            Figure(f"utilization {name}", planned, used, None),
            Figure("  slots busy", planned, busy / slots, None),
        ]
    tiers = {t["tier"]: t for t in plan["tiers"]}
    timings = tuple(
        _timing(name, served.sequences[name], day_s, tiers[name]["target_ms"])
        for name in SELF_HOSTED
    )
    error = plan["model_error"]["tpot"]
    for timing in timings:
        predicted = tiers[timing.tier]["tpot_ms"]
        ceiling = predicted * (1 + error)
        figures.append(
            Figure(f"ms/token {timing.tier}", predicted, timing.busiest_mean_ms,
                   timing.busiest_mean_ms <= ceiling, (0.0, ceiling))
        )  # fmt: skip
    return Measured(tuple(figures), timings, fleets)


def _cost(candidate: dict[str, Any], total: float, per_call: float) -> Figure:
    """The day's cost against the plan's: judged against the range the plan states for it
    (capacity off by its error), give or take one API call of the replay at scale -- the
    resolution of a day replayed with each request standing for ``scale``: the plan's
    escalations are a rate x visits, the replay's a whole number."""
    stated = candidate.get("total_usd_range")
    if stated is None:
        return Figure("cost $/day", candidate["total_usd"], total, None)
    low, high = stated[0] - per_call, stated[1] + per_call
    return Figure("cost $/day", candidate["total_usd"], total, low <= total <= high, (low, high))


def day_fleet(
    policy: Policy, facts: Sequence[RequestFacts], name: str, replicas: int, scale: float
) -> FleetCost:
    """The tier's day as the report's fleet section computes it: its calls' tokens and the
    ledger's charge for them x scale, against ``replicas`` GPUs billed for 24 hours."""
    price = policy.tier(name).price
    assert isinstance(price, GpuPrice)
    calls = [a for f in facts for a in f.attempts if a.tier == name]
    k = Decimal(repr(scale))
    served = Served(
        prompt_tokens=round(sum(a.prompt_tokens for a in calls) * k),
        completion_tokens=round(sum(a.completion_tokens for a in calls) * k),
        cached_tokens=round(sum(min(a.cached_tokens, a.prompt_tokens) for a in calls) * k),
    )
    useful = round(sum(f.useful_tokens for f in facts if f.final_tier == name) * k)
    charged = sum((a.cost_usd for a in calls), Decimal(0)) * k
    return fleet_cost(
        Billed.of(price, replicas), _DAY_HOURS, served, useful_tokens=useful, nominal=charged
    )


def _spill_shares(
    sent: Sequence[Sent], order: Sequence[str], day_s: float
) -> dict[str, tuple[float, float]]:
    """Per tier, the share of visits reaching it that it sent on, over the day and in its
    worst hour: spilled by the decision (``x-cascade-spilled-from``), refused full when an
    escalation came (``error(saturated)`` in ``x-cascade-attempts``), or passed over by an
    escalation because it was full (the router escalates to the next tier with room: an
    answer on small escalated to the frontier went past a full medium)."""
    visits: Counter[tuple[str, int]] = Counter()
    spilled: Counter[tuple[str, int]] = Counter()
    hour_s = day_s / len(DIURNAL)
    for request in sent:
        hour = min(int(request.at / hour_s), len(DIURNAL) - 1)
        if request.spilled_from is not None:
            visits[request.spilled_from, hour] += 1
            spilled[request.spilled_from, hour] += 1
        parts = [part.partition(":") for part in request.attempts.split(",") if part]
        calls = [(tier, outcome) for tier, _, outcome in parts if outcome not in _EVIDENCE]
        for i, (tier, outcome) in enumerate(calls):
            visits[tier, hour] += 1
            spilled[tier, hour] += outcome.startswith("error(saturated")
            if i + 1 < len(calls) and outcome.startswith("rejected"):
                later = calls[i + 1][0]
                for passed in order[order.index(tier) + 1 : order.index(later)]:
                    visits[passed, hour] += 1
                    spilled[passed, hour] += 1
    shares = {}
    for tier in {tier for tier, _ in visits}:
        hours = [h for t, h in visits if t == tier]
        total = sum(visits[tier, h] for h in hours)
        worst = max(spilled[tier, h] / visits[tier, h] for h in hours)
        shares[tier] = (sum(spilled[tier, h] for h in hours) / total, worst)
    return shares


def _timing(
    tier: str, sequences: Sequence[Any], day_s: float, target_ms: float | None
) -> TierTiming:
    """The tier's time per output token: over the day, and in the hour with most sequences."""
    hour_s = day_s / len(DIURNAL)
    by_hour: dict[int, list[float]] = {}
    for sequence in sequences:
        by_hour.setdefault(min(int(sequence.at / hour_s), 23), []).append(sequence.tpot_ms)
    values = sorted(s.tpot_ms for s in sequences)
    busiest = max(by_hour, key=lambda h: len(by_hour[h]))
    over = None if target_ms is None else sum(v > target_ms for v in values) / len(values)
    return TierTiming(
        tier=tier,
        sequences=len(values),
        mean_ms=statistics.fmean(values),
        p90_ms=values[int(0.9 * (len(values) - 1))],
        busiest_hour=busiest,
        busiest_mean_ms=statistics.fmean(by_hour[busiest]),
        over_target=over,
    )
