"""``cascade plan``'s output: the tables it prints and the JSON ``--json`` prints instead."""

from __future__ import annotations

from typing import Any

from cascade.core.day_traffic import HOURS
from cascade.core.fleet_plan import FleetOutcome
from cascade.core.fleet_search import BreakEvenLine, FleetPlan, Scenario
from cascade.core.operating_point import TierModel

__all__ = ["BENCHMARK", "format_plan", "plan_json"]

BENCHMARK = "benchmarks/bench_plan_model.py"
"""Where the model's stated error was measured, against the simulated tiers."""


def format_plan(plan: FleetPlan) -> str:
    """The plan as text: tiers, the candidate fleets at 1x, the cheapest, break-even, scales."""
    first = plan.scenarios[0]
    lines = [
        f"plan for policy {plan.policy!r} from {plan.traffic.requests:,} requests over "
        f"{plan.traffic.days:,.2f} day(s) of traffic",
        f"model error: capacity ±{plan.capacity_error:.0%}, time per token "
        f"±{plan.tpot_error:.0%} (measured against the simulated tiers: {BENCHMARK})",
        "",
        *_tier_table(plan),
        "",
        f"candidate fleets at {first.scale:g}x traffic, $ a day, cheapest first:",
        *_fleet_table(first),
    ]
    for scenario in plan.scenarios:
        lines += ["", *_verdict(scenario)]
    if plan.break_even:
        lines += ["", *_break_even_table(plan.break_even)]
    return "\n".join(lines)


def _tier_table(plan: FleetPlan) -> list[str]:
    shape = _visits_by_hour(plan)
    rows = [
        f"{'tier':<10} {'batch':>5} {'ms/token':>9} {'target':>7} {'visits/replica-h':>17} "
        f"{'visits/day':>11} {'tokens/day':>11}"
    ]
    for name, model in plan.models.items():
        target = "-" if model.target_s is None else f"{model.target_s * 1000:g}"
        visits, tokens = plan.demand[name]
        rows.append(
            f"{name:<10} {model.batch:>5} {model.tpot_s * 1000:>9.2f} {target:>7} "
            f"{_replica_visits(plan, model):>17,.0f} {visits:>11,.0f} {_count(tokens):>11}"
        )
    peak = max(range(HOURS), key=lambda h: shape[h])
    rows.append(
        f"requests a day {sum(shape):,.0f}; busiest hour {peak:02d}:00 ({shape[peak]:,.0f}), "
        f"quietest {min(shape):,.0f}"
    )
    return rows


def _fleet_table(scenario: Scenario) -> list[str]:
    names = [name for name, _ in scenario.all_api.replicas]
    head = " ".join(f"{name:>8}" for name in names)
    spills = " ".join(f"{'spill ' + name:>13}" for name in names)
    rows = [f"{head} {'gpu':>10} {'api':>10} {'total':>10} {spills}  targets"]
    for fleet in sorted(scenario.fleets, key=lambda f: (not f.meets, f.total_usd)):
        counts = " ".join(f"{n:>8}" for _, n in fleet.replicas)
        shares = " ".join(f"{t.spill_share:>13.1%}" for t in fleet.tiers)
        verdict = "ok" if fleet.meets else "; ".join(fleet.problems)
        mark = "  <- cheapest" if fleet is scenario.cheapest else ""
        api = fleet.total_usd - fleet.gpu_usd
        rows.append(
            f"{counts} {fleet.gpu_usd:>10,.2f} {api:>10,.2f} {fleet.total_usd:>10,.2f} "
            f"{shares}  {verdict}{mark}"
        )
    return rows


def _verdict(scenario: Scenario) -> list[str]:
    at = f"at {scenario.scale:g}x traffic"
    api, peak = scenario.all_api, scenario.peak
    cheapest = scenario.cheapest
    if cheapest is None:
        return [f"{at}: no candidate fleet keeps the targets (all-API ${api.total_usd:,.2f} a day)"]
    lines = [
        f"{at}: cheapest keeping the targets: {_named(cheapest)}, ${cheapest.total_usd:,.2f} a day"
    ]
    if scenario.band is not None:
        fast, slow = scenario.band
        lines.append(
            f"  ${fast.total_usd:,.2f}-${slow.total_usd:,.2f} should capacity be off by the "
            "model's error"
        )
    lines.append(
        f"  against all-API ${api.total_usd:,.2f} ({_saving(cheapest, api)}) and "
        f"peak-provisioned {_named(peak)} ${peak.total_usd:,.2f} ({_saving(cheapest, peak)})"
    )
    settings = [
        f"{t.tier} max_concurrency {t.max_concurrency} ({t.slots // t.replicas} sequences a "
        "replica)"
        for t in cheapest.tiers
        if t.replicas
    ]
    if settings:
        lines.append("  set: " + ", ".join(settings))
    if scenario.capped:
        lines.append(
            f"  peak provisioning of {', '.join(scenario.capped)} needs more replicas than "
            "the candidates went up to (--max-replicas)"
        )
    return lines


