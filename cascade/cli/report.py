"""``cascade report`` and ``cascade export``: what the ledger's traffic cost, and its labels.

``cascade report`` prints, per group (final tier, tenant, policy or day), the requests, tokens,
exact cost, cost per useful token, tier mix, escalation/spill/error rates, prefix-cache hits and
the savings against sending everything to the policy's last (frontier) tier; ``--json`` prints
the same as JSON, ``--html FILE`` writes a self-contained page with charts. Where keys have
budgets, each also shows every such key's (and tenant's) budget in the current period: limit,
settled, leased, left and self-hosted spend, beside its spend in the window. Each self-hosted
tier with a GPU price gets its fleet's bill over the window (``gpus`` x $/hour + operations, idle
hours included) against the tokens it served: utilization, and effective against nominal (the
ledger's full-batch) cost per million tokens and per useful token. Batch API jobs get their
status and deadline (met or missed), their cost against running them at once on the last tier,
and each fleet's utilization with and without them.

``cascade export [--labels]`` writes the ledger's traffic as labeled-traffic JSONL
(``cascade.training.traffic``), each row with the numbers the scorer saw (``features``, with
their ``feature_version``), the routing choice's ``propensity`` and whether it was ``explored``:
``cascade train --base MODEL`` adapts a model of the same feature version on them.
The ledger never stores prompts, so rows get their prompt only from ``--prompts FILE.jsonl``
(``{"request_id": ..., "prompt": ...}`` per line, logged by the application); rows with neither
a prompt nor features (a text model routed them) cannot be trained on until joined with prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cascade.core.pricing import Rates
    from cascade.ledger.queries import RequestFacts

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
        "against sending every request to the policy's last tier; each self-hosted tier's "
        "GPU bill over the window against what it served (utilization, effective and nominal "
        "cost per token); then, for each key with a budget and each tenant, the budget now "
        "(limit, settled, leased, left, self-hosted) beside its spend in the window.",
    )
    report.add_argument("--url", help=_URL_HELP)
    report.add_argument("--since", default="7d", help=_SINCE_HELP)
    report.add_argument(
        "--by", choices=("tier", "tenant", "key", "policy", "day"), default="tier", help="group by"
    )
    report.add_argument("--policy", default="default", help=_POLICY_HELP)
    report.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML page")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.set_defaults(command=_report)

    export = commands.add_parser(
        "export",
        help="write the ledger's traffic as labeled-traffic JSONL for `cascade train`",
        description="Label the ledger's requests (escalated by a check or the verify step: "
        "weak 0 strong 1; useless below the last tier: weak 0 strong 1; answered by the first "
        "tier: 1 1) and write them as JSONL, each with the scorer's features and feature "
        "version, the choice's propensity and whether it was explored, and the label's source. "
        "The ledger stores no prompts: `cascade train --base` trains on the features; join "
        "prompts with --prompts for anything else.",
    )
    export.add_argument("--url", help=_URL_HELP)
    export.add_argument(
        "--labels",
        action="store_true",
        help="write labels (what export writes; accepted so the command says what it makes)",
    )
    export.add_argument("--since", default="all", help=_SINCE_HELP)
    export.add_argument(
        "--policy",
        default="default",
        help="policy file or shipped name whose last tier is each label's strong side and prices "
        "its strong cost (default: %(default)s)",
    )
    export.add_argument(
        "--out", type=Path, required=True, metavar="FILE.jsonl", help="where to write the rows"
    )
    export.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE.jsonl",
        help="JSONL of {request_id, prompt} logged by the application, joined on request_id",
    )
    export.set_defaults(command=_export)


def _report(ns: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from cascade.ledger.batch_facts import read_batches
    from cascade.ledger.budget_report import budgets_json, build_budgets, format_budgets
    from cascade.ledger.canary_report import build_canary_report
    from cascade.ledger.deferred_report import build_deferred_report
    from cascade.ledger.fleet_report import build_fleet_report
    from cascade.ledger.learning_facts import read_arms
    from cascade.ledger.queries import read_budgets, read_requests
    from cascade.ledger.report_text import format_report
    from cascade.ledger.reports import build_report, parse_since, report_json
    from cascade.ledger.shadow_facts import read_shadows
    from cascade.ledger.shadow_report import build_shadow_report
    from cascade.policy import load_policy

    now = datetime.now(UTC)
    since = parse_since(ns.since, now)
    name, frontier, rates = _frontier(ns.policy)
    facts = read_requests(ns.url, since)
    by_tier = _tier_rates(ns.policy, facts)
    tiers = load_policy(ns.policy).tiers
    fleet = build_fleet_report(facts, tiers, since=since, now=now, rates=by_tier)
    deferred = build_deferred_report(
        facts,
        read_batches(ns.url, since),
        tiers=tiers,
        fleet=fleet,
        at_once_tier=frontier,
        at_once_rates=rates,
        now=now,
    )
    report = build_report(
        facts,
        by=ns.by,
        policy=name,
        frontier_tier=frontier,
        frontier_rates=rates,
        since=since,
        rates=by_tier,
        fleet=fleet,
        deferred=deferred,
        shadow=build_shadow_report(
            facts, read_shadows(ns.url, since), tier_order=[t.name for t in tiers]
        ),
        canary=build_canary_report(facts, read_arms(ns.url, since)),
    )
    budgets = build_budgets(read_budgets(ns.url, now), facts, frontier_rates=rates, now=now)
    if ns.html is not None:
        from cascade.ledger.report_html import render_html

        ns.html.write_text(render_html(report, budgets), encoding="utf-8")
    if ns.json:
        print(json.dumps(report_json(report) | {"budgets": budgets_json(budgets)}, indent=2))
    else:
        print(format_report(report))
        if budgets.keys:
            print("\n" + format_budgets(budgets))
    if ns.html is not None:
        print(f"wrote {ns.html}", file=sys.stderr)
    return 0


def _export(ns: argparse.Namespace) -> int:
    from cascade.errors import LabeledDataError
    from cascade.ledger.labeled_traffic import label_requests, prompts_by_id
    from cascade.ledger.learning_facts import read_learning
    from cascade.ledger.queries import read_requests
    from cascade.ledger.reports import parse_since

    since = parse_since(ns.since)
    _, frontier, rates = _frontier(ns.policy)
    prompts: dict[str, str] = {}
    if ns.prompts is not None:
        try:
            lines = ns.prompts.read_text(encoding="utf-8").split("\n")
            prompts = prompts_by_id(json.loads(line) for line in lines if line.strip())
        except (OSError, UnicodeError, json.JSONDecodeError, AttributeError) as exc:
            raise LabeledDataError(f"{ns.prompts}: cannot read prompts: {exc}") from exc
    facts = read_requests(ns.url, since)
    learning = read_learning(ns.url, since)
    rows = label_requests(
        facts, last_tier=frontier, frontier_rates=rates, prompts=prompts, learning=learning
    )
    with ns.out.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} labeled rows of {len(facts)} requests to {ns.out}")
    missing = sum(1 for row in rows if row["prompt"] is None and row["features"] is None)
    if missing:
        print(
            f"cascade: warning: {missing} of {len(rows)} rows have neither a prompt (the ledger "
            "never stores prompts) nor the scorer's features (a text model, or a policy with "
            "learning.record_features off); `cascade train` cannot use them until they are "
            "joined with prompts: pass --prompts FILE.jsonl with {request_id, prompt} per line",
            file=sys.stderr,
        )
    return 0


def _tier_rates(policy: str, facts: Sequence[RequestFacts]) -> dict[str, Rates | None]:
    """Every tier's rates under the policy, for the caching section and the fleets' break-even:
    its price, else (an API tier that used a cache) litellm's map, loaded only then (~2 s)."""
    from cascade.core.pricing import tier_rates
    from cascade.policy import load_policy

    loaded = load_policy(policy)
    used = {a.tier for f in facts for a in f.attempts if a.cached_tokens or a.cache_write_tokens}
    rates = {tier.name: tier_rates(tier) for tier in loaded.tiers}
    unpriced = [t for t in loaded.tiers if rates[t.name] is None and t.kind == "api"]
    if any(t.name in used for t in unpriced):
        from cascade.tiers.api import LiteLLMClient

        client = LiteLLMClient()
        for tier in unpriced:
            rates[tier.name] = client.rates(tier)
    return rates


def _frontier(policy: str) -> tuple[str, str, Rates | None]:
    from cascade.core.pricing import tier_rates
    from cascade.policy import load_policy

    loaded = load_policy(policy)
    last = loaded.tiers[-1]
    return loaded.name, last.name, tier_rates(last)
