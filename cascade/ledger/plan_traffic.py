"""The ledger's traffic as ``cascade plan`` needs it: an average day of visits per workload and
tier (:mod:`cascade.core.day_traffic`), with what the router *meant* to do.

A ledger recorded under some fleet: where that fleet was full, requests spilled. The plan must
see the demand, not what that fleet let through, so each request's calls are read back into the
visits it intended:

- a request the decision spilled at once (its first call has the role ``spill``) meant to enter
  the tier its confidence chose (the policy's thresholds, within its workload's tiers);
- a call that failed and spilled (saturated, refused, timed out) meant to visit the failed tier:
  the spill call after it is left to the plan, whose fleet decides where the visit goes;
- an escalation follows the visit whose answer was rejected; the verify step's witnesses follow
  the visit they witnessed, and its samples belong to it.

Tokens per visit are the served visits' means (a spilled visit's tokens stand in where a tier
served none). The day's shape: each hour of the day (UTC; or the ``day`` given, for a ledger
recorded faster than real time, measured from its first request) gets the visits entering in
it, averaged over how many times that hour occurs between the window's first and last request.
A request counts in the hour it arrived (the ledger records it when answered, ``latency_ms``
later: in a day replayed a thousand times faster, a second's answer is most of an hour late).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cascade.core.day_traffic import HOURS, DayTraffic, Flow, VisitMix
from cascade.core.decision import by_confidence
from cascade.errors import PlanError
from cascade.ledger.queries import AttemptFacts, RequestFacts
from cascade.policy.model import Policy

__all__ = ["day_traffic"]

_DAY = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SERVED = ("ok", "rejected")


@dataclass(slots=True)
class _Visit:
    """A request's calls to one tier: its answer's call, with samples and witnesses."""

    tier: str
    role: str
    answer: AttemptFacts | None
    samples: list[AttemptFacts] = field(default_factory=list)
    witnesses: list[AttemptFacts] = field(default_factory=list)
    stand_in: AttemptFacts | None = None
    """The call that took this visit's request elsewhere, for its tokens (a visit not served)."""

    @property
    def served(self) -> bool:
        return self.answer is not None and self.answer.outcome in _SERVED


@dataclass(slots=True)
class _Tally:
    """One workload's visits to one tier, as counted."""

    entering: list[float] = field(default_factory=lambda: [0.0] * HOURS)
    served: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)
    stand_ins: int = 0
    stand_in_sums: list[float] = field(default_factory=lambda: [0.0] * 5)
    escalations: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    witnesses: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def day_traffic(
    facts: Sequence[RequestFacts],
    policy: Policy,
    *,
    day: timedelta = _DAY,
    recorded_as: str | None = None,
) -> DayTraffic:
    """The average day of the requests recorded under the policy named ``recorded_as`` (default:
    ``policy``'s own name), read with ``policy``'s tiers and thresholds (see the module
    docstring): planning one policy for the traffic another routed needs the same tier names."""
    name = policy.name if recorded_as is None else recorded_as
    mine = [f for f in facts if f.policy == name]
    if not mine:
        found = ", ".join(sorted({f.policy for f in facts})) or "none"
        raise PlanError(
            f"no request of policy {name!r} in the ledger's window (policies there: {found}); "
            "plan with the policy the traffic was routed by (--policy), or name it "
            "(--traffic-of)"
        )
    if day <= timedelta(0):
        raise PlanError(f"--day {day}: a day must last some time")
    tiers = {t.name for t in policy.tiers}
    first = min(f.arrived_at for f in mine)
    last = max(f.arrived_at for f in mine)
    anchor = _EPOCH if day == _DAY else first
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    for fact in mine:
        hour = _hour(fact.arrived_at, anchor, day)
        visits = [v for v in _intended(fact, policy) if v.tier in tiers]
        _count(visits, fact.workload, hour, tallies, policy)
    occurs = _occurrences(first, last, anchor, day)
    flows = tuple(_flow(key, tally, occurs) for key, tally in sorted(tallies.items()))
    span = (last - first) / day
    return DayTraffic(tuple(f for f in flows if f is not None), max(span, 1 / HOURS), len(mine))


def _visits(attempts: Sequence[AttemptFacts]) -> list[_Visit]:
    """Calls grouped into visits: evidence is recorded before the answer it is evidence for."""
    visits: list[_Visit] = []
    pending: list[AttemptFacts] = []
    for attempt in attempts:
        if attempt.evidence:
            pending.append(attempt)
            continue
        visit = _Visit(attempt.tier, attempt.role, attempt)
        for evidence in pending:
            same = evidence.role == "sample" and evidence.tier == attempt.tier
            (visit.samples if same else visit.witnesses).append(evidence)
        pending = []
        visits.append(visit)
    return visits


