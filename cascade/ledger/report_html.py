"""The report as one self-contained page a person reads in ten seconds.

At the top, the headline: what was spent, what it saved against sending everything to the
frontier tier, the cost per useful token, and what escalations and spills did. Below it, cost over
time, the tier mix and the cost per useful token by tier (on a log scale, so a self-hosted tier's
cents stay visible beside the frontier's dollars), why calls were not the answer, and tables by
tier and, where requests name tenants, by tenant; where keys have budgets, the tenant view adds
a Budgets table (each tenant's keys, then the tenant's sum). Money is rounded for people; the
exact figures are in ``cascade report --json`` and ``cascade export``. Charts are PNGs inlined as
base64 (no external files); matplotlib (Agg) is imported only when a page is rendered.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cascade.ledger.budget_report import BudgetReport, BudgetRow
from cascade.ledger.cache_report import cache_html
from cascade.ledger.canary_report import canary_html
from cascade.ledger.deferred_report import deferred_html
from cascade.ledger.fleet_views import fleet_html
from cascade.ledger.reports import GroupStats, Report
from cascade.ledger.shadow_report import shadow_html

_STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1.5em 2em; max-width: 1200px;
       color: #1f2328; }
h1 { font-size: 1.4em; margin: 0 0 0.2em; }
h2 { font-size: 1.05em; margin: 1.6em 0 0.5em; }
.sub { color: #57606a; margin: 0 0 1em; }
.headline { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 1em; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: 0.8em 1em; }
.card .label { color: #57606a; font-size: 0.85em; }
.card .value { font-size: 1.8em; font-weight: 600; margin: 0.15em 0; }
.card .note { color: #57606a; font-size: 0.85em; }
.good { color: #1a7f37; }
.bad { color: #cf222e; }
.charts { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 1em; }
.charts img { width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border-bottom: 1px solid #d0d7de; padding: 0.35em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { color: #57606a; font-weight: 500; }
tr.sum td { font-weight: 600; }
table.budgets td:nth-child(2) { white-space: nowrap; }
.foot { color: #57606a; font-size: 0.85em; margin-top: 2em; }
"""

COLUMNS = ("", "requests", "share", "cost", "per 1M useful tok", "saved", "escalated", "spilled")


def usd(value: Decimal | None) -> str:
    """Dollars for people: cents from one cent up, two significant digits below, '—' for None."""
    if value is None:
        return "—"
    sign = "-" if value < 0 else ""
    amount = abs(value)
    if amount == 0:
        return "$0"
    if amount >= 100:
        return f"{sign}${amount:,.0f}"
    if amount >= Decimal("0.01"):
        return f"{sign}${amount:,.2f}"
    return f"{sign}${float(amount):.2g}"


def pct(value: float | None) -> str:
    """A 0..1 share as a whole-ish percentage for people; '—' for None."""
    if value is None:
        return "—"
    return f"{value * 100:.1f}%" if value < 0.1 else f"{value * 100:.0f}%"


def saved(stats: GroupStats, frontier: str) -> str:
    """What a group saved against the frontier; nothing to say for the frontier's own row."""
    if stats.key == frontier or stats.savings_usd is None:
        return "—"
    share = "" if stats.savings_pct is None else f" ({pct(stats.savings_pct / 100)})"
    return usd(stats.savings_usd) + share


def table_cells(stats: GroupStats, report: Report) -> list[str]:
    """One row of a table, as text."""
    return [
        stats.key,
        f"{stats.requests:,}",
        pct(stats.requests / report.total.requests if report.total.requests else None),
        usd(stats.cost_usd),
        usd(stats.cost_per_million_useful),
        saved(stats, report.frontier_tier),
        pct(stats.escalation_rate),
        pct(stats.spill_rate),
    ]


