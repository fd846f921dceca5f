"""``cascade demo``: the router end to end on simulated tiers, then its cost report and what
``cascade plan`` recommends for its traffic."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command."""
    demo = commands.add_parser(
        "demo",
        help="run simulated tiers + the proxy + a mixed workload, then print the cost report",
        description="Start simulated 1.5B, 7B and frontier tiers and the proxy on loopback, "
        "send real prompts (steady, then a burst that saturates the self-hosted tiers, then "
        "the steady prompts again with the verify step on), grade every answer with the "
        "simulator's ground truth, and print what it cost and what the verify step changed, "
        "what the self-hosted GPUs cost against what they served, and how many cascade plan "
        "would run for this traffic. No GPU, no API key; about 30 seconds. The proxy's and "
        "the simulated tiers' logs go to a file beside the database (--verbose: to the "
        "terminal).",
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
    demo.add_argument(
        "--verbose", action="store_true", help="print every log line instead of writing a file"
    )
    demo.set_defaults(command=_demo)


def _demo(ns: argparse.Namespace) -> int:
    from cascade.cli.demo_workload import run_demo, summarize
    from cascade.logs import configure_json_logs

    database: Path = ns.database.resolve()
    log_file = database.with_suffix(".log")
    if not ns.verbose:  # the demo tells its story; per-request lines go to the file
        # Left open to the end of the process: structlog caches loggers with their file.
        configure_json_logs("info", log_file.open("wb"))
    result = run_demo(database=database, steady=ns.steady, burst=ns.burst, time_scale=ns.time_scale)
    print(summarize(result))
    if not ns.verbose:
        print(f"logs: {log_file}")
    print()
    from cascade.cli import main

    report = ["report", "--url", f"sqlite:///{database}", "--since", "all", "--by", "policy"]
    report += ["--policy", str(result.policy)]
    status = main(report + (["--html", str(ns.html)] if ns.html else []))
    from cascade.cli.demo_plan import demo_plan

    print()
    print(demo_plan(database, ns.time_scale))
    return status
