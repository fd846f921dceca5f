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
  effective ÷ nominal (1 ÷ utilization without operations cost);
- break-even: the tokens a day at which the fleet's daily bill equals what the same traffic (its
  mix of prompt, cached and completion tokens in the window) would cost on the API tier it
  would otherwise go to (its ``overflow`` when that is an API tier, else the policy's last API
  tier), beside the tokens a day it served in the window.

How it reads: :mod:`cascade.ledger.fleet_views` (text and HTML); :func:`fleet_json` for ``--json``.

A self-hosted tier priced per token (``input_usd_per_mtok``...) states no bill: it is shown with
its traffic and charge only. Traffic that reached the engines without passing through this proxy
is not in the ledger, so it is not counted here, and a fleet shared with other clients looks
less used than it is. The engines' own token counters count it: the proxy shows them live on
``/metrics`` (``cascade_engine_prompt_tokens_total``, ``..._generation_tokens_total``), but keeps
no history of them, so a report over a past window cannot use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from cascade.core.fleet_cost import (
    BreakEven,
    Fleet,
    FleetCost,
    Served,
    break_even,
    fleet_cost,
    fleet_of,
)
from cascade.core.pricing import Rates
from cascade.ledger.queries import RequestFacts
from cascade.policy.model import Tier

__all__ = [
    "FleetLine",
    "FleetReport",
    "build_fleet_report",
    "fleet_json",
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
    api_tier: str | None = None
    """The API tier the break-even is against (None: the policy has none)."""
    break_even: BreakEven | None = None
    """None without a fleet, without traffic, or when the API tier has no price."""

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
    tiers: Sequence[Tier],
    *,
    since: datetime | None,
    now: datetime,
    rates: Mapping[str, Rates | None] | None = None,
) -> FleetReport:
    """The self-hosted ``tiers``' fleets over the window: ``since`` to ``now``, or (``since``
    None) the first to the last request of ``facts`` (oldest first); ``rates`` (by tier name)
    price the API tiers for the break-even."""
    kind: WindowKind = "since" if since is not None else "first_to_last_request"
    start, end = (since, now) if since is not None else _span(facts)
    hours = _ZERO if start is None or end is None else _hours(end - start)
    lines = tuple(
        _with_break_even(_line(t, facts, hours), _alternative(t, tiers), rates or {})
        for t in tiers
        if t.kind == "self_hosted"
    )
    return FleetReport(start, end, kind, hours, lines)


def _alternative(tier: Tier, tiers: Sequence[Tier]) -> Tier | None:
    """The API tier ``tier``'s traffic would otherwise go to: its overflow when that is an API
    tier, else the policy's last API tier."""
    apis = [t for t in tiers if t.kind == "api"]
    overflow = next((t for t in apis if t.name == tier.overflow), None)
    return overflow or (apis[-1] if apis else None)


def _with_break_even(
    line: FleetLine, api: Tier | None, rates: Mapping[str, Rates | None]
) -> FleetLine:
    if api is None:
        return line
    api_rates = rates.get(api.name)
    if line.fleet is None or api_rates is None or not line.served.tokens:
        return replace(line, api_tier=api.name)
    even = break_even(line.fleet, api_rates, line.served)
    return replace(line, api_tier=api.name, break_even=even)


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
    return (
        {
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
        }
        | _cost_json(line.cost)
        | {"break_even": _break_even_json(line)}
    )


def _break_even_json(line: FleetLine) -> dict[str, Any] | None:
    """The break-even against the API tier (null figures when it is unknown; null for a tier
    priced per token or a policy without an API tier)."""
    if line.api_tier is None or line.fleet is None:
        return None
    even = line.break_even
    figures = (
        (None,) * 4
        if even is None
        else (
            even.tokens_per_day,
            even.fleet_tokens_per_day,
            even.fleet_usd_per_day,
            even.api_usd_per_mtok,
        )
    )
    names = ("tokens_per_day", "fleet_tokens_per_day", "fleet_usd_per_day", "api_usd_per_mtok")
    return {
        "api_tier": line.api_tier,
        **{name: _text(value) for name, value in zip(names, figures, strict=True)},
        "reachable": None if even is None else even.reachable,
    }


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