def render_html(report: Report, budgets: BudgetReport | None = None) -> str:
    """The whole page: headline, charts, reasons and tables (with ``budgets``' table when any
    key has a budget)."""
    total = report.total
    window = f"since {report.since:%Y-%m-%d %H:%M} UTC" if report.since else "over all time"
    charts = [
        _chart_timeline(report.timeline),
        _chart_tier_mix(total.tier_shares),
        _chart_cost_per_useful(report),
    ]
    images = "".join(
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">' for alt, data in charts
    )
    sections = [
        f"<h1>cascade cost report</h1><p class=sub>Policy <b>{html.escape(report.policy)}</b>, "
        f"{total.requests:,} requests {html.escape(window)}.</p>",
        _headline(report),
        f"<h2>Over time and by tier</h2><div class=charts>{images}</div>",
        _reasons(report),
        "<h2>By tier</h2>" + _table(report.tiers, report),
    ]
    if report.caching is not None:
        sections.append(cache_html(report.caching))
    if report.fleet is not None:
        sections.append(fleet_html(report.fleet))
    if report.deferred is not None:
        sections.append(deferred_html(report.deferred))
    if report.shadow is not None:
        sections.append(shadow_html(report.shadow))
    if report.canary:
        sections.append(canary_html(report.canary))
    if report.has_tenants:
        sections.append("<h2>By tenant</h2>" + _table(report.tenants, report))
    if budgets is not None and budgets.keys:
        sections.append(_budgets(budgets))
    sections.append(
        "<p class=foot>Money is rounded here; <code>cascade report --json</code> and "
        "<code>cascade export</code> give the exact figures. "
        f"{html.escape(_savings_note(report))}</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cascade cost report</title><style>{_STYLE}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _headline(report: Report) -> str:
    total = report.total
    escalated = round(total.escalation_rate * total.requests)
    spilled = round(total.spill_rate * total.requests)
    frontier = html.escape(report.frontier_tier)
    everything = html.escape(usd(total.counterfactual_usd))
    share = pct(abs(total.savings_pct or 0) / 100)
    if total.savings_usd is None:
        savings, savings_note = "unknown", "the frontier tier has no price in the policy"
    elif total.savings_usd >= 0:
        savings = f"<span class=good>{html.escape(usd(total.savings_usd))}</span>"
        savings_note = f"{share} less than all on {frontier} ({everything})"
    else:
        savings = f"<span class=bad>{html.escape(usd(-total.savings_usd))} more</span>"
        savings_note = f"{share} more than all on {frontier} ({everything})"
    cards = [
        ("spent", html.escape(usd(total.cost_usd)), f"{total.requests:,} requests"),
        ("saved against all-frontier", savings, savings_note),
        (
            "per 1M useful tokens",
            html.escape(usd(total.cost_per_million_useful)),
            f"{total.useful_tokens:,} useful tokens delivered",
        ),
        (
            "escalated · spilled",
            f"{escalated:,} · {spilled:,}",
            f"{pct(total.escalation_rate)} re-asked a stronger tier; {pct(total.spill_rate)} "
            f"moved off a busy or failing tier; {pct(total.error_rate)} failed",
        ),
    ]
    if total.verified_rate or total.evidence_cost_usd:
        verify_escalated = round(total.verify_escalation_rate * total.requests)
        cards.append(
            (
                "escalated by the verifier",
                f"{verify_escalated:,}",
                f"{pct(total.verified_rate)} of requests verified; the evidence (witnesses, "
                f"samples) cost {html.escape(usd(total.evidence_cost_usd))}",
            )
        )
    return (
        '<div class=headline id="headline">'
        + "".join(
            f"<div class=card><div class=label>{label}</div><div class=value>{value}</div>"
            f"<div class=note>{note}</div></div>"
            for label, value, note in cards
        )
        + "</div>"
    )


def _reasons(report: Report) -> str:
    if not report.reasons:
        return "<h2>Why calls were not the answer</h2><p>Every call was the answer.</p>"
    words = {
        "escalated": "answer rejected, escalated",
        "failed": "call failed",
        "evidence failed": "witness call failed",
    }
    rows = "".join(
        f"<tr><td>{html.escape(words.get(kind, kind))}: {html.escape(reason)}</td>"
        f"<td>{count:,}</td></tr>"
        for kind, reason, count in report.reasons[:12]
    )
    return (
        "<h2>Why calls were not the answer</h2><table><thead><tr><th>reason</th>"
        f"<th>calls</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _table(groups: Sequence[GroupStats], report: Report) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in table_cells(g, report))
        + "</tr>"
        for g in [*groups, report.total]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


BUDGET_COLUMNS = (
    "tenant / key",
    "period",
    "limit",
    "settled",
    "leased",
    "left",
    "self-hosted",
    "spent (window)",
    "per 1M useful tok",
    "saved",
)


def _budgets(budgets: BudgetReport) -> str:
    """Each tenant's budgeted keys, then the tenant's sum (budgets now, spend in the window)."""

    def cells(row: BudgetRow) -> list[str]:
        if row.key_id is None:
            label = f"{row.tenant} ({row.keys} key{'s' * (row.keys != 1)})"
        else:
            label = f"\u2003{row.key_id}" + (f" ({row.name[:40]})" if row.name else "")
        start = "" if row.period_start is None else f" from {row.period_start:%Y-%m-%d}"
        return [
            label,
            row.period + start,
            *(usd(v) for v in (row.limit_usd, row.settled_usd, row.leased_usd, row.left_usd)),
            usd(row.self_hosted_usd),
            usd(row.window.cost_usd),
            usd(row.window.cost_per_million_useful),
            usd(row.window.savings_usd),
        ]

    rows = []
    for tenant in budgets.tenants:
        for row in (*(k for k in budgets.keys if k.tenant == tenant.tenant), tenant):
            css = " class=sum" if row.key_id is None else ""
            rows.append(
                f"<tr{css}>"
                + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells(row))
                + "</tr>"
            )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in BUDGET_COLUMNS)
    return (
        f'<h2 id="budgets">Budgets</h2><p class=sub>Budgets in the current period (UTC) as of '
        f"{budgets.now:%Y-%m-%d %H:%M} UTC; left = limit - settled - leased (leased: held by "
        "workers). Self-hosted spend is beside the budget, not in it. Spent, per 1M useful "
        "tokens and saved are the report's window.</p>"
        f"<table class=budgets><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _savings_note(report: Report) -> str:
    if not report.frontier_priced:
        return f"Savings are unknown: the frontier tier {report.frontier_tier} has no price."
    return (
        f"Savings compare each request with its cost on the frontier tier "
        f"{report.frontier_tier} (same prompt and answer tokens)."
    )


def _chart_timeline(timeline: Sequence[tuple[str, Decimal]]) -> tuple[str, str]:
    fig, ax = _figure()
    labels = [label for label, _ in timeline]
    ax.bar(range(len(labels)), [float(v) for _, v in timeline], color="#0969da")
    step = max(1, len(labels) // 8)
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=30, ha="right", fontsize=7)
    ax.set_title("cost over time (USD)", fontsize=10)
    return "cost over time", _png(fig)


def _chart_tier_mix(shares: dict[str, float]) -> tuple[str, str]:
    fig, ax = _figure()
    names = list(shares)
    ax.barh(names, [shares[n] * 100 for n in names], color="#8250df")
    for y, name in enumerate(names):
        ax.text(shares[name] * 100, y, f" {shares[name] * 100:.0f}%", va="center", fontsize=8)
    ax.set_xlim(0, 110)
    ax.set_title("tier mix (% of requests)", fontsize=10)
    return "tier mix", _png(fig)


def _chart_cost_per_useful(report: Report) -> tuple[str, str]:
    fig, ax = _figure()
    groups = [g for g in report.tiers if g.cost_per_million_useful]
    ax.barh([g.key for g in groups], [float(g.cost_per_million_useful or 0) for g in groups])
    if groups:
        ax.set_xscale("log")
    for y, g in enumerate(groups):
        ax.text(
            float(g.cost_per_million_useful or 0),
            y,
            " " + usd(g.cost_per_million_useful),
            va="center",
            fontsize=8,
        )
    ax.set_title("USD per 1M useful tokens (log scale)", fontsize=10)
    return "cost per useful token", _png(fig)


def _figure() -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(5, 3.2), layout="constrained")
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    # Imported on use: matplotlib takes most of a second to import, and only pages need it.
    import matplotlib  # noqa: PLC0415 (lazy, see above)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (lazy, see above)

    return plt
