"""What the ledger says about cost: per-group totals, rates and savings over a window.

Pure Python over the :class:`~cascade.ledger.queries.RequestFacts` that
:mod:`cascade.ledger.queries` reads, so money stays exact. The numbers, for a group of requests:

- cost per useful token = Σ cost ÷ Σ useful tokens (None when no useful token was delivered);
- tier shares = requests whose final tier is T ÷ requests;
- escalation / spill rate = requests with at least one ``escalation`` / ``spill`` attempt ÷
  requests; error rate = requests with status ``error`` ÷ requests;
- cache hit rate = Σ cached tokens ÷ Σ prompt tokens; prefix repeat rate = requests whose prefix
  hash was already seen earlier in the window (by any request) ÷ requests;
- verify step: verified rate = requests with an answer the verifier judged ÷ requests; verify
  escalation rate = requests with an answer the verifier rejected ÷ requests; evidence cost =
  Σ cost of witness and sample attempts (part of the cost above);
- counterfactual = what each request would have cost on the policy's last (frontier) tier: the
  final attempt's prompt tokens (its cached tokens priced as cached, which understates savings
  rather than inflate them) plus the delivered completion tokens; savings = counterfactual - cost;
- history trimmed = requests a workload's history cap trimmed, and Σ their estimated tokens
  not sent;
- prompt caching, per tier and per prefix: reads, writes, what the reads saved and what the
  writes cost (:mod:`cascade.ledger.cache_report`);
- self-hosted fleets: each one's bill over the window against what it served, utilization and
  effective against nominal cost (:mod:`cascade.ledger.fleet_report`);
- deferred work: the Batch API's jobs and their deadlines, their cost against running them at
  once, the fleets with and without them (:mod:`cascade.ledger.deferred_report`);
- shadow policies: agreement with the live tier, the two tier mixes and the live-to-shadow
  matrix, the shadow's outcome where it agreed and its off-policy estimate
  (:mod:`cascade.ledger.shadow_report`);
- canaries: each policy's canary arm against its control arm, with confidence intervals
  (:mod:`cascade.ledger.canary_report`).

The report is printed by :mod:`cascade.ledger.report_text` and drawn by
:mod:`cascade.ledger.report_html`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from cascade.core.pricing import Rates
from cascade.errors import LedgerError
from cascade.ledger.cache_report import CacheReport, build_cache_report, cache_json
from cascade.ledger.canary_report import CanaryComparison, canary_json
from cascade.ledger.deferred_report import DeferredReport, deferred_json
from cascade.ledger.fleet_report import FleetReport, fleet_json
from cascade.ledger.queries import RequestFacts
from cascade.ledger.shadow_report import ShadowReport, shadow_json

GroupBy = Literal["tier", "tenant", "key", "policy", "day"]
GROUP_BYS: tuple[GroupBy, ...] = ("tier", "tenant", "key", "policy", "day")
NONE_LABEL = "(none)"
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
_SINCE = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True, slots=True)
class GroupStats:
    """The report's numbers for one group of requests (see the module doc for the formulas)."""

    key: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    useful_tokens: int
    cost_usd: Decimal
    cost_per_useful_token: Decimal | None
    tier_shares: dict[str, float]
    escalation_rate: float
    spill_rate: float
    error_rate: float
    cache_hit_rate: float | None
    prefix_repeat_rate: float
    counterfactual_usd: Decimal | None
    savings_usd: Decimal | None
    savings_pct: float | None
    verified_rate: float = 0.0
    """Requests with at least one answer the verifier judged ÷ requests."""
    verify_escalation_rate: float = 0.0
    """Requests whose cheaper answer the verifier rejected (so a stronger tier was asked) ÷
    requests."""
    evidence_cost_usd: Decimal = _ZERO
    """What the verify step's witness and sample calls cost."""
    trimmed_requests: int = 0
    """Requests whose conversation the workload's history cap trimmed."""
    trimmed_tokens: int = 0
    """Estimated tokens the history cap kept from being sent."""

    @property
    def cost_per_million_useful(self) -> Decimal | None:
        """Cost per 1,000,000 useful tokens, or None when there were none."""
        per = self.cost_per_useful_token
        return None if per is None else per * _MILLION


