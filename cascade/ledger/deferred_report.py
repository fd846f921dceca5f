"""What the deferred work did: the Batch API's jobs, their deadlines, their cost and the fleet.

Over the report's window (the jobs: :mod:`cascade.ledger.batch_facts`; a deferred request is a
ledger request whose ``request_id`` is one of a job's request ids):

- per job: its status, requests done / failed / total, its deadline (``expires_at``) and whether
  it was met: ``met`` when it completed at or before its deadline, ``missed`` when it expired,
  completed late, or is still open past its deadline, ``open`` while it runs with time left,
  ``cancelled`` when its owner cancelled it;
- cost: what the ledger charged for the deferred requests, against what they would have cost
  at once on the report's counterfactual tier (its standard rates, the same counterfactual as
  the rest of the report: :meth:`~cascade.ledger.queries.RequestFacts.counterfactual`). A call
  on a self-hosted tier is charged its nominal GPU time; the fleet's bill does not grow with
  it (the GPUs are billed busy or idle), so that charge is an upper bound on what it added;
- fleet: each self-hosted tier's utilization (busy GPU time ÷ GPU time, as the fleet section
  computes it) with every request, and without the deferred ones, over the same window.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from cascade.core.pricing import Rates
from cascade.ledger.batch_facts import BatchFacts, JobFacts
from cascade.ledger.fleet_report import FleetReport, build_fleet_report
from cascade.ledger.queries import RequestFacts
from cascade.policy.model import Tier

__all__ = [
    "DeferredReport",
    "FleetUse",
    "JobLine",
    "build_deferred_report",
    "deferred_html",
    "deferred_json",
    "format_deferred",
]

Deadline = Literal["met", "missed", "open", "cancelled"]
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class JobLine:
    """One job: its facts, its deadline's outcome and its ledger requests in the window."""

    job: JobFacts
    deadline: Deadline
    requests: int
    """Its requests recorded in the ledger in the window."""
    cost_usd: Decimal
    at_once_usd: Decimal | None
    """None: the counterfactual tier has no price."""


@dataclass(frozen=True, slots=True)
class FleetUse:
    """A self-hosted tier's utilization with and without the deferred requests."""

    tier: str
    deferred_calls: int
    with_deferred: Decimal | None
    """None: no GPU price, or a window of no length."""
    without_deferred: Decimal | None


@dataclass(frozen=True, slots=True)
class DeferredReport:
    """The deferred-work section (empty ``jobs``: no Batch API job in the window)."""

    jobs: tuple[JobLine, ...]
    at_once_tier: str
    requests: int
    cost_usd: Decimal
    at_once_usd: Decimal | None
    fleet: tuple[FleetUse, ...]

    @property
    def met(self) -> int:
        """Jobs that finished before their deadline."""
        return sum(1 for line in self.jobs if line.deadline == "met")


def build_deferred_report(
    facts: Sequence[RequestFacts],
    batches: BatchFacts,
    *,
    tiers: Sequence[Tier],
    fleet: FleetReport,
    at_once_tier: str,
    at_once_rates: Rates | None,
    now: datetime,
) -> DeferredReport:
    """The section over the window's ``facts`` and ``batches``; ``fleet`` is the report's fleet
    section (every request), whose window the fleet without the deferred requests shares."""
    members = batches.request_batch
    deferred = [f for f in facts if f.request_id in members]
    by_job: dict[str, list[RequestFacts]] = {}
    for fact in deferred:
        by_job.setdefault(members[fact.request_id], []).append(fact)
    lines = tuple(
        _job_line(job, by_job.get(job.batch_id, []), at_once_rates, now) for job in batches.jobs
    )
    return DeferredReport(
        jobs=lines,
        at_once_tier=at_once_tier,
        requests=len(deferred),
        cost_usd=sum((f.cost_usd for f in deferred), _ZERO),
        at_once_usd=_at_once(deferred, at_once_rates),
        fleet=_fleet_use(facts, members, tiers, fleet),
    )


def _job_line(
    job: JobFacts, facts: Sequence[RequestFacts], rates: Rates | None, now: datetime
) -> JobLine:
    cost = sum((f.cost_usd for f in facts), _ZERO)
    return JobLine(job, _deadline(job, now), len(facts), cost, _at_once(facts, rates))


def _deadline(job: JobFacts, now: datetime) -> Deadline:
    if job.status in ("cancelling", "cancelled"):
        return "cancelled"
    if job.status == "completed" and job.ended_at is not None:
        return "met" if job.ended_at <= job.expires_at else "missed"
    if job.status == "expired" or now > job.expires_at:
        return "missed"
    return "open"


def _at_once(facts: Sequence[RequestFacts], rates: Rates | None) -> Decimal | None:
    return None if rates is None else sum((f.counterfactual(rates) for f in facts), _ZERO)


