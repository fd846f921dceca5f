"""``cascade plan``'s answer: every candidate fleet priced, the cheapest that keeps the latency
targets, the break-even of each tier against its API, and the same at more traffic.

For each traffic scale (1x, 2x, 10x by default) the candidates are 0 up to ``max_replicas x
scale`` replicas of each GPU-priced tier, and never more than two past what peak provisioning
needs: the fewest replicas that keep every hour's spill under :data:`PEAK_SPILL_SHARE` (with the
weaker tiers so provisioned too); beyond that a replica only adds rent. Each is priced by
:mod:`cascade.core.fleet_plan`. Beside the cheapest: the all-API fleet (no replica) and the
peak-provisioned one, and the cheapest fleet's cost if every step were
:data:`CAPACITY_ERROR` longer or shorter, the model's error against the simulated tiers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from cascade.core.day_traffic import DayTraffic, Flow
from cascade.core.fleet_cost import Fleet, Served, break_even
from cascade.core.fleet_plan import FleetOutcome, fleets
from cascade.core.operating_point import TierModel, expected_visits, tier_models
from cascade.core.pricing import tier_rates
from cascade.core.serving_model import step_line
from cascade.errors import PlanError
from cascade.policy.model import GpuPrice, Policy, Tier

__all__ = [
    "CAPACITY_ERROR",
    "PEAK_SPILL_SHARE",
    "TPOT_ERROR",
    "BreakEvenLine",
    "FleetPlan",
    "Scenario",
    "plan_fleets",
]

CAPACITY_ERROR = 0.10
"""How far the model's visits per replica-hour at the operating batch may be from what the
simulated tiers sustain at that batch (relative). ``benchmarks/bench_plan_model.py`` measured
at most 6.6% over twelve cases (the default policy's 1.5B and 7B tiers, three token mixes, with
and without a binding target; the model a little optimistic at small batches); stated as 10% to
leave room for what a replay through the proxy adds."""
TPOT_ERROR = 0.10
"""The same for the mean time per output token at the operating batch: at most 4.8% measured,
stated as 10%."""
_BEYOND_PEAK = 2
"""Candidates go this many replicas past peak provisioning: enough to see the cost rise."""
PEAK_SPILL_SHARE = 0.01
"""Peak provisioning: no hour spills more than this share of a tier's visits (and the work
that waits fits)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """Every candidate fleet at one traffic scale, and the ones worth naming."""

    scale: float
    fleets: tuple[FleetOutcome, ...]
    cheapest: FleetOutcome | None
    """The cheapest fleet that keeps the targets (None: none of the candidates does)."""
    all_api: FleetOutcome
    peak: FleetOutcome
    band: tuple[FleetOutcome, FleetOutcome] | None
    """The cheapest fleet again with every step CAPACITY_ERROR shorter, and longer: its cost
    and spill should the model be that far off."""
    capped: tuple[str, ...]
    """Tiers whose peak provisioning needs more than the candidates went up to."""


@dataclass(frozen=True, slots=True)
class BreakEvenLine:
    """One replica of a GPU tier against the API that would take its traffic."""

    tier: str
    api_tier: str
    replica_usd_per_day: float
    api_usd_per_mtok: float
    tokens_per_day: float | None
    """Tokens a day at which one replica's bill equals the API's price for them."""
    replica_tokens_per_day: float | None
    """Tokens of this mix one replica serves a day at the operating batch, flat out."""
    observed_tokens_per_day: float


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """The whole plan."""

    policy: str
    traffic: DayTraffic
    models: dict[str, TierModel]
    scenarios: tuple[Scenario, ...]
    break_even: tuple[BreakEvenLine, ...]
    demand: dict[str, tuple[float, float]]
    """Per tier, visits and tokens a day should every tier serve all it gets (1x traffic)."""
    capacity_error: float = CAPACITY_ERROR
    tpot_error: float = TPOT_ERROR


def plan_fleets(
    policy: Policy,
    traffic: DayTraffic,
    *,
    max_replicas: int = 8,
    scales: Sequence[float] = (1, 2, 10),
) -> FleetPlan:
    """Price the candidate fleets at each traffic scale (see the module docstring)."""
    if not any(f.per_day for f in traffic.flows):
        raise PlanError("no traffic to plan for: the ledger's window holds no request")
    if max_replicas < 1:
        raise PlanError(f"--max-replicas {max_replicas}: plan at least one replica a tier")
    models = tier_models(policy, traffic)
    scenarios = tuple(
        _scenario(policy, traffic.scaled(scale), models, math.ceil(max_replicas * scale), scale)
        for scale in scales
    )
    demand = _demand(policy, traffic)
    lines = [_break_even(policy, traffic, model, demand[name][1]) for name, model in models.items()]
    return FleetPlan(policy.name, traffic, models, scenarios, tuple(x for x in lines if x), demand)


def _demand(policy: Policy, traffic: DayTraffic) -> dict[str, tuple[float, float]]:
    visits = expected_visits(policy, traffic)
    flows = {(f.workload, f.tier): f for f in traffic.flows}
    demand = {}
    for tier in policy.tiers:
        keys = [key for key in visits if key[1] == tier.name]
        demand[tier.name] = (
            sum(visits[key] for key in keys),
            sum(visits[key] * flows[key].mix.tokens for key in keys),
        )
    return demand