@dataclass(frozen=True, slots=True)
class Report:
    """A whole report: the window, the frontier tier priced, one row per group and the total."""

    since: datetime | None
    by: GroupBy
    policy: str
    frontier_tier: str
    frontier_priced: bool
    groups: tuple[GroupStats, ...]
    total: GroupStats
    tiers: tuple[GroupStats, ...]
    """The same requests grouped by final tier, whatever ``by`` is (for the charts)."""
    timeline: tuple[tuple[str, Decimal], ...]
    """Cost per time bucket, oldest first, as ``(label, usd)``: the bucket is the shortest of
    1 s … 1 day that gives at most 48 of them over the window's requests."""
    tenants: tuple[GroupStats, ...] = ()
    """The same requests grouped by tenant (requests without one under ``(none)``)."""
    reasons: tuple[tuple[str, str, int], ...] = ()
    """Why calls were not the answer, most frequent first: ``(kind, reason, attempts)`` where
    kind is ``escalated`` (a rejected answer, reason = the failed check, ``verify`` for the
    verifier), ``failed`` (a call that failed, reason = its error class) or ``evidence failed``
    (a witness call that failed)."""
    caching: CacheReport | None = None
    """Is prompt caching paying, per tier and per prefix (None: not computed)."""
    fleet: FleetReport | None = None
    """Each self-hosted tier's bill against what it served (None: not computed)."""
    deferred: DeferredReport | None = None
    """The Batch API's jobs, their cost and the fleet with and without them (None: not
    computed)."""
    shadow: ShadowReport | None = None
    """Live against shadow policies' decisions (None: not computed)."""
    canary: tuple[CanaryComparison, ...] = ()
    """Each policy's canary arm against its control arm (empty: no canary in the window)."""

    @property
    def has_tenants(self) -> bool:
        """Whether any request named a tenant."""
        return any(g.key != NONE_LABEL for g in self.tenants)


def parse_since(text: str, now: datetime | None = None) -> datetime | None:
    """``7d``, ``24h``, ``30m`` → the instant that long before ``now``; ``all`` → None."""
    if text == "all":
        return None
    match = _SINCE.match(text)
    if match is None:
        raise LedgerError(f"--since {text!r}: expected a number and d/h/m (7d, 24h, 30m) or 'all'")
    amount, unit = int(match.group(1)), match.group(2)
    return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})


def build_report(
    facts: Sequence[RequestFacts],
    *,
    by: GroupBy,
    policy: str,
    frontier_tier: str,
    frontier_rates: Rates | None,
    since: datetime | None = None,
    rates: Mapping[str, Rates | None] | None = None,
    fleet: FleetReport | None = None,
    deferred: DeferredReport | None = None,
    shadow: ShadowReport | None = None,
    canary: tuple[CanaryComparison, ...] = (),
) -> Report:
    """Group the requests by ``by`` and compute every group's numbers and the total; with
    ``rates`` (by tier name), the caching section too; ``fleet`` and ``deferred`` are carried
    as given."""
    repeated = _repeated_prefixes(facts)

    def grouped(key_by: GroupBy) -> tuple[GroupStats, ...]:
        groups: dict[str, list[RequestFacts]] = defaultdict(list)
        for fact in facts:
            groups[_group_key(fact, key_by)].append(fact)
        return tuple(summarize(k, groups[k], repeated, frontier_rates) for k in sorted(groups))

    return Report(
        since=since,
        by=by,
        policy=policy,
        frontier_tier=frontier_tier,
        frontier_priced=frontier_rates is not None,
        groups=grouped(by),
        total=summarize("all", facts, repeated, frontier_rates),
        tiers=grouped("tier"),
        timeline=cost_timeline(facts),
        tenants=grouped("tenant"),
        reasons=attempt_reasons(facts),
        caching=build_cache_report(facts, rates or {}),
        fleet=fleet,
        deferred=deferred,
        shadow=shadow,
        canary=canary,
    )


