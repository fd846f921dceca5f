"""``cascade demo``: the router end to end on simulated tiers, then its cost report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command."""
    demo = commands.add_parser(
        "demo",
        help="run simulated tiers + the proxy + a mixed workload, then print the cost report",
        description="Start simulated 1.5B, 7B and frontier tiers and the proxy on loopback, "
        "send real prompts (steady, then a burst that saturates the self-hosted tiers) and "
        "print what it cost. No GPU, no API key; about a minute.",
    )
    demo.add_argument(
        "--database", type=Path, default=Path("cascade-demo.db"), help="the demo's SQLite ledger"
    )
    demo.add_argument("--steady", type=int, default=240, help="requests in the steady phase")
    demo.add_argument("--burst", type=int, default=160, help="requests in the burst")
    demo.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per simulated second (1.0: real time, 0.05: 20x faster)",
    )
    demo.add_argument("--html", type=Path, help="also write the report as a self-contained page")
    demo.set_defaults(command=_demo)


def _demo(ns: argparse.Namespace) -> int:
    from cascade.cli.demo_workload import run_demo, summarize

    database: Path = ns.database.resolve()
    result = run_demo(database=database, steady=ns.steady, burst=ns.burst, time_scale=ns.time_scale)
    print(summarize(result))
    print()
    from cascade.cli import main

    report = ["report", "--url", f"sqlite:///{database}", "--since", "all", "--by", "tier"]
    report += ["--policy", str(result.policy)]
    return main(report + (["--html", str(ns.html)] if ns.html else []))