def _intended(fact: RequestFacts, policy: Policy) -> list[_Visit]:
    """The visits the router meant, spills undone (see the module docstring)."""
    intended: list[_Visit] = []
    for i, visit in enumerate(_visits(fact.attempts)):
        if visit.role != "spill":
            intended.append(visit)
            continue
        if intended and not intended[-1].served:  # the failed visit stands for this one
            intended[-1].stand_in = visit.answer
            continue
        chosen = _chosen(fact, policy) if i == 0 else None
        if chosen is not None and chosen != visit.tier:
            intended.append(_Visit(chosen, "primary", None, stand_in=visit.answer))
        else:
            intended.append(_Visit(visit.tier, "primary", visit.answer, visit.samples))
    return intended


def _chosen(fact: RequestFacts, policy: Policy) -> str | None:
    """The tier the request's confidence chose within its workload's tiers."""
    workload = policy.workloads.get(fact.workload)
    if fact.confidence is None or workload is None:
        return None
    tiers = [t for t in policy.tiers if workload.tiers is None or t.name in workload.tiers]
    return by_confidence(tiers, fact.confidence)[0].name if tiers else None


def _count(
    visits: list[_Visit],
    workload: str,
    hour: int,
    tallies: dict[tuple[str, str], _Tally],
    policy: Policy,
) -> None:
    order = {t.name: i for i, t in enumerate(policy.tiers)}
    for i, visit in enumerate(visits):
        tally = tallies[workload, visit.tier]
        if i == 0:
            tally.entering[hour] += 1
        elif visit.role != "escalation":
            continue  # a later visit neither entered nor followed (a pinned retry): not planned
        if visit.served and visit.answer is not None:
            tally.served += 1
            _add(tally.sums, visit.answer, visit.samples)
            if i + 1 < len(visits) and visits[i + 1].role == "escalation":
                tally.escalations[visits[i + 1].tier] += 1
            for witness in visit.witnesses:
                if witness.tier in order and order[witness.tier] > order[visit.tier]:
                    tally.witnesses[witness.tier] += 1
                    witnessed = tallies[workload, witness.tier]
                    witnessed.served += 1
                    _add(witnessed.sums, witness, [])
        elif visit.stand_in is not None:
            tally.stand_ins += 1
            _add(tally.stand_in_sums, visit.stand_in, [])


def _add(sums: list[float], answer: AttemptFacts, samples: Sequence[AttemptFacts]) -> None:
    """Add one visit's tokens: prompt, cached, completion, decoded in all, prefilled in all."""
    calls = [answer, *samples]
    sums[0] += answer.prompt_tokens
    sums[1] += answer.cached_tokens
    sums[2] += answer.completion_tokens
    sums[3] += sum(c.completion_tokens for c in calls)
    sums[4] += sum(max(0, c.prompt_tokens - c.cached_tokens) for c in calls)


def _flow(key: tuple[str, str], tally: _Tally, occurs: list[int]) -> Flow | None:
    """The tally as a flow; None when no visit of it has tokens to go by."""
    count, sums = tally.served, tally.sums
    if not count or not sums[2]:
        count, sums = tally.stand_ins, tally.stand_in_sums
    if not count:
        return None
    mix = VisitMix(*(value / count for value in sums))
    entering = tuple(n / k if k else 0.0 for n, k in zip(tally.entering, occurs, strict=True))
    served = max(tally.served, 1)
    return Flow(
        workload=key[0],
        tier=key[1],
        entering=entering,
        mix=mix,
        escalations=tuple((t, n / served) for t, n in sorted(tally.escalations.items())),
        witnesses=tuple((t, n / served) for t, n in sorted(tally.witnesses.items())),
    )


def _hour(at: datetime, anchor: datetime, day: timedelta) -> int:
    """The hour of the day ``at`` falls in (a 24th of ``day``, counted from ``anchor``)."""
    return min(HOURS - 1, int((at - anchor) % day / (day / HOURS)))


def _occurrences(first: datetime, last: datetime, anchor: datetime, day: timedelta) -> list[int]:
    """How many times each hour of the day occurs from ``first``'s hour to ``last``'s."""
    hour = day / HOURS
    start = first - (first - anchor) % hour
    counts = [0] * HOURS
    at = start
    while at <= last:
        counts[_hour(at, anchor, day)] += 1
        at += hour
    return counts