def attempt_reasons(facts: Iterable[RequestFacts]) -> tuple[tuple[str, str, int], ...]:
    """Rejected answers by failed check and failed calls by error class, most frequent first."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for fact in facts:
        for attempt in fact.attempts:
            if attempt.evidence and attempt.outcome == "error":
                counts["evidence failed", attempt.error_class or "unknown"] += 1
            elif attempt.outcome == "rejected":
                counts["escalated", (attempt.reason or "unknown").split(":", 1)[0]] += 1
            elif attempt.outcome == "error":
                counts["failed", attempt.error_class or "unknown"] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple((kind, reason, n) for (kind, reason), n in ranked)


def summarize(
    key: str,
    facts: Sequence[RequestFacts],
    repeated: frozenset[str],
    frontier_rates: Rates | None,
) -> GroupStats:
    """One group's numbers; ``repeated`` holds the request ids whose prefix was seen before."""
    n = len(facts)
    prompt = sum(f.prompt_tokens for f in facts)
    cached = sum(f.cached_tokens for f in facts)
    useful = sum(f.useful_tokens for f in facts)
    cost = sum((f.cost_usd for f in facts), _ZERO)
    tiers: dict[str, int] = defaultdict(int)
    for fact in facts:
        tiers[fact.final_tier or NONE_LABEL] += 1
    counterfactual = savings = None
    savings_pct = None
    if frontier_rates is not None:
        counterfactual = sum((f.counterfactual(frontier_rates) for f in facts), _ZERO)
        savings = counterfactual - cost
        savings_pct = float(savings / counterfactual * 100) if counterfactual else None
    return GroupStats(
        key=key,
        requests=n,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=sum(f.completion_tokens for f in facts),
        useful_tokens=useful,
        cost_usd=cost,
        cost_per_useful_token=cost / useful if useful else None,
        tier_shares={tier: count / n for tier, count in sorted(tiers.items())},
        escalation_rate=_share(facts, lambda f: f.has_role("escalation")),
        spill_rate=_share(facts, lambda f: f.has_role("spill")),
        error_rate=_share(facts, lambda f: f.status == "error"),
        cache_hit_rate=cached / prompt if prompt else None,
        prefix_repeat_rate=_share(facts, lambda f: f.request_id in repeated),
        counterfactual_usd=counterfactual,
        savings_usd=savings,
        savings_pct=savings_pct,
        verified_rate=_share(facts, _verified),
        verify_escalation_rate=_share(facts, _verify_escalated),
        evidence_cost_usd=sum((a.cost_usd for f in facts for a in f.attempts if a.evidence), _ZERO),
        trimmed_requests=sum(1 for f in facts if f.trimmed_messages),
        trimmed_tokens=sum(f.trimmed_tokens for f in facts),
    )


def _verified(fact: RequestFacts) -> bool:
    return any(a.verify_confidence is not None for a in fact.attempts)


def _verify_escalated(fact: RequestFacts) -> bool:
    return any(
        a.outcome == "rejected" and (a.reason or "").startswith("verify:") for a in fact.attempts
    )


_BUCKETS = (
    (timedelta(seconds=1), "%H:%M:%S"),
    (timedelta(seconds=5), "%H:%M:%S"),
    (timedelta(seconds=15), "%H:%M:%S"),
    (timedelta(minutes=1), "%m-%d %H:%M"),
    (timedelta(minutes=5), "%m-%d %H:%M"),
    (timedelta(minutes=15), "%m-%d %H:%M"),
    (timedelta(hours=1), "%Y-%m-%d %H:00"),
    (timedelta(hours=6), "%Y-%m-%d %H:00"),
    (timedelta(days=1), "%Y-%m-%d"),
)
_MAX_BUCKETS = 48


