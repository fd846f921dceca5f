"""A self-hosted tier's operating point for a day of traffic: the batch its workloads' latency
targets allow with the tier's own token mix, the time per token there, and what a replica costs.

The batch is the largest whose time per output token (:mod:`cascade.core.serving_model`) meets
the strictest ``max_tpot_ms`` of the workloads visiting the tier (they share its engines), with
the tier's sequences as the traffic has them: their prefill, output and context, weighted by the
visits the tier would get were every tier to serve all it is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from cascade.core.day_traffic import DayTraffic, Flow, VisitMix
from cascade.core.fleet_cost import Fleet, billed_usd
from cascade.core.serving_model import SequenceLoad, step_line
from cascade.policy.model import GpuPrice, Policy, Tier

__all__ = ["TierModel", "expected_visits", "tier_models"]

_DAY = Decimal(24)


@dataclass(frozen=True, slots=True)
class TierModel:
    """How one GPU-priced tier serves the planned traffic."""

    tier: Tier
    batch: int
    """Sequences one engine runs at once (the operating batch)."""
    step_s: float
    """Mean step at that batch with the tier's traffic (what a slot is held for per token)."""
    tpot_s: float
    """Mean time between two output tokens of a sequence there (what the target limits)."""
    target_s: float | None
    """The strictest latency target of the workloads visiting it (None: none)."""

    @property
    def meets(self) -> bool:
        """Whether the operating batch keeps the target (even batch 1 may not)."""
        return self.target_s is None or self.tpot_s <= self.target_s

    def slot_seconds(self, mix: VisitMix) -> float:
        """Slot-seconds one visit holds."""
        return mix.decode_tokens * self.step_s

    def replicas_usd(self, replicas: int) -> float:
        """A day's bill for ``replicas`` engines."""
        price = self.tier.price
        assert isinstance(price, GpuPrice)
        return float(billed_usd(Fleet.of(price, replicas), _DAY)) if replicas else 0.0

    def slower(self, factor: float) -> TierModel:
        """The same tier with every step ``factor`` times as long (the model's error band)."""
        return replace(self, step_s=self.step_s * factor, tpot_s=self.tpot_s * factor)


def tier_models(policy: Policy, traffic: DayTraffic) -> dict[str, TierModel]:
    """The GPU-priced tiers' operating points for this traffic."""
    expected = expected_visits(policy, traffic)
    models = {}
    for tier in policy.tiers:
        line = step_line(tier)
        if line is None:
            continue
        flows = [f for f in traffic.on(tier.name) if expected[f.workload, f.tier] > 0]
        load = _load(flows, expected)
        targets = [
            target for f in flows if (target := _workload_target(policy, f.workload)) is not None
        ]
        target_s = min(targets) / 1000 if targets else None
        batch = line.operating_batch(target_s, load)
        step, tpot = line.mean_step(batch, load), line.time_per_token(batch, load)
        models[tier.name] = TierModel(tier, batch, step, tpot, target_s)
    return models


def expected_visits(policy: Policy, traffic: DayTraffic) -> dict[tuple[str, str], float]:
    """Visits a day to each (workload, tier) should every tier serve all it gets."""
    flows = {(f.workload, f.tier): f for f in traffic.flows}
    visits = {key: flow.per_day for key, flow in flows.items()}
    for tier in policy.tiers:
        for (workload, name), flow in flows.items():
            if name != tier.name:
                continue
            for target, rate in (*flow.escalations, *flow.witnesses):
                key = (workload, target)
                if key in visits:
                    visits[key] += visits[workload, name] * rate
    return visits


def _load(flows: list[Flow], weights: Mapping[tuple[str, str], float]) -> SequenceLoad | None:
    """The tier's sequences on average, weighted by visits (None: no traffic)."""
    total = sum(weights[f.workload, f.tier] for f in flows)
    if not total:
        return None
    loads = [(f.mix.sequence_load(), weights[f.workload, f.tier] * f.mix.sequences) for f in flows]
    sequences = sum(w for _, w in loads)

    def mean(value: Callable[[SequenceLoad], float]) -> float:
        return sum(value(load) * w for load, w in loads) / sequences

    return SequenceLoad(
        prefill_tokens=mean(lambda s: s.prefill_tokens),
        output_tokens=mean(lambda s: s.output_tokens),
        context_tokens=mean(lambda s: s.context_tokens or 0.0),
    )


def _workload_target(policy: Policy, workload: str) -> float | None:
    settings = policy.workloads.get(workload)
    return None if settings is None else settings.max_tpot_ms
