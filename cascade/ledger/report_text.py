"""The report as plain text for a terminal: one block of lines per group, then the total."""

from __future__ import annotations

from decimal import Decimal

from cascade.ledger.cache_report import format_cache
from cascade.ledger.canary_report import format_canary
from cascade.ledger.deferred_report import format_deferred
from cascade.ledger.fleet_views import format_fleet
from cascade.ledger.reports import GroupStats, Report
from cascade.ledger.shadow_report import format_shadow


def format_report(report: Report) -> str:
    """The report as one block of lines per group, then the total."""
    since = report.since.isoformat(timespec="seconds") if report.since else "all time"
    lines = [
        f"cascade report: policy {report.policy}, since {since}, by {report.by}; "
        f"counterfactual tier: {report.frontier_tier}"
        + ("" if report.frontier_priced else " (no price: savings unknown)"),
    ]
    fleet = format_fleet(report.fleet) if report.fleet is not None else []
    if not report.total.requests:
        lines.append("no requests in the window")
        return "\n".join(lines + (["", *fleet] if fleet else []))
    for stats in (*report.groups, report.total):
        lines += ["", *_group_lines(report.by if stats is not report.total else "", stats)]
    caching = format_cache(report.caching) if report.caching is not None else []
    if caching:
        lines += ["", *caching]
    if fleet:
        lines += ["", *fleet]
    deferred = format_deferred(report.deferred) if report.deferred is not None else []
    if deferred:
        lines += ["", *deferred]
    shadow = format_shadow(report.shadow) if report.shadow is not None else []
    if shadow:
        lines += ["", *shadow]
    if report.canary:
        lines += ["", *format_canary(report.canary)]
    return "\n".join(lines)


def _group_lines(by: str, stats: GroupStats) -> list[str]:
    per_token = stats.cost_per_useful_token
    title = f"{by} {stats.key}" if by else "total"
    mix = ", ".join(f"{tier} {percent(share)}" for tier, share in stats.tier_shares.items())
    if stats.savings_usd is None:
        savings = "unknown (the frontier tier has no price)"
    else:
        pct = "n/a" if stats.savings_pct is None else f"{stats.savings_pct:.2f}%"
        counterfactual = money(stats.counterfactual_usd)
        savings = f"{money(stats.savings_usd)} USD ({pct}) vs {counterfactual} USD"
    lines = [
        f"== {title} ==",
        f"  requests              {stats.requests}",
        f"  tokens                prompt {stats.prompt_tokens}, cached {stats.cached_tokens}, "
        f"completion {stats.completion_tokens}, useful {stats.useful_tokens}",
        f"  cost                  {money(stats.cost_usd)} USD",
        "  cost / useful token   "
        + ("n/a" if per_token is None else f"{per_token:.6E} USD")
        + f" ({money(stats.cost_per_million_useful)} USD per 1M)",
        f"  tier mix              {mix}",
        f"  escalation rate       {percent(stats.escalation_rate)}",
        f"  spill rate            {percent(stats.spill_rate)}",
        f"  error rate            {percent(stats.error_rate)}",
        f"  cache hit rate        {percent(stats.cache_hit_rate)} of prompt tokens; "
        f"prefix seen before {percent(stats.prefix_repeat_rate)} of requests",
        f"  savings vs frontier   {savings}",
        f"  verify step           {_verify_line(stats)}",
    ]
    if stats.trimmed_requests:  # only where a workload caps its history
        lines.append(
            f"  history trimmed       {stats.trimmed_requests} requests, "
            f"{stats.trimmed_tokens} estimated tokens not sent"
        )
    return lines


def _verify_line(stats: GroupStats) -> str:
    if not stats.verified_rate and not stats.evidence_cost_usd:
        return "no answer verified"
    share = stats.evidence_cost_usd / stats.cost_usd if stats.cost_usd else None
    return (
        f"verified {percent(stats.verified_rate)} of requests, escalated by the verifier "
        f"{percent(stats.verify_escalation_rate)}; evidence cost {money(stats.evidence_cost_usd)}"
        f" USD ({percent(None if share is None else float(share))} of cost)"
    )


def money(value: Decimal | None) -> str:
    """Dollars with the ledger's 10 decimal places (exact for stored amounts); 'n/a' for None."""
    return "n/a" if value is None else f"{value:.10f}"


def percent(value: float | None) -> str:
    """A 0..1 share as a percentage with two decimals; 'n/a' for None."""
    return "n/a" if value is None else f"{value * 100:.2f}%"
