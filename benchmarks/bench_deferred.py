"""A day of interactive traffic plus a Batch API job: deferred to spare capacity, or sent at once.

The default policy's shape on simulated tiers (one 1.5B and one 7B replica, ``--batch``
sequences each, simulated time at wall speed; the frontier through litellm), behind the real
proxy (in this process) with an SQLite ledger. The interactive load is a working day compressed
into ``--day-s`` wall seconds (an hour every ``day_s / 24`` s: Poisson arrivals at the rate of
``benchmarks.day_replay.DIURNAL``, a quiet night and an afternoon peak), each request a
support question under a ~3,000-token handbook. A job of ``--job`` requests is uploaded through
the OpenAI SDK at 01:00 with a deadline at 20:00 of the compressed day. Three runs, same seeds:

- ``interactive only``: the day alone (its p99 latency sets the target: p99 within 10% of it);
- ``deferred``: the job through the Batch API (the runner fills spare self-hosted capacity and
  yields to interactive requests);
- ``at once``: the job's requests sent at 01:00 as ordinary interactive requests (16 at a time,
  the runner's concurrency), as a team without the Batch API would.

The completion window is whole hours (the API's unit), so after creating the job the benchmark
moves its ``expires_at`` to 20:00 of the compressed day in the database, and the deadline margin
(``batch_deadline_margin_s``) is one compressed hour. Printed: interactive p50/p99 latency
against the target, when the job finished against its deadline, the fleet's utilization (from
``cascade report --json``: with and without the deferred requests), and the job's cost as
charged against its cost at once on the frontier (the report's counterfactual) and, for the
``at once`` run, as those requests were charged.

    .venv/bin/python -m benchmarks.bench_deferred [--day-s 120] [--interactive 400] [--job 120]
        [--batch 16] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
from sqlalchemy import update

from benchmarks.day_replay import Fleet, day_schedule, policy_text
from benchmarks.support_workload import handbook
from cascade.ledger.database import create_engine
from cascade.ledger.models import Batch
from cascade.logs import configure_json_logs
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.labels import LabelTable
from cascade.simulator.server import create_app as create_tier
from cascade.simulator.settings import SimulatorSettings

MODEL = "cascade/plan-check"
JOB_AT_H, DEADLINE_H = 1.0, 20.0
AT_ONCE_CONCURRENCY = 16
_KEY_ENV = "CASCADE_PLAN_CHECK_KEY"


@dataclass(frozen=True, slots=True)
class Run:
    """What one run measured."""

    name: str
    latencies: tuple[float, ...]
    job_done_h: float | None
    """Hour of the compressed day the job's last request finished (None: no job)."""
    report: dict[str, Any]
    at_once_cost: Decimal | None
    """The job's requests' charged cost when sent at once (None: not that run)."""


def _messages(system: str, prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


async def _interactive(client: httpx.AsyncClient, arrivals: Any, start: float) -> list[float]:
    system = handbook(3000)

    async def one(at: float, prompt: str) -> float:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        sent = time.perf_counter()
        body = {"model": MODEL, "messages": _messages(system, prompt), "max_tokens": 512}
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return time.perf_counter() - sent

    return list(await asyncio.gather(*(one(a.at, a.prompt) for a in arrivals)))


def _job_lines(prompts: list[str]) -> bytes:
    system = handbook(3000)
    return b"".join(
        json.dumps(
            {
                "custom_id": f"j{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "messages": _messages(system, p), "max_tokens": 256},
            }
        ).encode()
        + b"\n"
        for n, p in enumerate(prompts)
    )


def _deferred_job(url: str, database: Path, prompts: list[str], hour_s: float) -> float:
    """Upload and create the job with the SDK, move its deadline, poll it; wall s at its end."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    uploaded = client.files.create(file=("job.jsonl", _job_lines(prompts)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = datetime.fromtimestamp(batch.created_at, UTC) + timedelta(
        seconds=(DEADLINE_H - JOB_AT_H) * hour_s
    )
    asyncio.run(_move_deadline(database, batch.id, deadline))
    while (batch := client.batches.retrieve(batch.id)).status not in (
        "completed",
        "expired",
        "failed",
        "cancelled",
    ):
        time.sleep(0.2)
    return time.perf_counter()


async def _move_deadline(database: Path, batch_id: str, deadline: datetime) -> None:
    """The window is whole hours: the compressed day's deadline is set in the database."""
    engine = create_engine(f"sqlite:///{database}")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(Batch).where(Batch.id == batch_id).values(expires_at=deadline)
            )
    finally:
        await engine.dispose()


async def _at_once(
    client: httpx.AsyncClient, prompts: list[str], at: float
) -> tuple[float, Decimal]:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    system, gate = handbook(3000), asyncio.Semaphore(AT_ONCE_CONCURRENCY)

    async def one(prompt: str) -> Decimal:
        async with gate:
            body = {"model": MODEL, "messages": _messages(system, prompt), "max_tokens": 256}
            response = await client.post("/v1/chat/completions", json=body)
            return Decimal(response.headers.get("x-cascade-cost-usd", "0"))

    costs = await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter(), sum(costs, Decimal(0))


