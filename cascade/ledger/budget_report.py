"""Budgets in the report: each key's budget now, beside what its requests cost in the window.

One row per key that has a budget (:class:`~cascade.ledger.queries.KeyBudget`): its period (a
UTC day or month) and when the current one began, the limit, what was settled, what workers hold
leased, what is left (``limit - settled - leased``: what no worker holds and nothing has spent)
and the self-hosted spend recorded beside the budget (policies with ``budgets.on_spent:
self_hosted``). Beside those, the key's requests in the report's window: their cost, cost per
useful token and savings against the frontier tier (the formulas of :mod:`cascade.ledger.reports`).
One row per tenant sums its keys' rows. The budget numbers are the current period's whatever the
window; the window's numbers are the window's whatever the period.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from cascade.core.pricing import Rates
from cascade.ledger.queries import KeyBudget, RequestFacts
from cascade.ledger.report_text import money
from cascade.ledger.reports import GroupStats, summarize

MIXED = "mixed"
"""A tenant's period when its keys' periods differ."""
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One key's budget (or one tenant's, summed over its keys) and its spend in the window."""

    tenant: str
    key_id: str | None
    """None on a tenant's row."""
    name: str | None
    period: str
    """``day``, ``month``, or ``mixed`` on a tenant whose keys' periods differ."""
    period_start: datetime | None
    """When the current period began (None when mixed)."""
    limit_usd: Decimal
    settled_usd: Decimal
    leased_usd: Decimal
    self_hosted_usd: Decimal
    window: GroupStats
    """The key's (or the tenant's keys') requests in the report's window."""
    keys: int = 1

    @property
    def left_usd(self) -> Decimal:
        """Neither spent nor held by a worker (negative when a budget was lowered below that)."""
        return self.limit_usd - self.settled_usd - self.leased_usd


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """The budgets part of a report: key rows (by tenant, then key id) and tenant rows."""

    now: datetime
    keys: tuple[BudgetRow, ...]
    tenants: tuple[BudgetRow, ...]


def build_budgets(
    budgets: Sequence[KeyBudget],
    facts: Sequence[RequestFacts],
    *,
    frontier_rates: Rates | None,
    now: datetime,
) -> BudgetReport:
    """Each budgeted key's row and each tenant's (the sum of its keys')."""
    by_key: dict[str, list[RequestFacts]] = defaultdict(list)
    for fact in facts:
        if fact.key_id is not None:
            by_key[fact.key_id].append(fact)
    keys = tuple(
        BudgetRow(
            tenant=b.tenant,
            key_id=b.key_id,
            name=b.name,
            period=b.period,
            period_start=b.spend.period_start,
            limit_usd=b.spend.limit_usd,
            settled_usd=b.spend.settled_usd,
            leased_usd=b.spend.leased_usd,
            self_hosted_usd=b.spend.self_hosted_usd,
            window=summarize(b.key_id, by_key[b.key_id], frozenset(), frontier_rates),
        )
        for b in budgets
    )
    tenants: dict[str, list[BudgetRow]] = defaultdict(list)
    for row in keys:
        tenants[row.tenant].append(row)
    return BudgetReport(
        now=now,
        keys=keys,
        tenants=tuple(
            _tenant_row(name, rows, by_key, frontier_rates)
            for name, rows in sorted(tenants.items())
        ),
    )


def _tenant_row(
    tenant: str,
    rows: Sequence[BudgetRow],
    by_key: dict[str, list[RequestFacts]],
    frontier_rates: Rates | None,
) -> BudgetRow:
    periods = {(row.period, row.period_start) for row in rows}
    period, start = periods.pop() if len(periods) == 1 else (MIXED, None)
    facts = [fact for row in rows for fact in by_key[row.key_id or ""]]
    return BudgetRow(
        tenant=tenant,
        key_id=None,
        name=None,
        period=period,
        period_start=start,
        limit_usd=sum((row.limit_usd for row in rows), _ZERO),
        settled_usd=sum((row.settled_usd for row in rows), _ZERO),
        leased_usd=sum((row.leased_usd for row in rows), _ZERO),
        self_hosted_usd=sum((row.self_hosted_usd for row in rows), _ZERO),
        window=summarize(tenant, facts, frozenset(), frontier_rates),
        keys=len(rows),
    )


def budgets_json(report: BudgetReport) -> dict[str, Any]:
    """JSON-ready data: every amount an exact decimal string (never a key's hash or secret)."""
    return {
        "now": report.now.isoformat(),
        "keys": [_row_json(row) for row in report.keys],
        "tenants": [_row_json(row) for row in report.tenants],
    }


def _row_json(row: BudgetRow) -> dict[str, Any]:
    per_token = row.window.cost_per_useful_token
    savings = row.window.savings_usd
    identity: dict[str, Any] = (
        {"key_id": row.key_id, "name": row.name, "tenant": row.tenant}
        if row.key_id is not None
        else {"tenant": row.tenant, "keys": row.keys}
    )
    return identity | {
        "period": row.period,
        "period_start": None if row.period_start is None else row.period_start.isoformat(),
        "limit_usd": _exact(row.limit_usd),
        "settled_usd": _exact(row.settled_usd),
        "leased_usd": _exact(row.leased_usd),
        "left_usd": _exact(row.left_usd),
        "self_hosted_usd": _exact(row.self_hosted_usd),
        "window": {
            "requests": row.window.requests,
            "useful_tokens": row.window.useful_tokens,
            "cost_usd": _exact(row.window.cost_usd),
            "cost_per_useful_token_usd": None if per_token is None else _exact(per_token),
            "savings_usd": None if savings is None else _exact(savings),
        },
    }


def _exact(value: Decimal) -> str:
    # Fixed-point: str() would print a nano-dollar zero as "0E-9".
    return format(value, "f")


def format_budgets(report: BudgetReport) -> str:
    """The budgets as blocks of lines (one per key, then one per tenant); empty without any."""
    if not report.keys:
        return ""
    lines = [
        f"budgets now ({report.now.isoformat(timespec='seconds')}), spend in the window beside"
    ]
    for row in (*report.keys, *report.tenants):
        if row.key_id is not None:
            name = f" ({row.name})" if row.name else ""
            title = f"budget key {row.key_id}{name}, tenant {row.tenant}"
        else:
            title = f"budget tenant {row.tenant} ({row.keys} key{'s' * (row.keys != 1)})"
        start = "" if row.period_start is None else f" from {row.period_start:%Y-%m-%d %H:%M} UTC"
        lines += [
            "",
            f"== {title} ==",
            f"  period                {row.period}{start}",
            f"  limit                 {money(row.limit_usd)} USD",
            f"  settled               {money(row.settled_usd)} USD",
            f"  leased                {money(row.leased_usd)} USD (held by workers)",
            f"  left                  {money(row.left_usd)} USD",
            f"  self-hosted           {money(row.self_hosted_usd)} USD (beside the budget)",
            f"  window                {_window_line(row.window)}",
        ]
    return "\n".join(lines)


def _window_line(stats: GroupStats) -> str:
    per_token = stats.cost_per_useful_token
    savings = "unknown" if stats.savings_usd is None else f"{money(stats.savings_usd)} USD"
    return (
        f"{stats.requests} request{'' if stats.requests == 1 else 's'}, "
        f"cost {money(stats.cost_usd)} USD, per useful token "
        + ("n/a" if per_token is None else f"{per_token:.6E} USD")
        + f", saved {savings}"
    )
