"""The proxy's Prometheus series: requests and cost by tier and outcome, attempts, decision time.

Counted in plain dictionaries on the request path and turned into Prometheus metric families only
when ``/metrics`` is scraped: prometheus_client's own counters take a lock and validate on every
``inc()``, which cost about 2% of the proxy's CPU per request. Everything here runs on the
process's event loop, so no lock is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cascade.ledger import WriterStats
from cascade.run.attempts import Attempt

DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
"""Upper bounds, in seconds, of the decision-time histogram's buckets."""


class Metrics(Collector):
    """The proxy's Prometheus series, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        """Client requests by (policy, final tier, outcome)."""
        self.attempts: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        """Tier calls by (tier, role, outcome)."""
        self.cost: defaultdict[tuple[str, str], float] = defaultdict(float)
        """US dollars spent by (policy, tier)."""
        self.shadows: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        """Shadow decisions by (policy, shadow version, result: agreed, differed, failed)."""
        self._decision_buckets = [0] * (len(DECISION_BUCKETS) + 1)  # the last one: above all
        self._decision_sum = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def record(self, policy: str, tier: str, outcome: str, attempts: Sequence[Attempt]) -> None:
        """Count one request by its final tier and outcome, and its attempts and their cost."""
        self.requests[policy, tier, outcome] += 1
        for attempt in attempts:
            self.attempts[attempt.tier, attempt.role, attempt.outcome] += 1
            self.cost[policy, attempt.tier] += float(attempt.cost_usd)

    def shadow(self, policy: str, version: str, result: str) -> None:
        """Count one shadow policy's decision: ``agreed`` with the live tier, ``differed`` or
        ``failed`` (logged; the request went on without it)."""
        self.shadows[policy, version, result] += 1

    def observe_decision(self, seconds: float) -> None:
        """Add one decision time to the histogram."""
        self._decision_buckets[bisect_left(DECISION_BUCKETS, seconds)] += 1
        self._decision_sum += seconds

    def collect(self) -> Iterator[Metric]:
        """The series as Prometheus metric families (called at each scrape)."""
        requests = CounterMetricFamily(
            "cascade_requests",
            "Client requests by final tier and outcome",
            labels=["policy", "tier", "outcome"],
        )
        for labels, count in sorted(self.requests.items()):
            requests.add_metric(labels, count)
        cost = CounterMetricFamily(
            "cascade_cost_usd", "Money spent on tier calls, US dollars", labels=["policy", "tier"]
        )
        for pair, dollars in sorted(self.cost.items()):
            cost.add_metric(pair, dollars)
        attempts = CounterMetricFamily(
            "cascade_attempts", "Tier calls by role and outcome", labels=["tier", "role", "outcome"]
        )
        for labels, count in sorted(self.attempts.items()):
            attempts.add_metric(labels, count)
        bounds = [*map(repr, DECISION_BUCKETS), "+Inf"]
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, self._decision_buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        decision = HistogramMetricFamily(
            "cascade_decision_seconds",
            "Time to decide a request's first tier",
            buckets=buckets,
            sum_value=self._decision_sum,
        )
        shadows = CounterMetricFamily(
            "cascade_shadow_decisions",
            "Shadow policies' decisions by whether they agreed with the live tier, or failed",
            labels=["policy", "shadow_version", "result"],
        )
        for labels, count in sorted(self.shadows.items()):
            shadows.add_metric(labels, count)
        yield from (requests, cost, attempts, decision, shadows)


def ledger_series(stats: WriterStats) -> str:
    """The ledger writer's series in Prometheus text: rows the database refused (quarantined,
    counted by request) and requests waiting in the spool."""
    return (
        "# HELP cascade_ledger_rows_quarantined_total Ledger requests (with their attempts) the "
        "database refused, kept in the quarantine file\n"
        "# TYPE cascade_ledger_rows_quarantined_total counter\n"
        f"cascade_ledger_rows_quarantined_total {stats.quarantined}\n"
        "# HELP cascade_ledger_requests_spooled Ledger requests waiting in the spool\n"
        "# TYPE cascade_ledger_requests_spooled gauge\n"
        f"cascade_ledger_requests_spooled {stats.in_spool}\n"
    )
