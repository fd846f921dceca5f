"""``cascade report`` and ``cascade export``: what the ledger's traffic cost, and its labels.

``cascade report`` prints, per group (final tier, tenant, policy or day), the requests, tokens,
exact cost, cost per useful token, tier mix, escalation/spill/error rates, prefix-cache hits and
the savings against sending everything to the policy's last (frontier) tier; ``--json`` prints
the same as JSON, ``--html FILE`` writes a self-contained page with charts.

``cascade export`` writes the ledger's traffic as labeled-traffic JSONL
(``cascade.training.traffic``).
The ledger never stores prompts, so rows get their prompt only from ``--prompts FILE.jsonl``
(``{"request_id": ..., "prompt": ...}`` per line, logged by the application); rows without one are
written with ``"prompt": null`` and cannot be trained on until joined with their prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cascade.core.pricing import Rates
    from cascade.ledger.reports import GroupStats, Report

_T = TypeVar("_T")

_URL_HELP = (
    "database URL (default: $CASCADE_DATABASE_URL, else sqlite:///cascade.db in the working "
    "directory)"
)
_SINCE_HELP = "only requests from the last 7d, 24h, 30m, … or 'all' (default: %(default)s)"
_POLICY_HELP = (
    "policy file or shipped name whose last tier prices the 'everything on the frontier' "
    "counterfactual (default: %(default)s)"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` and ``export`` commands."""
    report = commands.add_parser(
        "report",
        help="cost per useful token, tier mix, escalations and savings from the ledger",
        description="Summarize the ledger: per group, requests, tokens, exact cost, cost per "
        "useful token, tier shares, escalation/spill/error rates, prefix-cache hits and savings "
        "against sending every request to the policy's last tier.",
    )
    report.add_argument("--url", help=_URL_HELP)
    report.add_argument("--since", default="7d", help=_SINCE_HELP)
    report.add_argument(
        "--by", choices=("tier", "tenant", "policy", "day"), default="tier", help="group by"
    )
    report.add_argument("--policy", default="default", help=_POLICY_HELP)
    report.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML page")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.set_defaults(command=_report)

    export = commands.add_parser(
        "export",
        help="write the ledger's traffic as labeled-traffic JSONL for `cascade train`",
        description="Label the ledger's requests (escalated: weak 0 strong 1; useless below the "
        "last tier: weak 0 strong 1; answered by the first tier: 1 1) and write them as JSONL. "
        "The ledger stores no prompts: join them with --prompts, else rows carry prompt null.",
    )
    export.add_argument("--url", help=_URL_HELP)
    export.add_argument("--since", default="all", help=_SINCE_HELP)
    export.add_argument("--policy", default="default", help=_POLICY_HELP)
    export.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl")
    export.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE.jsonl",
        help="JSONL of {request_id, prompt} logged by the application, joined on request_id",
    )
    export.set_defaults(command=_export)


def _report(ns: argparse.Namespace) -> int:
    from cascade.ledger.database import run_with_engine
    from cascade.ledger.reports import build_report, fetch_requests, parse_since, report_json

    since = parse_since(ns.since)
    name, frontier, rates = _frontier(ns.policy)
    facts = run_with_engine(ns.url, lambda engine: fetch_requests(engine, since))
    report = build_report(
        facts, by=ns.by, policy=name, frontier_tier=frontier, frontier_rates=rates, since=since
    )
    if ns.html is not None:
        from cascade.ledger.report_html import render_html

        ns.html.write_text(render_html(report), encoding="utf-8")
    if ns.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(format_report(report))
    if ns.html is not None:
        print(f"wrote {ns.html}", file=sys.stderr)
    return 0


def _export(ns: argparse.Namespace) -> int:
    from cascade.errors import LabeledDataError
    from cascade.ledger.database import run_with_engine
    from cascade.ledger.reports import fetch_requests, label_requests, parse_since, prompts_by_id

    since = parse_since(ns.since)
    _, frontier, rates = _frontier(ns.policy)
    prompts: dict[str, str] = {}
    if ns.prompts is not None:
        try:
            lines = ns.prompts.read_text(encoding="utf-8").split("\n")
            prompts = prompts_by_id(json.loads(line) for line in lines if line.strip())
        except (OSError, UnicodeError, json.JSONDecodeError, AttributeError) as exc:
            raise LabeledDataError(f"{ns.prompts}: cannot read prompts: {exc}") from exc
    facts = run_with_engine(ns.url, lambda engine: fetch_requests(engine, since))
    rows = label_requests(facts, last_tier=frontier, frontier_rates=rates, prompts=prompts)
    with ns.out.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} labeled rows of {len(facts)} requests to {ns.out}")
    missing = sum(1 for row in rows if row["prompt"] is None)
    if missing:
        print(
            f"cascade: warning: {missing} of {len(rows)} rows have no prompt (the ledger never "
            "stores prompts); `cascade train` cannot use them until they are joined with "
            "prompts: pass --prompts FILE.jsonl with {request_id, prompt} per line",
            file=sys.stderr,
        )
    return 0


def format_report(report: Report) -> str:
    """The report as one block of lines per group, then the total."""
    since = report.since.isoformat(timespec="seconds") if report.since else "all time"
    lines = [
        f"cascade report: policy {report.policy}, since {since}, by {report.by}; "
        f"counterfactual tier: {report.frontier_tier}"
        + ("" if report.frontier_priced else " (no price: savings unknown)"),
    ]
    if not report.total.requests:
        lines.append("no requests in the window")
        return "\n".join(lines)
    for stats in (*report.groups, report.total):
        lines += ["", *_group_lines(report.by if stats is not report.total else "", stats)]
    return "\n".join(lines)


def _group_lines(by: str, stats: GroupStats) -> list[str]:
    from cascade.ledger.report_html import money, percent

    per_token = stats.cost_per_useful_token
    title = f"{by} {stats.key}" if by else "total"
    mix = ", ".join(f"{tier} {percent(share)}" for tier, share in stats.tier_shares.items())
    if stats.savings_usd is None:
        savings = "unknown (the frontier tier has no price)"
    else:
        pct = "n/a" if stats.savings_pct is None else f"{stats.savings_pct:.2f}%"
        counterfactual = money(stats.counterfactual_usd)
        savings = f"{money(stats.savings_usd)} USD ({pct}) vs {counterfactual} USD"
    return [
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
    ]


def _frontier(policy: str) -> tuple[str, str, Rates | None]:
    from cascade.core.pricing import tier_rates
    from cascade.policy import load_policy

    loaded = load_policy(policy)
    last = loaded.tiers[-1]
    return loaded.name, last.name, tier_rates(last)
