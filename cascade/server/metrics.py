"""The proxy's Prometheus series: requests and cost by tier and outcome, attempts, decision time."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from cascade.router import Attempt


class Metrics:
    """The proxy's Prometheus series, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cascade_requests",
            "Client requests by final tier and outcome",
            ["policy", "tier", "outcome"],
            registry=self.registry,
        )
        self.cost = Counter(
            "cascade_cost_usd",
            "Money spent on tier calls, US dollars",
            ["policy", "tier"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "cascade_attempts",
            "Tier calls by role and outcome",
            ["tier", "role", "outcome"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "cascade_decision_seconds",
            "Time to decide a request's first tier",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=self.registry,
        )

        # Labelled children, looked up once: prometheus_client takes a lock for every labels().
        self._children: dict[tuple[str, ...], Counter] = {}

    def _child(self, family: Counter, *labels: str) -> Counter:
        key = (family._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def record(self, policy: str, tier: str, outcome: str, attempts: Sequence[Attempt]) -> None:
        """Count one request by its final tier and outcome, and its attempts and their cost."""
        self._child(self.requests, policy, tier, outcome).inc()
        for attempt in attempts:
            self._child(self.attempts, attempt.tier, attempt.role, attempt.outcome).inc()
            self._child(self.cost, policy, attempt.tier).inc(float(attempt.cost_usd))
