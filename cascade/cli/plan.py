"""``cascade plan``: how many replicas of each self-hosted tier the ledger's traffic calls for.

It reads the requests of the window (``--since``) recorded under the policy (``--policy``, or
the name ``--traffic-of`` gives: planning one policy for the traffic another routed), and
from them an average day: per workload and tier, the visits in each hour of the day, their
tokens (prompt, cache hits, output, the verify step's samples), escalations and witnesses, with
the visits that past saturation spilled counted where they meant to go
(:mod:`cascade.ledger.plan_traffic`). Then it prices every candidate fleet -- 0 up to
``--max-replicas`` replicas of each GPU-priced tier, the rest spilled to the API at its prices
-- with the tiers' serving model at the batch each workload's ``max_tpot_ms`` allows, and names
the cheapest fleet that keeps the targets, beside the all-API and peak-provisioned fleets; the
break-even of one replica against its API; the same at more traffic (``--scales``). ``--json``
prints it for tooling, ``--plot FILE.png`` draws cost against replicas.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta
from pathlib import Path

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``plan`` command."""
    plan = commands.add_parser(
        "plan",
        help="how many self-hosted replicas the ledger's traffic calls for, and what they save",
        description="Price every candidate fleet (0..--max-replicas replicas per self-hosted "
        "tier, the rest spilled to the API) against the ledger's traffic over an average day, "
        "at the batch each workload's latency target allows; name the cheapest fleet that "
        "keeps the targets, the break-even of each tier against its API, and the same at "
        "more traffic.",
    )
    plan.add_argument(
        "--url",
        help="database URL (default: $CASCADE_DATABASE_URL, else sqlite:///cascade.db in the "
        "working directory)",
    )
    plan.add_argument(
        "--since",
        default="7d",
        help="only requests from the last 7d, 24h, 30m, … or 'all' (default: %(default)s)",
    )
    plan.add_argument(
        "--policy",
        default="default",
        help="policy file or shipped name: its tiers, prices and workloads, and the requests "
        "recorded under its name (default: %(default)s)",
    )
    plan.add_argument(
        "--traffic-of",
        metavar="POLICY",
        help="plan for the requests recorded under this policy name instead of --policy's "
        "own (its tiers must have the same names)",
    )
    plan.add_argument(
        "--max-replicas",
        type=int,
        default=8,
        metavar="N",
        help="most replicas of each tier to consider at 1x traffic, scaled with the traffic "
        "(default: %(default)s)",
    )
    plan.add_argument(
        "--scales",
        default="1,2,10",
        help="traffic multiples to plan for, the first in full (default: %(default)s)",
    )
    plan.add_argument(
        "--day",
        default="24h",
        help="how long a day of the ledger's traffic lasts: 24h for real traffic (hours of the "
        "day in UTC), less for a ledger recorded faster than real time, e.g. 86.4s at a time "
        "scale of 0.001 (default: %(default)s)",
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of tables")
    plan.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw cost by replicas")
    plan.set_defaults(command=_plan)


def _plan(ns: argparse.Namespace) -> int:
    from cascade.cli.plan_report import format_plan, plan_json
    from cascade.core.fleet_search import plan_fleets
    from cascade.ledger.plan_traffic import day_traffic
    from cascade.ledger.queries import read_requests
    from cascade.ledger.reports import parse_since
    from cascade.policy import load_policy

    policy = load_policy(ns.policy)
    scales = _scales(ns.scales)
    day = _duration(ns.day)
    facts = read_requests(ns.url, parse_since(ns.since))
    traffic = day_traffic(facts, policy, day=day, recorded_as=ns.traffic_of)
    plan = plan_fleets(policy, traffic, max_replicas=ns.max_replicas, scales=scales)
    if ns.plot is not None:
        from cascade.cli.plan_plot import draw_plan

        draw_plan(plan, ns.plot)
    print(json.dumps(plan_json(plan), indent=2) if ns.json else format_plan(plan))
    if ns.plot is not None:
        print(f"wrote {ns.plot}", file=sys.stderr)
    return 0


def _scales(text: str) -> tuple[float, ...]:
    from cascade.errors import PlanError

    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        scales = ()
    if not scales or any(s <= 0 for s in scales):
        raise PlanError(
            f"--scales {text!r}: expected positive numbers separated by commas (1,2,10)"
        )
    return scales


def _duration(text: str) -> timedelta:
    from cascade.errors import PlanError

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if match is None or float(match.group(1)) <= 0:
        raise PlanError(f"--day {text!r}: expected a positive number and s/m/h/d (24h, 86.4s)")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
