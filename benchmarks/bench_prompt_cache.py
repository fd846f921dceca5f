"""Do cache markers pay? A 3,000-token shared system prompt through a marker-based API tier.

A support app sends every request with the same ~3,000-token system prompt (its handbook) and a
varied question, one at a time, at seeded random (Poisson) intervals. The requests go through the
real proxy (SQLite ledger) to a simulated Anthropic-style frontier tier (``POST /v1/messages``
through litellm), which caches only up to a ``cache_control`` breakpoint, for 5 minutes or an
hour after its last use, and bills writes at 1.25x (5m) or 2x (1h) the input price and reads at
0.1x (Claude Sonnet 4.5's list prices: $3/M input, $0.30/M read, $3.75/M and $6/M writes, $15/M
output). Each traffic level runs three times on a fresh tier: markers off, 5m, 1h.

Printed per traffic level and setting: the total cost, the hit rate (prompt tokens read from the
cache), the reads per written token with the break-even (the reads per written token at which
the writes pay for themselves: 0.28 for 5m, 1.11 for 1h), and the saving against markers off.
The numbers come from the ledger, through ``cascade report``'s caching section.

    .venv/bin/python -m benchmarks.bench_prompt_cache [--requests 100] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx

from benchmarks.support_workload import QUESTIONS, handbook
from cascade.core.pricing import tier_rates
from cascade.core.tokens import estimate_tokens
from cascade.ledger.cache_report import build_cache_report
from cascade.ledger.queries import read_requests
from cascade.logs import configure_json_logs
from cascade.policy import load_policy
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.engine import Clock
from cascade.simulator.server import create_app as create_simulator
from cascade.simulator.settings import SimulatorSettings

TIME_SCALE = 0.001
"""Wall seconds per simulated second while a request runs (a call's simulated latency takes
milliseconds; the proxy's own ~15 ms of wall time is ~15 simulated seconds, well inside a
cache lifetime). The gaps between requests are not waited for: the tier's clock is moved
forward by each gap (:meth:`~cascade.simulator.engine.Clock.advance`), so they are exact."""
_KEY_VARIABLE = "CASCADE_BENCH_ANTHROPIC_KEY"
LEVELS = (
    ("busy: a request every 30 s", 30.0),
    ("quiet: every 4 min", 240.0),
    ("sparse: every 15 min", 900.0),
    ("rare: every 2 h", 7200.0),
)
"""Traffic levels: the mean simulated gap between requests (exponentially distributed)."""


def _policy(path: Path, endpoint: str, markers: str, ttl: str) -> Path:
    path.write_text(
        f"""version: 1
name: bench-cache
tiers:
  - name: frontier
    model: anthropic/claude-sonnet-4-5
    kind: api
    endpoint: {endpoint}
    api_key_env: {_KEY_VARIABLE}
    price: {{input_usd_per_mtok: 3, cached_input_usd_per_mtok: 0.30, output_usd_per_mtok: 15}}
    cache: {{markers: {markers}, ttl: {ttl}}}
workloads: {{interactive: {{}}}}
default_workload: interactive
""",
        encoding="utf-8",
    )
    return path


@contextmanager
def _proxy(folder: Path, markers: str, ttl: str) -> Iterator[tuple[str, str, Clock]]:
    """A fresh simulated tier and a proxy in front of it; yields the proxy's URL, the ledger's
    URL and the tier's clock."""
    clock = Clock(TIME_SCALE)
    tier_settings = SimulatorSettings(profile="frontier", time_scale=TIME_SCALE)
    simulator = create_simulator(tier_settings, clock=clock)
    database = f"sqlite:///{folder / f'ledger-{markers}-{ttl}.db'}"
    with serve_in_thread(simulator, name="simulated-frontier") as tier_url:
        policy = _policy(folder / f"policy-{markers}-{ttl}.yaml", tier_url, markers, ttl)
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=database,
            spool_path=str(folder / "spool"),
            virtual_keys=False,
            reload_interval_s=0,
        )
        with serve_in_thread(create_app(settings), name="proxy") as url:
            yield url, database, clock


def run(folder: Path, markers: str, ttl: str, gaps: list[float], system: str) -> dict[str, float]:
    """One setting over the workload: its cost and cache numbers, read back from the ledger."""
    with _proxy(folder, markers, ttl) as (url, database, clock), httpx.Client(timeout=60) as client:
        for n, gap in enumerate(gaps):
            clock.advance(gap)
            question = QUESTIONS[n % len(QUESTIONS)].format(n=1000 + n)
            reply = client.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "cascade",
                    "max_tokens": 200,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                },
            )
            reply.raise_for_status()
    facts = read_requests(database, None)
    rates = tier_rates(load_policy(folder / f"policy-{markers}-{ttl}.yaml").tier("frontier"))
    line = build_cache_report(facts, {"frontier": rates}).tiers
    cost = sum((f.cost_usd for f in facts), Decimal(0))
    if not line:
        return {"cost": float(cost), "hit": 0.0, "rpw": 0.0, "break_even": 0.0, "n": len(facts)}
    tier = line[0]
    return {
        "cost": float(cost),
        "hit": tier.hit_rate or 0.0,
        "rpw": tier.reads_per_write or 0.0,
        "break_even": tier.break_even or 0.0,
        "n": len(facts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per run")
    parser.add_argument("--seed", type=int, default=7)
    ns = parser.parse_args()
    configure_json_logs("warning")
    os.environ.setdefault(_KEY_VARIABLE, "simulated")
    system = handbook()
    print(f"system prompt: {estimate_tokens(system)} estimated tokens; {ns.requests} requests")
    print("| traffic | markers | cost | hit rate | reads per write (break-even) | vs off |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for level, (name, mean_gap) in enumerate(LEVELS):
            folder = Path(tmp) / str(level)  # a fresh ledger for each run
            folder.mkdir()
            draw = random.Random(ns.seed)
            gaps = [draw.expovariate(1 / mean_gap) for _ in range(ns.requests)]
            off = run(folder, "off", "5m", gaps, system)
            print(f"| {name} | off | ${off['cost']:.4f} | {off['hit']:.0%} | - | - |")
            for ttl in ("5m", "1h"):
                on = run(folder, "auto", ttl, gaps, system)
                change = (on["cost"] - off["cost"]) / off["cost"]
                print(
                    f"| {name} | {ttl} | ${on['cost']:.4f} | {on['hit']:.0%} | "
                    f"{on['rpw']:.2f} ({on['break_even']:.2f}) | {change:+.0%} |"
                )


if __name__ == "__main__":
    main()