def run(name: str, args: argparse.Namespace, folder: Path) -> Run:
    """One run of the day: ``name`` is ``interactive only``, ``deferred`` or ``at once``."""
    hour_s = args.day_s / 24
    arrivals = day_schedule(args.interactive, args.day_s, args.seed)
    prompts = [a.prompt for a in day_schedule(args.job * 2, args.day_s, args.seed + 1)][: args.job]
    database = folder / f"{name.replace(' ', '-')}.db"
    labels = LabelTable.load()
    fleet = Fleet({"small": 1, "medium": 1}, {"small": args.batch, "medium": args.batch})
    with ExitStack() as stack:

        def tier(profile: str, scale: float, batch: int | None) -> str:
            settings = SimulatorSettings(profile=profile, time_scale=scale, max_concurrency=batch)
            return stack.enter_context(serve_in_thread(create_tier(settings, labels=labels)))

        urls = {
            "small": [tier("1.5b", 1.0, args.batch)],
            "medium": [tier("7b", 1.0, args.batch)],
            "frontier": [tier("frontier", 0.05, None)],
        }
        policy = folder / f"{database.stem}.policy.yaml"
        policy.write_text(policy_text(urls, fleet, target_ms=None), encoding="utf-8")
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=f"sqlite:///{database}",
            spool_path=str(database.with_suffix(".spool")),
            reload_interval_s=0,
            virtual_keys=False,
            batch_concurrency=AT_ONCE_CONCURRENCY,
            batch_poll_s=args.poll_s,
            batch_deadline_margin_s=hour_s,
        )
        url = stack.enter_context(serve_in_thread(create_app(settings)))
        latencies, done, cost = asyncio.run(
            _day(name, url, database, arrivals, prompts, hour_s=hour_s)
        )
    report = subprocess.run(
        [
            *(sys.executable, "-m", "cascade", "report", "--url", f"sqlite:///{database}"),
            *("--since", "all", "--policy", str(policy), "--json"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return Run(name, tuple(latencies), done, json.loads(report.stdout), cost)


async def _day(
    name: str, url: str, database: Path, arrivals: Any, prompts: list[str], *, hour_s: float
) -> tuple[list[float], float | None, Decimal | None]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        day = asyncio.create_task(_interactive(client, arrivals, start))
        done: float | None = None
        cost: Decimal | None = None
        if name == "deferred":
            await asyncio.sleep(JOB_AT_H * hour_s)
            done = await asyncio.to_thread(_deferred_job, url, database, prompts, hour_s)
        elif name == "at once":
            done, cost = await _at_once(client, prompts, start + JOB_AT_H * hour_s)
        latencies = await day
    return latencies, None if done is None else (done - start) / hour_s, cost


def _p(values: tuple[float, ...], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def table(runs: list[Run]) -> str:
    """The runs as a markdown table."""
    target = _p(runs[0].latencies, 99) * 1.10
    rows = [
        "| run | interactive p50 / p99 (s) | p99 within target | job done (h) | deadline met "
        "| utilization small / medium | job cost (charged) | job at once on frontier |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        p99 = _p(r.latencies, 99)
        util = " / ".join(
            f"{float(t['utilization']) * 100:.1f}%" if t["utilization"] else "n/a"
            for t in r.report["fleet"]["tiers"]
        )
        deferred = r.report["deferred"]
        charged, frontier = "-", "-"
        if r.name == "deferred":
            without = " / ".join(
                f"{float(f['utilization_without_deferred'] or 0) * 100:.1f}%"
                for f in deferred["fleet"]
            )
            util += f" (without the job: {without})"
            charged, frontier = f"${float(deferred['cost_usd']):.4f}", deferred["at_once_usd"]
            frontier = f"${float(frontier):.4f}" if frontier else "n/a"
        elif r.at_once_cost is not None:
            charged = f"${float(r.at_once_cost):.4f}"
        done = "-" if r.job_done_h is None else f"{r.job_done_h:.1f}"
        met = "-" if r.job_done_h is None else ("yes" if r.job_done_h <= DEADLINE_H else "no")
        rows.append(
            f"| {r.name} | {_p(r.latencies, 50):.2f} / {p99:.2f} | "
            f"{'yes' if p99 <= target else 'no'} (target {target:.2f}) | {done} | {met} | "
            f"{util} | {charged} | {frontier} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--day-s", type=float, default=120.0, help="wall seconds of the day")
    parser.add_argument("--interactive", type=int, default=400, help="interactive requests")
    parser.add_argument("--job", type=int, default=120, help="requests in the batch job")
    parser.add_argument("--batch", type=int, default=16, help="sequences per simulated engine")
    parser.add_argument("--poll-s", type=float, default=0.25, help="the runner's batch_poll_s")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure_json_logs("warning")  # the tiers' and the proxy's lines would bury the table
    os.environ.setdefault(_KEY_ENV, "bench-deferred-key-not-secret")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with tempfile.TemporaryDirectory() as folder:
        runs = [
            run(name, args, Path(folder)) for name in ("interactive only", "deferred", "at once")
        ]
    print(table(runs))


if __name__ == "__main__":
    main()
