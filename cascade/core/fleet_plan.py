"""What a fleet of self-hosted replicas costs a day against a day of traffic, and whether it
keeps the workloads' latency targets: the model ``cascade plan`` prices every candidate with.

Per self-hosted tier (priced by GPU time), with ``n`` replicas:

- **operating batch** ``B`` (:mod:`cascade.core.operating_point`): the largest batch whose
  mean step meets the strictest ``max_tpot_ms`` of the workloads visiting the tier; each
  engine runs at most ``B`` sequences, the proxy's ``max_concurrency`` is ``n x B`` (one
  sequence per call, more with the verify step's samples);
- a visit holds one slot per sequence for as many steps as it decodes: ``decode_tokens x
  step`` slot-seconds;
- each hour, visits of workloads that spill arrive at random and find ``n x B`` slots; one that
  finds them all busy spills to the tier's overflow (else the next stronger tier). The share
  spilled is Erlang's loss formula for the hour's offered load (it holds whatever the visits'
  lengths), the carried load is what the tier serves;
- visits of workloads that do not spill (batch jobs) wait for a slot: over the day they must
  fit in the slot-hours the others leave free, else the fleet fails;
- a served visit causes its follow-ons (escalations, witnesses) in the same hour;
- the bill: ``n`` x GPU rent for 24 hours plus operations (:func:`~cascade.core.fleet_cost.
  billed_usd`), nothing for a tier with no replica.

API tiers (and self-hosted tiers priced per token) take what reaches them at their rates (each
workload at the service tier the API tier sends it at: flex for batch work, say); visits
spilled there are priced with their own tokens, the same share of the prompt read from a
cache. Money here is a plan's estimate, in float dollars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from cascade.core.day_traffic import HOURS, DayTraffic, Flow, VisitMix
from cascade.core.operating_point import TierModel
from cascade.core.pricing import Rates, tier_rates, workload_rates
from cascade.errors import PlanError
from cascade.policy.model import Policy, Tier

__all__ = ["FleetOutcome", "TierOutcome", "api_usd_per_visit", "fleets"]

Vector = np.ndarray
_NEGLIGIBLE_LOSS = 1e-12
"""A share of visits spilled below which more slots change nothing the plan shows."""


@dataclass(frozen=True, slots=True)
class TierOutcome:
    """One self-hosted tier under one fleet, over the day."""

    tier: str
    replicas: int
    arriving: float
    """Visits reaching the tier a day."""
    spilled: float
    """Of those, sent on to its overflow."""
    busy_slot_hours: float
    gpu_usd: float
    slots: int
    peak_spill_share: float = 0.0
    """The largest share spilled in any hour (what peak provisioning keeps near zero)."""
    unfit_slot_hours: float = 0.0
    """Work that waits rather than spill and finds no free slot in the day."""
    sequences: float = 1.0
    """Sequences per visit on average (the verify step's samples decode together)."""

    @property
    def max_concurrency(self) -> int:
        """The proxy's limit for this fleet: calls, each of ``sequences`` slots."""
        return int(self.slots / self.sequences)

    @property
    def utilization(self) -> float | None:
        """Busy slots against the fleet's slots at the operating batch (None: no replica)."""
        return self.busy_slot_hours / (self.slots * HOURS) if self.slots else None

    @property
    def spill_share(self) -> float:
        """Share of the arriving visits spilled."""
        return self.spilled / self.arriving if self.arriving else 0.0


@dataclass(frozen=True, slots=True)
class FleetOutcome:
    """A candidate fleet's day: cost, what each tier did, and what breaks its targets."""

    replicas: tuple[tuple[str, int], ...]
    tiers: tuple[TierOutcome, ...]
    api_usd: tuple[tuple[str, float], ...]
    problems: tuple[str, ...] = ()
    """Why the fleet misses its targets (empty: it meets them)."""

    @property
    def gpu_usd(self) -> float:
        """The self-hosted tiers' bills."""
        return sum(t.gpu_usd for t in self.tiers)

    @property
    def total_usd(self) -> float:
        """GPU bills plus API spend a day."""
        return self.gpu_usd + sum(usd for _, usd in self.api_usd)

    @property
    def meets(self) -> bool:
        """Whether it keeps every latency target and serves every workload that cannot spill."""
        return not self.problems

    def count(self, tier: str) -> int:
        """Replicas of one tier."""
        return dict(self.replicas)[tier]


def api_usd_per_visit(rates: Rates, mix: VisitMix) -> float:
    """One visit's price at an API's rates (its cached share of the prompt read from a cache)."""
    plain = mix.prompt_tokens - mix.cached_tokens
    return (
        plain * float(rates.input)
        + mix.cached_tokens * float(rates.cached_input)
        + mix.completion_tokens * float(rates.output)
    )


@dataclass(slots=True)
class _Stream:
    """Visits of one workload moving through the tiers, per hour."""

    flow: Flow
    """Where they came from: their mix and workload."""
    per_hour: Vector
    spills: bool
    witness: bool = False
    """Witness calls: dropped, not spilled, when the tier is full; they cause nothing."""


@dataclass(slots=True)
class _Day:
    """The walk's state: what has reached each tier, and what was spent and decided."""

    at: dict[str, list[_Stream]]
    replicas: list[tuple[str, int]] = field(default_factory=list)
    tiers: list[TierOutcome] = field(default_factory=list)
    api: list[tuple[str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def copy(self) -> _Day:
        at = {name: list(streams) for name, streams in self.at.items()}
        return _Day(at, list(self.replicas), list(self.tiers), list(self.api), list(self.problems))


def fleets(
    policy: Policy,
    traffic: DayTraffic,
    models: Mapping[str, TierModel],
    counts: Mapping[str, range],
) -> Iterator[FleetOutcome]:
    """Every fleet with ``counts[tier]`` replicas of each GPU-priced tier, evaluated."""
    start = _Day({t.name: [] for t in policy.tiers})
    for flow in traffic.flows:
        spills = _workload_spills(policy, flow.workload)
        start.at[flow.tier].append(_Stream(flow, np.array(flow.entering, dtype=float), spills))
    yield from _Walk(policy, traffic, models, counts).walk(0, start)


class _Walk:
    """Goes through the tiers in the policy's order, branching on each GPU tier's replicas."""

    def __init__(
        self,
        policy: Policy,
        traffic: DayTraffic,
        models: Mapping[str, TierModel],
        counts: Mapping[str, range],
    ) -> None:
        self.policy, self.models, self.counts = policy, models, counts
        self.flows = {(f.workload, f.tier): f for f in traffic.flows}
        self.order = {t.name: i for i, t in enumerate(policy.tiers)}

    def walk(self, index: int, day: _Day) -> Iterator[FleetOutcome]:
        if index == len(self.policy.tiers):
            yield FleetOutcome(
                tuple(day.replicas), tuple(day.tiers), tuple(day.api), tuple(day.problems)
            )
            return
        tier = self.policy.tiers[index]
        model = self.models.get(tier.name)
        if model is None:
            self.take_all(tier, day)
            yield from self.walk(index + 1, day)
            return
        serve = self.server(model, day.at[tier.name], max(self.counts[tier.name], default=0))
        for replicas in self.counts[tier.name]:
            branch = day.copy()
            serve(replicas, branch)
            yield from self.walk(index + 1, branch)

    def take_all(self, tier: Tier, day: _Day) -> None:
        """An API tier (or one priced per token): all that reaches it is served at its rates,
        each workload's at the service tier it is sent at."""
        streams = day.at[tier.name]
        priced = [(s, self.rates(tier, s.flow.workload)) for s in streams]
        if any(r is None and s.per_hour.sum() > 0 for s, r in priced):
            raise PlanError(
                f"tier {tier.name!r} of policy {self.policy.name!r} has no price: cascade "
                "plan prices what reaches a tier at the policy's prices; give it one "
                "(price: input_usd_per_mtok, output_usd_per_mtok; or the service tier's)"
            )
        if all(r is None for _, r in priced):
            return
        usd = sum(
            float(s.per_hour.sum()) * api_usd_per_visit(r, s.flow.mix)
            for s, r in priced
            if r is not None
        )
        day.api.append((tier.name, usd))
        for stream in streams:
            self.follow(stream, tier.name, stream.per_hour, day)

    def rates(self, tier: Tier, workload: str) -> Rates | None:
        """The tier's rates for one workload's visits (its service tier's, if it has one)."""
        settings = self.policy.workloads.get(workload)
        return tier_rates(tier) if settings is None else workload_rates(tier, settings, workload)

    def server(
        self, model: TierModel, streams: list[_Stream], most: int
    ) -> Callable[[int, _Day], None]:
        """What ``n`` replicas of the tier do with the streams reaching it, for every ``n`` up
        to ``most`` (Erlang's formula is computed once for all of them)."""
        offered = sum(
            (s.per_hour * model.slot_seconds(s.flow.mix) / 3600 for s in streams if s.spills),
            start=np.zeros(HOURS),
        )
        blocked = _erlang_loss(offered, model.batch, most)
        queued = sum(
            float(s.per_hour.sum()) * model.slot_seconds(s.flow.mix) / 3600
            for s in streams
            if not s.spills
        )
        name = model.tier.name

        def serve(replicas: int, day: _Day) -> None:
            arriving = spilled = sequences = 0.0
            for stream in streams:
                arriving += float(stream.per_hour.sum())
                sequences += float(stream.per_hour.sum()) * stream.flow.mix.sequences
                if stream.spills:
                    lost = stream.per_hour * blocked[replicas]
                else:
                    lost = stream.per_hour * (replicas == 0)
                if not stream.witness:  # (a witness that finds no slot is skipped)
                    spilled += float(lost.sum())
                    self.spill(model.tier, stream, lost, day)
                self.follow(stream, name, stream.per_hour - lost, day)
            carried = float((offered * (1 - blocked[replicas])).sum())
            slots = replicas * model.batch
            unfit = max(0.0, queued - (slots * HOURS - carried)) if replicas else queued
            day.problems.extend(_problems(model, replicas, unfit, queued))
            busy = carried + queued - unfit
            peak = float(blocked[replicas][offered > 0].max(initial=0.0))
            usd = model.replicas_usd(replicas)
            day.replicas.append((name, replicas))
            mean = sequences / arriving if arriving else 1.0
            day.tiers.append(
                TierOutcome(name, replicas, arriving, spilled, busy, usd, slots, peak, unfit, mean)
            )

        return serve

    def spill(self, tier: Tier, stream: _Stream, lost: Vector, day: _Day) -> None:
        """Visits the tier could not take go to its overflow, else the next stronger tier."""
        if not lost.any():
            return
        target = tier.overflow
        if target is None:
            later = self.policy.tiers[self.order[tier.name] + 1 :]
            target = later[0].name if later else None
        if target is None:
            day.problems.append(f"{tier.name}: spilled visits have no stronger tier to go to")
            return
        day.at[target].append(_Stream(stream.flow, lost, stream.spills))

    def follow(self, stream: _Stream, tier: str, served: Vector, day: _Day) -> None:
        """The escalations and witnesses served answers cause on stronger tiers."""
        own = self.flows.get((stream.flow.workload, tier))
        if own is None or stream.witness:
            return
        for kind in ("escalations", "witnesses"):
            for target, rate in getattr(own, kind):
                if self.order[target] <= self.order[tier]:
                    continue  # a weaker tier was priced already (plan_traffic leaves these out)
                flow = self.flows.get((stream.flow.workload, target), stream.flow)
                witness = kind == "witnesses"
                spills = stream.spills or witness  # a witness never waits for a slot
                day.at[target].append(_Stream(flow, served * rate, spills, witness))


def _problems(model: TierModel, replicas: int, unfit: float, queued: float) -> list[str]:
    """Why ``replicas`` of the tier miss the targets: work that waits does not fit the free
    slot-hours, or the target is out of reach even at batch 1."""
    problems = []
    name = model.tier.name
    if unfit:
        problems.append(
            f"{name}: work that waits rather than spill needs {queued:,.3g} slot-hours a day, "
            f"{queued - unfit:,.3g} are free"
        )
    if replicas and not model.meets and model.target_s is not None:
        problems.append(
            f"{name}: {model.tpot_s * 1000:.2f} ms a token even at batch 1, over the "
            f"{model.target_s * 1000:g} ms target"
        )
    return problems


def _erlang_loss(offered: Vector, batch: int, most: int) -> list[Vector]:
    """Erlang's loss probability for ``n x batch`` slots at each hour's offered load, for every
    ``n`` from 0 to ``most`` (the recursion ``B(k) = a B(k-1) / (k + a B(k-1))`` passes every
    slot count on its way). The loss only falls as slots are added: once every hour's is below
    :data:`_NEGLIGIBLE_LOSS`, larger fleets repeat it (a bound no figure of the plan can show),
    so a plan at 10,000x traffic, whose candidates go to ``--max-replicas`` x 10,000, does not
    step through millions of slots."""
    out = [np.ones(HOURS)]
    loss = np.ones(HOURS)
    for k in range(1, most * batch + 1):
        carried = offered * loss
        loss = carried / (k + carried)
        if k % batch == 0:
            out.append(loss)
            if loss.max() < _NEGLIGIBLE_LOSS:
                break
    return out + [loss] * (most + 1 - len(out))


def _workload_spills(policy: Policy, workload: str) -> bool:
    settings = policy.workloads.get(workload)
    return True if settings is None else settings.spill
