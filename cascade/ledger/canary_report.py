"""``cascade report``'s canary section: a policy's canary arm against its control arm.

For each policy with requests in both arms' columns in the window (``arm`` set: the policy ran
a ``learning.canary``), per arm: requests, cost per request, cost per useful token (Σ cost ÷
Σ useful tokens), escalation rate (requests with an escalation attempt ÷ requests), useless
rate (requests marked useless by feedback ÷ requests) and p95 latency, each with its 95%
confidence interval, and the difference canary - control with its own
(:mod:`cascade.ledger.canary_stats` has the methods). An interval that excludes 0 says the arms
differ at that level; one that straddles 0 says the window cannot tell them apart yet.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cascade.ledger.canary_stats import (
    Estimate,
    difference,
    mean_interval,
    proportion_interval,
    quantile_interval,
    ratio_interval,
)
from cascade.ledger.learning_facts import ArmFacts
from cascade.ledger.queries import RequestFacts

__all__ = [
    "ArmStats",
    "CanaryComparison",
    "build_canary_report",
    "canary_html",
    "canary_json",
    "format_canary",
]

ARMS = ("control", "canary")
METRICS = (
    "cost_per_request_usd",
    "cost_per_useful_token_usd",
    "escalation_rate",
    "useless_rate",
    "p95_latency_ms",
)
_LABELS = {
    "cost_per_request_usd": "cost / request, USD",
    "cost_per_useful_token_usd": "cost / useful tok, USD",
    "escalation_rate": "escalation rate",
    "useless_rate": "useless (feedback)",
    "p95_latency_ms": "p95 latency, ms",
}


@dataclass(frozen=True, slots=True)
class ArmStats:
    """One arm's numbers over the window."""

    requests: int
    versions: tuple[str, ...]
    """The policy versions that routed the arm's requests (more than one across a reload)."""
    cost_usd: Decimal
    """Exact total."""
    estimates: dict[str, Estimate]
    """By name in :data:`METRICS`."""


@dataclass(frozen=True, slots=True)
class CanaryComparison:
    """A policy's two arms and their differences (canary - control), by metric."""

    policy: str
    arms: dict[str, ArmStats]
    """``control`` and ``canary`` (an arm with no request in the window has requests 0)."""
    differences: dict[str, Estimate]


def build_canary_report(
    facts: Sequence[RequestFacts], arms: Mapping[str, ArmFacts]
) -> tuple[CanaryComparison, ...]:
    """Every policy with arms in the window, by name; ``arms`` is each armed request's arm."""
    grouped: dict[str, dict[str, list[tuple[RequestFacts, str]]]] = defaultdict(
        lambda: {arm: [] for arm in ARMS}
    )
    for fact in facts:
        armed = arms.get(fact.request_id)
        if armed is not None and armed.arm in ARMS:
            grouped[fact.policy][armed.arm].append((fact, armed.policy_version))
    comparisons = []
    for policy in sorted(grouped):
        stats = {arm: _arm(rows) for arm, rows in grouped[policy].items()}
        differences = {
            m: difference(stats["canary"].estimates[m], stats["control"].estimates[m])
            for m in METRICS
        }
        comparisons.append(CanaryComparison(policy, stats, differences))
    return tuple(comparisons)


def _arm(rows: Sequence[tuple[RequestFacts, str]]) -> ArmStats:
    facts = [fact for fact, _ in rows]
    costs = [float(f.cost_usd) for f in facts]
    n = len(facts)
    estimates = {
        "cost_per_request_usd": mean_interval(costs),
        "cost_per_useful_token_usd": ratio_interval(costs, [f.useful_tokens for f in facts]),
        "escalation_rate": proportion_interval(
            sum(1 for f in facts if f.has_role("escalation")), n
        ),
        "useless_rate": proportion_interval(sum(1 for f in facts if f.useless), n),
        "p95_latency_ms": quantile_interval([f.latency_ms for f in facts]),
    }
    return ArmStats(
        requests=n,
        versions=tuple(sorted({version for _, version in rows})),
        cost_usd=sum((f.cost_usd for f in facts), Decimal(0)),
        estimates=estimates,
    )


