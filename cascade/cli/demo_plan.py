"""The end of ``cascade demo``: what ``cascade plan`` recommends for the demo's traffic.

The demo's tiers are priced like the default policy's but without its measured speeds (batch,
single-stream speed, context), so the plan reads the ``demo`` requests with the default
policy (``cascade plan --policy default --traffic-of demo``): the H100 speeds and prices the
simulated tiers run at. Two readings of a minute of traffic:

- **as a day**: the requests as all of a day's, spread over its 24 hours (``--day`` the span
  they took). A few hundred requests a day: a replica does not pay;
- **kept up all day**: the same pace for 24 hours -- every hour of the day as busy as its
  share of the demo, ``86,400 / span`` times the requests (the span in simulated seconds, as
  the simulated tiers served them at the demo's ``--time-scale``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cascade.core.fleet_plan import FleetOutcome
from cascade.core.fleet_search import FleetPlan, plan_fleets
from cascade.ledger.plan_traffic import day_traffic
from cascade.ledger.queries import read_requests
from cascade.policy import load_policy

__all__ = ["demo_plan"]

_DAY_S = 86_400.0


def demo_plan(database: Path, time_scale: float) -> str:
    """A few lines: the cheapest fleet for the demo's traffic as a day and kept up all day,
    each against all-API, and the caveat that a minute is a tiny day."""
    facts = read_requests(f"sqlite:///{database}", None)
    demo = [f for f in facts if f.policy == "demo"]
    span = (max(f.arrived_at for f in demo) - min(f.arrived_at for f in demo)).total_seconds()
    # A day a little longer than the span: the last request is not read as the next day's.
    day = timedelta(seconds=span * 1.001 + 1e-3)
    policy = load_policy("default")
    traffic = day_traffic(facts, policy, day=day, recorded_as="demo")
    pace = round(_DAY_S * time_scale / day.total_seconds())
    plan = plan_fleets(policy, traffic, scales=(1, pace))
    whole, kept = plan.scenarios
    command = (
        f"cascade plan --url sqlite:///{database} --since all --traffic-of demo "
        f"--day {day.total_seconds():g}s --scales 1,{pace}"
    )
    kept_api = kept.all_api.total_usd
    return "\n".join(
        [
            "cascade plan for the demo's traffic, at the default policy's H100 speeds:",
            f"  $ {command}",
            f"  its {traffic.requests:,} requests as a whole day: {_verdict(whole.cheapest)} "
            f"(all-API ${whole.all_api.total_usd:,.2f})",
            f"  that pace kept up for 24 hours ({pace:,}x: {traffic.requests * pace / 1e6:,.1f}M "
            f"requests a day): {_verdict(kept.cheapest)} (all-API ${kept_api:,.2f})",
            f"  a minute of traffic is a tiny day: {_break_even(plan)}; plan on a week of "
            "your own ledger",
        ]
    )


def _verdict(fleet: FleetOutcome | None) -> str:
    if fleet is None:
        return "no fleet keeps the targets"
    named = ", ".join(f"{tier} {n}" for tier, n in fleet.replicas)
    return f"cheapest {named} at ${fleet.total_usd:,.2f} a day"


def _break_even(plan: FleetPlan) -> str:
    """One replica's break-even, the lowest of the tiers'."""
    lines = [line for line in plan.break_even if line.tokens_per_day is not None]
    if not lines:
        return "no tier's break-even is known"
    low = min(lines, key=lambda line: line.tokens_per_day or 0.0)
    return (
        f"one {low.tier} replica (${low.replica_usd_per_day:,.2f} a day) pays from "
        f"{(low.tokens_per_day or 0) / 1e6:,.1f}M tokens a day of this mix"
    )
