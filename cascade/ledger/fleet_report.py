"""What the self-hosted tiers really cost: each fleet's bill against what it served.

The ledger charges a call on a self-hosted tier at its full-batch price (the nominal cost, a
floor); the fleet is billed for every hour, busy or idle. Per self-hosted tier of the policy,
over the report's window (:mod:`cascade.core.fleet_cost` has the formulas):

- the window: the ``--since`` window up to now (the fleet is billed for all of it, traffic or
  not), or for ``--since all`` the span from the ledger's first to its last request;
- served tokens: prompt + completion tokens of every call to the tier through this proxy
  (whatever its role or outcome: the GPU did the work); prompt tokens the engine found in its
  prefix cache count as served but take no GPU time, as the ledger prices them;
- useful tokens: those of requests the tier answered, as the rest of the report counts them;
- billed, capacity, utilization, effective $/M tokens and $/useful token from the tier's
  ``price`` (``gpus``, ``gpu_usd_per_hour``, ``ops_usd_per_month``); the busy GPU time is what
  the ledger charged ÷ the GPU's rent, each call at the batch its workload was priced at (full,
  or smaller under a ``max_tpot_ms``), and capacity is at ``tokens_per_second``, the full batch;
- nominal $/M tokens: what the ledger charged for the tier's calls ÷ served tokens, and
  effective ÷ nominal (1 ÷ utilization without operations cost).

A self-hosted tier priced per token (``input_usd_per_mtok``...) states no bill: it is shown with
its traffic and charge only. Traffic that reached the engines without passing through this proxy
is not in the ledger, so it is not counted here, and a fleet shared with other clients looks
less used than it is. The engines' own token counters count it: the proxy shows them live on
``/metrics`` (``cascade_engine_prompt_tokens_total``, ``..._generation_tokens_total``), but keeps
no history of them, so a report over a past window cannot use them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from cascade.core.fleet_cost import Fleet, FleetCost, Served, fleet_cost, fleet_of
from cascade.ledger.queries import RequestFacts
from cascade.policy.model import Tier

__all__ = [
    "FleetLine",
    "FleetReport",
    "build_fleet_report",
    "fleet_html",
    "fleet_json",
    "format_fleet",
]

WindowKind = Literal["since", "first_to_last_request"]
_MICROS_PER_HOUR = Decimal(3_600_000_000)
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
_COST_FIELDS = (
    "billed_usd",
    "capacity_tokens",
    "busy_gpu_hours",
    "utilization",
    "effective_usd_per_mtok",
    "effective_usd_per_useful_token",
    "effective_over_nominal",
)


@dataclass(frozen=True, slots=True)
class FleetLine:
    """One self-hosted tier over the window."""

    tier: str
    calls: int
    served: Served
    useful_tokens: int
    charged_usd: Decimal
    """What the ledger charged for the tier's calls (the nominal, full-batch price)."""
    fleet: Fleet | None
    """None: the tier is priced per token, so no bill is stated."""
    cost: FleetCost | None
    """None without a fleet, or over a window of no length."""

    @property
    def nominal_usd_per_mtok(self) -> Decimal | None:
        """What the ledger charged per million served tokens (None: nothing served)."""
        tokens = self.served.tokens
        return self.charged_usd / tokens * _MILLION if tokens else None


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Every self-hosted tier's bill against its work over one window."""

    start: datetime | None
    """None: the ledger holds no request (for ``--since all``)."""
    end: datetime | None
    kind: WindowKind
    hours: Decimal
    tiers: tuple[FleetLine, ...]


def build_fleet_report(
    facts: Sequence[RequestFacts],
    tiers: Iterable[Tier],
    *,
    since: datetime | None,
    now: datetime,
) -> FleetReport:
    """The self-hosted ``tiers``' fleets over the window: ``since`` to ``now``, or (``since``
    None) the first to the last request of ``facts`` (oldest first)."""
    kind: WindowKind = "since" if since is not None else "first_to_last_request"
    start, end = (since, now) if since is not None else _span(facts)
    hours = _ZERO if start is None or end is None else _hours(end - start)
    lines = tuple(_line(t, facts, hours) for t in tiers if t.kind == "self_hosted")
    return FleetReport(start, end, kind, hours, lines)