def _fleet_use(
    facts: Sequence[RequestFacts],
    members: Mapping[str, str],
    tiers: Sequence[Tier],
    fleet: FleetReport,
) -> tuple[FleetUse, ...]:
    interactive = [f for f in facts if f.request_id not in members]
    if fleet.start is None or fleet.end is None:
        return tuple(FleetUse(line.tier, 0, None, None) for line in fleet.tiers)
    without = build_fleet_report(interactive, tiers, since=fleet.start, now=fleet.end)
    alone = {line.tier: line for line in without.tiers}
    uses = []
    for line in fleet.tiers:
        other = alone[line.tier]
        uses.append(
            FleetUse(
                line.tier,
                line.calls - other.calls,
                None if line.cost is None else line.cost.utilization,
                None if other.cost is None else other.cost.utilization,
            )
        )
    return tuple(uses)


def deferred_json(report: DeferredReport) -> dict[str, Any]:
    """The section as JSON-ready data: money and ratios as exact decimal strings."""
    return {
        "jobs": [_job_json(line) for line in report.jobs],
        "deadlines_met": report.met,
        "requests": report.requests,
        "cost_usd": str(report.cost_usd),
        "at_once_tier": report.at_once_tier,
        "at_once_usd": _text(report.at_once_usd),
        "fleet": [
            {
                "tier": use.tier,
                "deferred_calls": use.deferred_calls,
                "utilization_with_deferred": _text(use.with_deferred),
                "utilization_without_deferred": _text(use.without_deferred),
            }
            for use in report.fleet
        ],
    }


def _job_json(line: JobLine) -> dict[str, Any]:
    job = line.job
    return {
        "batch_id": job.batch_id,
        "tenant": job.tenant,
        "status": job.status,
        "total": job.total,
        "completed": job.completed,
        "failed": job.failed,
        "created_at": job.created_at.isoformat(),
        "expires_at": job.expires_at.isoformat(),
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "deadline": line.deadline,
        "ledger_requests": line.requests,
        "cost_usd": str(line.cost_usd),
        "at_once_usd": _text(line.at_once_usd),
    }


def format_deferred(report: DeferredReport) -> list[str]:
    """The section as text lines ([] when no job is in the window)."""
    if not report.jobs:
        return []
    lines = [
        f"deferred work (Batch API): {len(report.jobs)} jobs, {report.met} finished before "
        f"their deadline; {report.requests:,} deferred requests in the window",
        f"  cost           {report.cost_usd:.10f} USD as charged; at once on "
        f"{report.at_once_tier}: {_money(report.at_once_usd)} USD"
        + _saved(report.cost_usd, report.at_once_usd),
    ]
    for use in report.fleet:
        lines.append(
            f"  fleet {use.tier:<8} utilization {_percent(use.with_deferred)} with the deferred "
            f"work, {_percent(use.without_deferred)} without ({use.deferred_calls:,} deferred "
            "calls)"
        )
    for line in report.jobs:
        job = line.job
        ended = f"{job.ended_at:%Y-%m-%d %H:%M:%S}" if job.ended_at else "not yet"
        lines.append(
            f"  {job.batch_id}  {job.status:<11} {job.completed}/{job.total} done, "
            f"{job.failed} failed; deadline {job.expires_at:%Y-%m-%d %H:%M:%S} UTC "
            f"{line.deadline}, ended {ended}; cost {line.cost_usd:.6f} USD, at once "
            f"{_money(line.at_once_usd, 6)} USD"
        )
    return lines


def deferred_html(report: DeferredReport) -> str:
    """The section of the HTML page ('' when no job is in the window)."""
    if not report.jobs:
        return ""
    head = "".join(
        f"<th>{name}</th>"
        for name in ("job", "status", "done / total", "deadline", "met", "cost", "at once")
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(cell)}</td>"
            for cell in (
                line.job.batch_id,
                line.job.status,
                f"{line.job.completed:,} / {line.job.total:,}",
                f"{line.job.expires_at:%Y-%m-%d %H:%M} UTC",
                line.deadline,
                f"${line.cost_usd:,.4f}",
                f"${_money(line.at_once_usd, 4)}",
            )
        )
        + "</tr>"
        for line in report.jobs
    )
    fleet = "".join(
        f"<li>{html.escape(use.tier)}: {_percent(use.with_deferred)} with the deferred work, "
        f"{_percent(use.without_deferred)} without</li>"
        for use in report.fleet
    )
    summary = (
        f"{report.requests:,} deferred requests cost ${report.cost_usd:,.4f} as charged, "
        f"against ${_money(report.at_once_usd, 4)} at once on {report.at_once_tier}"
        f"{_saved(report.cost_usd, report.at_once_usd)}."
    )
    return (
        f"<h2>Deferred work</h2><p class=sub>{html.escape(summary)} A self-hosted call is "
        "charged its GPU time, though the fleet is billed busy or idle.</p>"
        + (f"<p class=sub>Self-hosted utilization:</p><ul>{fleet}</ul>" if fleet else "")
        + f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _saved(cost: Decimal, at_once: Decimal | None) -> str:
    if not at_once:
        return ""
    return f" ({float((at_once - cost) / at_once) * 100:.1f}% less deferred)"


def _money(value: Decimal | None, places: int = 10) -> str:
    return "n/a (no price)" if value is None else f"{value:.{places}f}"


def _percent(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.4g}%"


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