def _break_even_table(lines: tuple[BreakEvenLine, ...]) -> list[str]:
    rows = [
        "break-even against the API, one replica a day at the operating batch:",
        f"{'tier':<10} {'api':<10} {'$/day':>8} {'api $/M':>8} {'break-even':>11} "
        f"{'replica max':>12} {'observed':>10}  (tokens a day)",
    ]
    for line in lines:
        rows.append(
            f"{line.tier:<10} {line.api_tier:<10} {line.replica_usd_per_day:>8,.2f} "
            f"{line.api_usd_per_mtok:>8,.2f} {_count(line.tokens_per_day):>11} "
            f"{_count(line.replica_tokens_per_day):>12} {_count(line.observed_tokens_per_day):>10}"
        )
    return rows


def plan_json(plan: FleetPlan) -> dict[str, Any]:
    """The plan for tooling (dollars as numbers: a plan's estimates, not the ledger's money)."""
    return {
        "policy": plan.policy,
        "requests": plan.traffic.requests,
        "days": plan.traffic.days,
        "model_error": {
            "capacity": plan.capacity_error,
            "tpot": plan.tpot_error,
            "measured_by": BENCHMARK,
        },
        "visits_per_hour": _visits_by_hour(plan),
        "tiers": [_tier_json(plan, model) for model in plan.models.values()],
        "break_even": [_break_even_json(line) for line in plan.break_even],
        "scenarios": [_scenario_json(s) for s in plan.scenarios],
    }


def _tier_json(plan: FleetPlan, model: TierModel) -> dict[str, Any]:
    visits, tokens = plan.demand[model.tier.name]
    tpot = model.tpot_s * 1000
    return {
        "tier": model.tier.name,
        "operating_batch": model.batch,
        "tpot_ms": tpot,
        "tpot_ms_range": [tpot * (1 - plan.tpot_error), tpot * (1 + plan.tpot_error)],
        "target_ms": None if model.target_s is None else model.target_s * 1000,
        "meets_target": model.meets,
        "visits_per_replica_hour": _replica_visits(plan, model),
        "visits_per_day": visits,
        "tokens_per_day": tokens,
    }


def _scenario_json(scenario: Scenario) -> dict[str, Any]:
    cheapest = None
    if scenario.cheapest is not None:
        cheapest = _fleet_json(scenario.cheapest)
        if scenario.band is not None:
            fast, slow = scenario.band
            cheapest["total_usd_range"] = [fast.total_usd, slow.total_usd]
            cheapest["spill_share_range"] = {
                a.tier: [a.spill_share, b.spill_share]
                for a, b in zip(fast.tiers, slow.tiers, strict=True)
            }
    return {
        "scale": scenario.scale,
        "cheapest": cheapest,
        "all_api": _fleet_json(scenario.all_api),
        "peak_provisioned": _fleet_json(scenario.peak),
        "capped": list(scenario.capped),
        "fleets": [_fleet_json(f) for f in scenario.fleets],
    }


def _fleet_json(fleet: FleetOutcome) -> dict[str, Any]:
    return {
        "replicas": dict(fleet.replicas),
        "total_usd": fleet.total_usd,
        "gpu_usd": fleet.gpu_usd,
        "api_usd": dict(fleet.api_usd),
        "meets": fleet.meets,
        "problems": list(fleet.problems),
        "tiers": {
            t.tier: {
                "replicas": t.replicas,
                "max_concurrency": t.max_concurrency,
                "sequences_per_replica": t.slots // t.replicas if t.replicas else 0,
                "gpu_usd": t.gpu_usd,
                "visits_per_day": t.arriving,
                "spilled_per_day": t.spilled,
                "spill_share": t.spill_share,
                "peak_spill_share": t.peak_spill_share,
                "utilization": t.utilization,
            }
            for t in fleet.tiers
        },
    }


def _break_even_json(line: BreakEvenLine) -> dict[str, Any]:
    return {
        "tier": line.tier,
        "api_tier": line.api_tier,
        "replica_usd_per_day": line.replica_usd_per_day,
        "api_usd_per_mtok": line.api_usd_per_mtok,
        "break_even_tokens_per_day": line.tokens_per_day,
        "replica_tokens_per_day": line.replica_tokens_per_day,
        "observed_tokens_per_day": line.observed_tokens_per_day,
    }


def _visits_by_hour(plan: FleetPlan) -> list[float]:
    """Requests entering the first tier they meet, per hour of the day."""
    return [sum(f.entering[h] for f in plan.traffic.flows) for h in range(HOURS)]


def _replica_visits(plan: FleetPlan, model: TierModel) -> float:
    """Visits one replica serves an hour flat out at the operating batch, for the tier's mix."""
    flows = [f for f in plan.traffic.on(model.tier.name) if f.per_day]
    weight = sum(f.per_day for f in flows)
    if not weight:
        return 0.0
    seconds = sum(f.per_day * model.slot_seconds(f.mix) for f in flows) / weight
    return 3600 * model.batch / seconds if seconds else 0.0


def _named(fleet: FleetOutcome) -> str:
    return ", ".join(f"{name} {n}" for name, n in fleet.replicas) or "no replica"


def _saving(fleet: FleetOutcome, other: FleetOutcome) -> str:
    if not other.total_usd:
        return "-"
    share = 1 - fleet.total_usd / other.total_usd
    return f"{share:.0%} less" if share >= 0 else f"{-share:.0%} more"


def _count(value: float | None) -> str:
    """12.9M, 21.6B, 950."""
    if value is None:
        return "-"
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"
