"""The report as one self-contained HTML page: PNG charts inlined as base64, no external files.

matplotlib (Agg backend) is imported only when a page is rendered, so ``import cascade`` and
``cascade --help`` stay fast.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cascade.ledger.report_text import money, percent
from cascade.ledger.reports import GroupStats, Report

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.charts img { max-width: 32%; margin-right: 1%; }
"""

COLUMNS = (
    "group",
    "requests",
    "prompt tok",
    "cached tok",
    "completion tok",
    "useful tok",
    "cost USD",
    "USD / 1M useful tok",
    "escalation",
    "spill",
    "errors",
    "cache hit",
    "prefix repeat",
    "tier mix",
    "savings USD",
    "savings %",
)


def table_cells(stats: GroupStats) -> list[str]:
    """One row of the page's table, as text."""
    return [
        stats.key,
        str(stats.requests),
        str(stats.prompt_tokens),
        str(stats.cached_tokens),
        str(stats.completion_tokens),
        str(stats.useful_tokens),
        money(stats.cost_usd),
        money(stats.cost_per_million_useful),
        percent(stats.escalation_rate),
        percent(stats.spill_rate),
        percent(stats.error_rate),
        percent(stats.cache_hit_rate),
        percent(stats.prefix_repeat_rate),
        " ".join(f"{tier}={percent(share)}" for tier, share in stats.tier_shares.items()),
        "unknown" if stats.savings_usd is None else money(stats.savings_usd),
        percent(None if stats.savings_pct is None else stats.savings_pct / 100),
    ]


def render_html(report: Report) -> str:
    """The whole page: title, window, charts (cost over time, tier mix, cost per useful token)."""
    charts = [
        _chart_timeline(report.timeline),
        _chart_tier_mix(report.total.tier_shares),
        _chart_cost_per_useful(report),
    ]
    rows = [*report.groups, report.total]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in table_cells(g)) + "</tr>"
        for g in rows
    )
    since = report.since.isoformat() if report.since else "all time"
    frontier = html.escape(report.frontier_tier)
    savings_note = (
        f"Savings compare with sending every request to the frontier tier <b>{frontier}</b>."
        if report.frontier_priced
        else f"Savings unknown: the frontier tier <b>{frontier}</b> has no price in the policy."
    )
    images = "".join(
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">' for alt, data in charts
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>cascade cost report</title><style>{_STYLE}</style></head><body>"
        f"<h1>cascade cost report</h1><p>Policy <b>{html.escape(report.policy)}</b>, "
        f"requests since {html.escape(since)}, grouped by {report.by}. {savings_note}</p>"
        f'<div class="charts">{images}</div>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "</body></html>\n"
    )


def _chart_timeline(timeline: Sequence[tuple[str, Decimal]]) -> tuple[str, str]:
    fig, ax = _figure()
    labels = [label for label, _ in timeline]
    ax.bar(range(len(labels)), [float(v) for _, v in timeline])
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_title("cost over time (USD)")
    return "cost over time", _png(fig)


def _chart_tier_mix(shares: dict[str, float]) -> tuple[str, str]:
    fig, ax = _figure()
    if shares:
        ax.pie(list(shares.values()), labels=list(shares), autopct="%1.1f%%")
    ax.set_title("tier mix (share of requests)")
    return "tier mix", _png(fig)


def _chart_cost_per_useful(report: Report) -> tuple[str, str]:
    fig, ax = _figure()
    groups = [g for g in report.tiers if g.cost_per_million_useful is not None]
    ax.bar(
        [g.key for g in groups],
        [float(g.cost_per_million_useful or 0) for g in groups],
    )
    ax.set_title("USD per 1M useful tokens, by final tier")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return "cost per useful token", _png(fig)


def _figure() -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(5, 3.5), layout="constrained")
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