def cost_timeline(facts: Sequence[RequestFacts]) -> tuple[tuple[str, Decimal], ...]:
    """Cost per bucket (UTC), oldest first, empty buckets included: the bucket is the shortest
    of 1 s, 5 s, 15 s, 1 min, 5 min, 15 min, 1 h, 6 h and 1 day that gives at most 48 buckets."""
    if not facts:
        return ()
    times = [f.created_at.astimezone(UTC) for f in facts]
    first, span = min(times), max(times) - min(times)
    size, pattern = next(((s, p) for s, p in _BUCKETS if span // s < _MAX_BUCKETS), _BUCKETS[-1])
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    start = epoch + (first - epoch) // size * size
    count = (max(times) - start) // size + 1
    buckets = [_ZERO] * count
    for when, fact in zip(times, facts, strict=True):
        buckets[(when - start) // size] += fact.cost_usd
    return tuple(((start + i * size).strftime(pattern), usd) for i, usd in enumerate(buckets))


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data: money and cost ratios as exact decimal strings."""
    return {
        "since": report.since.isoformat() if report.since else None,
        "by": report.by,
        "policy": report.policy,
        "frontier_tier": report.frontier_tier,
        "frontier_priced": report.frontier_priced,
        "groups": [_group_json(g) for g in report.groups],
        "total": _group_json(report.total),
        "timeline": [{"period": label, "cost_usd": str(usd)} for label, usd in report.timeline],
        "reasons": [{"kind": k, "reason": r, "attempts": n} for k, r, n in report.reasons],
        "caching": cache_json(report.caching) if report.caching is not None else None,
        "fleet": fleet_json(report.fleet) if report.fleet is not None else None,
        "deferred": deferred_json(report.deferred) if report.deferred is not None else None,
        "shadow": shadow_json(report.shadow) if report.shadow is not None else None,
        "canary": canary_json(report.canary),
    }


def _group_json(stats: GroupStats) -> dict[str, Any]:
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "key": stats.key,
        "requests": stats.requests,
        "prompt_tokens": stats.prompt_tokens,
        "cached_tokens": stats.cached_tokens,
        "completion_tokens": stats.completion_tokens,
        "useful_tokens": stats.useful_tokens,
        "cost_usd": str(stats.cost_usd),
        "cost_per_useful_token_usd": text(stats.cost_per_useful_token),
        "cost_per_million_useful_tokens_usd": text(stats.cost_per_million_useful),
        "tier_shares": stats.tier_shares,
        "escalation_rate": stats.escalation_rate,
        "spill_rate": stats.spill_rate,
        "error_rate": stats.error_rate,
        "cache_hit_rate": stats.cache_hit_rate,
        "prefix_repeat_rate": stats.prefix_repeat_rate,
        "counterfactual_usd": text(stats.counterfactual_usd),
        "savings_usd": text(stats.savings_usd),
        "savings_pct": stats.savings_pct,
        "verified_rate": stats.verified_rate,
        "verify_escalation_rate": stats.verify_escalation_rate,
        "evidence_cost_usd": str(stats.evidence_cost_usd),
        "trimmed_requests": stats.trimmed_requests,
        "trimmed_tokens": stats.trimmed_tokens,
    }


def _group_key(fact: RequestFacts, by: GroupBy) -> str:
    if by == "tier":
        return fact.final_tier or NONE_LABEL
    if by == "tenant":
        return fact.tenant or NONE_LABEL
    if by == "key":
        return fact.key_id or NONE_LABEL
    if by == "policy":
        return fact.policy
    return fact.created_at.astimezone(UTC).date().isoformat()


def _repeated_prefixes(facts: Iterable[RequestFacts]) -> frozenset[str]:
    # facts come oldest first: a request "repeats" when an earlier one had the same prefix hash.
    seen: set[str] = set()
    repeated: set[str] = set()
    for fact in facts:
        if fact.prefix_hash is None:
            continue
        if fact.prefix_hash in seen:
            repeated.add(fact.request_id)
        seen.add(fact.prefix_hash)
    return frozenset(repeated)


def _share(facts: Sequence[RequestFacts], test: Callable[[RequestFacts], bool]) -> float:
    return sum(1 for f in facts if test(f)) / len(facts) if facts else 0.0