def _span(facts: Sequence[RequestFacts]) -> tuple[datetime | None, datetime | None]:
    return (facts[0].created_at, facts[-1].created_at) if facts else (None, None)


def _hours(span: timedelta) -> Decimal:
    """The span in hours, exactly (a negative one counts none)."""
    micros = (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
    return max(Decimal(micros) / _MICROS_PER_HOUR, _ZERO)


def _line(tier: Tier, facts: Sequence[RequestFacts], hours: Decimal) -> FleetLine:
    calls = [a for f in facts for a in f.attempts if a.tier == tier.name]
    served = Served(
        prompt_tokens=sum(a.prompt_tokens for a in calls),
        completion_tokens=sum(a.completion_tokens for a in calls),
        cached_tokens=sum(min(a.cached_tokens, a.prompt_tokens) for a in calls),
    )
    useful = sum(f.useful_tokens for f in facts if f.final_tier == tier.name)
    charged = sum((a.cost_usd for a in calls), _ZERO)
    fleet = fleet_of(tier)
    cost = None
    if fleet is not None and hours > 0:
        cost = fleet_cost(fleet, hours, served, useful_tokens=useful, nominal=charged)
    return FleetLine(tier.name, len(calls), served, useful, charged, fleet, cost)


def format_fleet(report: FleetReport) -> list[str]:
    """The fleet section as text lines ([] when the policy has no self-hosted tier)."""
    if not report.tiers:
        return []
    lines = [f"self-hosted fleet: what was billed against what was served; {_window(report)}"]
    for line in report.tiers:
        lines += _tier_lines(line)
    return lines


def _window(report: FleetReport) -> str:
    if report.start is None or report.end is None:
        return "no request in the ledger, so no window"
    span = f"{report.start:%Y-%m-%d %H:%M:%S} to {report.end:%Y-%m-%d %H:%M:%S} UTC"
    what = "the --since window" if report.kind == "since" else "first to last request"
    return f"window {_duration(report.hours)} ({what}, {span})"


def _tier_lines(line: FleetLine) -> list[str]:
    served = line.served
    head = f"  == {line.tier} =="
    traffic = (
        f"    served         {served.tokens:,} tokens in {_count(line.calls, 'call')} through "
        f"this proxy (prompt {served.prompt_tokens:,}, of which {served.cached_tokens:,} from "
        f"the engine's prefix cache, no GPU time; completion {served.completion_tokens:,}); "
        f"useful {line.useful_tokens:,}"
    )
    nominal = (
        f"    nominal        {_per_m(line.nominal_usd_per_mtok)} USD per 1M tokens "
        f"(charged {line.charged_usd:.6f} USD in the ledger, at full batch)"
    )
    fleet, cost = line.fleet, line.cost
    if fleet is None:
        note = "    bill           unknown: priced per token, the policy states no GPU bill"
        return [head, note, traffic, nominal]
    ops = fleet.ops_usd_per_month
    bill = (
        f"    bill           {_count(fleet.gpus, 'GPU')} x {_plain(fleet.gpu_usd_per_hour)} "
        "USD/h" + (f" + {_plain(ops)} USD/month operations" if ops else "")
    )
    if cost is None:
        return [head, bill + ": a window of no length bills nothing", traffic, nominal]
    return [
        head,
        f"{bill} = {cost.billed_usd:.4f} USD over {_duration(cost.hours)}",
        traffic,
        f"    capacity       {cost.capacity_tokens:,.0f} output tokens at full batch "
        f"({_plain(fleet.tokens_per_second)} tok/s per GPU)",
        f"    utilization    {_percent(cost.utilization)} (busy {_duration(cost.busy_gpu_hours)} "
        f"of {_duration(fleet.gpus * cost.hours)} of GPU time)",
        f"    effective      {_per_m(cost.effective_usd_per_mtok)} USD per 1M tokens, "
        f"{_per_token(cost.effective_usd_per_useful_token)} USD per useful token",
        nominal + f"; effective / nominal {_times(cost.effective_over_nominal)}",
    ]


def _duration(hours: Decimal) -> str:
    """Hours as people read them: seconds under a minute, minutes under an hour."""
    if hours * 60 < 1:
        return f"{hours * 3600:.1f} s"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _plain(value: Decimal) -> str:
    """A price or rate as written (2.3, 2000), without a trailing zero or exponent."""
    return f"{value.normalize():f}"


def _per_m(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _per_token(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.6E}"


def _percent(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.4g}%"


def _times(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{float(value):,.2f}x"


def fleet_json(report: FleetReport) -> dict[str, Any]:
    """The fleet section as JSON-ready data: money and ratios as exact decimal strings."""
    return {
        "window": report.kind,
        "start": report.start.isoformat() if report.start else None,
        "end": report.end.isoformat() if report.end else None,
        "hours": str(report.hours),
        "tiers": [_line_json(line) for line in report.tiers],
    }


def _line_json(line: FleetLine) -> dict[str, Any]:
    fleet = line.fleet
    return {
        "tier": line.tier,
        "priced_by": "token" if fleet is None else "gpu",
        "gpus": None if fleet is None else fleet.gpus,
        "gpu_usd_per_hour": None if fleet is None else str(fleet.gpu_usd_per_hour),
        "ops_usd_per_month": None if fleet is None else str(fleet.ops_usd_per_month),
        "calls": line.calls,
        "prompt_tokens": line.served.prompt_tokens,
        "cached_tokens": line.served.cached_tokens,
        "completion_tokens": line.served.completion_tokens,
        "served_tokens": line.served.tokens,
        "useful_tokens": line.useful_tokens,
        "charged_usd": str(line.charged_usd),
        "nominal_usd_per_mtok": _text(line.nominal_usd_per_mtok),
    } | _cost_json(line.cost)


def _cost_json(cost: FleetCost | None) -> dict[str, str | None]:
    """The bill's figures (all null for a tier priced per token or a window of no length)."""
    values = (
        (None,) * 7
        if cost is None
        else (
            cost.billed_usd,
            cost.capacity_tokens,
            cost.busy_gpu_hours,
            cost.utilization,
            cost.effective_usd_per_mtok,
            cost.effective_usd_per_useful_token,
            cost.effective_over_nominal,
        )
    )
    return {name: _text(value) for name, value in zip(_COST_FIELDS, values, strict=True)}


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def fleet_html(report: FleetReport) -> str:
    """The fleet section of the HTML page ('' when the policy has no self-hosted tier)."""
    if not report.tiers:
        return ""
    head = "".join(
        f"<th>{name}</th>"
        for name in (
            "tier",
            "GPUs",
            "billed",
            "served tokens",
            "utilization",
            "effective $/1M",
            "nominal $/1M",
            "effective ÷ nominal",
            "$ per useful token",
        )
    )
    rows = "".join(_html_row(line) for line in report.tiers)
    return (
        "<h2>Self-hosted fleet</h2><p class=sub>What the GPUs were billed against what they "
        f"served, {html.escape(_window(report))}. Nominal is the full-batch price the ledger "
        "charges per call; effective spreads the whole bill, idle hours included, over the "
        "tokens served through this proxy.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _html_row(line: FleetLine) -> str:
    fleet, cost = line.fleet, line.cost
    cells = [
        line.tier,
        "priced per token" if fleet is None else str(fleet.gpus),
        "—" if cost is None else f"${cost.billed_usd:,.2f}",
        f"{line.served.tokens:,}",
        "—" if cost is None else _percent(cost.utilization),
        "—" if cost is None else f"${_per_m(cost.effective_usd_per_mtok)}",
        f"${_per_m(line.nominal_usd_per_mtok)}",
        "—" if cost is None else _times(cost.effective_over_nominal),
        "—" if cost is None else _per_token(cost.effective_usd_per_useful_token),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