def _scenario(
    policy: Policy, traffic: DayTraffic, models: dict[str, TierModel], most: int, scale: float
) -> Scenario:
    peak, capped = _peak(policy, traffic, models, most)
    counts = {name: range(min(most, peak.count(name) + _BEYOND_PEAK) + 1) for name in models}
    candidates = tuple(fleets(policy, traffic, models, counts))
    meeting = [f for f in candidates if f.meets]
    cheapest = min(meeting, key=lambda f: f.total_usd) if meeting else None
    band = None
    if cheapest is not None:
        band = (
            _one(policy, traffic, models, cheapest, 1 - CAPACITY_ERROR),
            _one(policy, traffic, models, cheapest, 1 + CAPACITY_ERROR),
        )
    zero = {name: range(1) for name in models}
    all_api = next(fleets(policy, traffic, models, zero))
    return Scenario(scale, candidates, cheapest, all_api, peak, band, capped)


def _peak(
    policy: Policy, traffic: DayTraffic, models: dict[str, TierModel], most: int
) -> tuple[FleetOutcome, tuple[str, ...]]:
    """The peak-provisioned fleet: tier by tier, the fewest replicas that keep every hour's
    spill within PEAK_SPILL_SHARE, the tiers before it so provisioned too."""
    chosen: dict[str, range] = {name: range(1) for name in models}
    capped = []
    for name in models:
        trial = {**chosen, name: range(most + 1)}
        enough = most
        for outcome in fleets(policy, traffic, models, trial):
            tier = next(t for t in outcome.tiers if t.tier == name)
            if tier.peak_spill_share <= PEAK_SPILL_SHARE and not tier.unfit_slot_hours:
                enough = outcome.count(name)
                break
        else:
            capped.append(name)
        chosen[name] = range(enough, enough + 1)
    return next(fleets(policy, traffic, models, chosen)), tuple(capped)


def _one(
    policy: Policy,
    traffic: DayTraffic,
    models: dict[str, TierModel],
    fleet: FleetOutcome,
    factor: float,
) -> FleetOutcome:
    """One fleet again with every step ``factor`` times as long."""
    slower = {name: model.slower(factor) for name, model in models.items()}
    counts = {name: range(n, n + 1) for name, n in fleet.replicas}
    return next(fleets(policy, traffic, slower, counts))


def _break_even(
    policy: Policy, traffic: DayTraffic, model: TierModel, observed: float
) -> BreakEvenLine | None:
    """One replica at the operating batch against the API its spills go to (else the policy's
    last tier), for the tier's own token mix; None when no traffic reached the tier."""
    tier = model.tier
    flows = traffic.on(tier.name)
    visits = sum(f.per_day for f in flows)
    api = _api_alternative(policy, tier)
    rates = None if api is None else tier_rates(api)
    if not visits or api is None or rates is None:
        return None
    mix = _served_mix(flows)
    price, line = tier.price, step_line(tier)
    assert isinstance(price, GpuPrice)
    assert line is not None
    # fleet_cost adds prefill time to decode time: the decode speed here is without prefill.
    decode = model.batch / line.decode_step(model.batch, _context(flows))
    even = break_even(
        replace(Fleet.of(price, 1), tokens_per_second=Decimal(repr(decode))), rates, mix
    )
    return BreakEvenLine(
        tier=tier.name,
        api_tier=api.name,
        replica_usd_per_day=float(even.fleet_usd_per_day),
        api_usd_per_mtok=float(even.api_usd_per_mtok),
        tokens_per_day=None if even.tokens_per_day is None else float(even.tokens_per_day),
        replica_tokens_per_day=(
            None if even.fleet_tokens_per_day is None else float(even.fleet_tokens_per_day)
        ),
        observed_tokens_per_day=observed,
    )


def _api_alternative(policy: Policy, tier: Tier) -> Tier | None:
    if tier.overflow is not None and policy.tier(tier.overflow).kind == "api":
        return policy.tier(tier.overflow)
    apis = [t for t in policy.tiers if t.kind == "api"]
    return apis[-1] if apis else None


def _served_mix(flows: Sequence[Flow]) -> Served:
    """The flows' tokens in a day (at least one visit's worth each), as integers."""
    prompt = completion = cached = 0.0
    for flow in flows:
        visits = max(flow.per_day, 1.0)
        prompt += visits * flow.mix.prompt_tokens
        completion += visits * flow.mix.decode_tokens
        cached += visits * flow.mix.cached_tokens
    return Served(round(prompt), round(completion), round(cached))


def _context(flows: Sequence[Flow]) -> float:
    """Context per sequence, averaged over the flows' sequences."""
    weights = [max(f.per_day, 1.0) * f.mix.sequences for f in flows]
    contexts = [f.mix.sequence_load().context_tokens or 0.0 for f in flows]
    return sum(w * c for w, c in zip(weights, contexts, strict=True)) / sum(weights)
