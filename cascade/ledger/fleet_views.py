"""The fleet section of ``cascade report`` as people read it: lines for the terminal and a table
for the HTML page (the numbers: :mod:`cascade.ledger.fleet_report`)."""

from __future__ import annotations

import html
from decimal import Decimal

from cascade.core.fleet_cost import FleetCost
from cascade.ledger.fleet_report import FleetLine, FleetReport

__all__ = ["fleet_html", "format_fleet"]


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
        f"(charged {line.charged_usd:.6f} USD in the ledger, call by call)"
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
        *_break_even_lines(line, cost),
    ]


def _break_even_lines(line: FleetLine, cost: FleetCost) -> list[str]:
    if line.api_tier is None:
        return []
    even = line.break_even
    if even is None or even.tokens_per_day is None:
        why = "no traffic to take the mix from" if not line.served.tokens else "it has no price"
        return [f"    break-even     unknown against {line.api_tier}: {why}"]
    text = (
        f"    break-even     {even.tokens_per_day:,.0f} tokens/day against {line.api_tier} "
        f"({_per_m(even.api_usd_per_mtok)} USD per 1M tokens of this mix there); served "
        f"{cost.served_tokens * 24 / cost.hours:,.0f} tokens/day in the window"
    )
    if not even.reachable and even.fleet_tokens_per_day is not None:
        text += f"; more than the {even.fleet_tokens_per_day:,.0f} a day this fleet can serve"
    return [text]


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
            "break-even tokens/day",
        )
    )
    rows = "".join(_html_row(line) for line in report.tiers)
    return (
        "<h2>Self-hosted fleet</h2><p class=sub>What the GPUs were billed against what they "
        f"served, {html.escape(_window(report))}. Nominal is what the ledger charges call by "
        "call (GPU time at the batch the call's workload is served at: a floor); effective "
        "spreads the whole bill, idle hours included, over the tokens served through this "
        "proxy. Break-even: the tokens a day at which the bill equals this traffic's price on "
        "the API tier named.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _break_even_cell(line: FleetLine) -> str:
    even = line.break_even
    if even is None or even.tokens_per_day is None:
        return "—"
    beyond = "" if even.reachable else " (beyond the fleet)"
    return f"{even.tokens_per_day:,.0f} vs {line.api_tier}{beyond}"


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
        _break_even_cell(line),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