def canary_json(report: Sequence[CanaryComparison]) -> list[dict[str, Any]]:
    """The section as JSON-ready data: each estimate ``{value, low, high}`` (floats; null where
    the data cannot say), each arm's exact cost as a decimal string."""
    return [
        {
            "policy": c.policy,
            "arms": {
                arm: {
                    "requests": stats.requests,
                    "policy_versions": list(stats.versions),
                    "cost_usd": str(stats.cost_usd),
                    **{m: _estimate_json(stats.estimates[m]) for m in METRICS},
                }
                for arm, stats in c.arms.items()
            },
            "difference": {m: _estimate_json(c.differences[m]) for m in METRICS},
        }
        for c in report
    ]


def _estimate_json(estimate: Estimate) -> dict[str, float | None]:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high}


def format_canary(report: Sequence[CanaryComparison]) -> list[str]:
    """The section as text lines ([] when no policy ran a canary in the window)."""
    lines: list[str] = []
    for c in report:
        control, canary = c.arms["control"], c.arms["canary"]
        lines += [
            f"canary: policy {c.policy}, canary {_versions(canary)} against control "
            f"{_versions(control)}; 95% confidence intervals in brackets",
            f"  {'':<24}{'control':<34}{'canary':<34}canary - control",
            f"  {'requests':<24}{control.requests:<34,}{canary.requests:,}",
        ]
        for metric in METRICS:
            cells = (
                _show(metric, control.estimates[metric]),
                _show(metric, canary.estimates[metric]),
                _show(metric, c.differences[metric], signed=True),
            )
            lines.append(f"  {_LABELS[metric]:<24}{cells[0]:<34}{cells[1]:<34}{cells[2]}")
        lines.append("")
    return lines[:-1]


def canary_html(report: Sequence[CanaryComparison]) -> str:
    """The section of the HTML page ('' when no policy ran a canary in the window)."""
    if not report:
        return ""
    parts = [
        "<h2>Canary</h2><p class=sub>Each policy's canary arm against its control arm, with 95% "
        "confidence intervals; a difference whose interval excludes 0 is one the window "
        "supports.</p>"
    ]
    head = "".join(f"<th>{name}</th>" for name in ("", "control", "canary", "canary - control"))
    for c in report:
        control, canary = c.arms["control"], c.arms["canary"]
        rows = [("requests", f"{control.requests:,}", f"{canary.requests:,}", "")]
        rows += [
            (
                _LABELS[m],
                _show(m, control.estimates[m]),
                _show(m, canary.estimates[m]),
                _show(m, c.differences[m], signed=True),
            )
            for m in METRICS
        ]
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        title = f"Policy {c.policy}: canary {_versions(canary)}, control {_versions(control)}"
        parts.append(
            f"<p class=sub>{html.escape(title)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    return "".join(parts)


def _versions(stats: ArmStats) -> str:
    return ", ".join(stats.versions) if stats.versions else "(no request)"


def _show(metric: str, estimate: Estimate, *, signed: bool = False) -> str:
    """An estimate and its interval in the metric's unit ('n/a' where the data cannot say)."""
    if estimate.value is None:
        return "n/a"

    def one(value: float | None, sign: bool = signed) -> str:
        if value is None:
            return "?"
        plus = "+" if sign else ""
        if metric.endswith("_rate"):
            return f"{value * 100:{plus}.2f}%"
        if metric.endswith("_ms"):
            return f"{value:{plus}.1f}"
        return f"{value:{plus}.3e}"

    if estimate.low is None and estimate.high is None:
        return f"{one(estimate.value)} [n/a]"
    return f"{one(estimate.value)} [{one(estimate.low)}, {one(estimate.high)}]"
