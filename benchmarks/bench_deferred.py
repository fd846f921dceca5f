"""A day of interactive traffic plus a Batch API job: deferred to idle GPUs, or sent at once.

The day is :mod:`benchmarks.day_replay`'s (support-desk questions under a 3,000-token handbook,
Poisson arrivals following a working day: a quiet night, an afternoon peak) at ``1 / scale``
with every hour's offered load kept, through the real proxy (``cascade serve`` in a process of
its own, SQLite ledger) onto a fleet sized for the interactive peak -- by default the one
``cascade plan`` recommends for this day at a 1.6 ms time-per-token target
(``benchmarks/plan_check.py``: small 1 replica x 51 sequences, medium 5 x 7) -- and the
simulated frontier through litellm. A job of ``--job`` requests (questions from the same data)
arrives at ``--job-at`` (01:00) with a deadline at ``--deadline`` (22:00). Three runs of the same
arrivals:

- ``interactive only``: the day alone. Its interactive p99 latency, +10%, is the target the
  other runs are held to;
- ``deferred``: the job through the OpenAI SDK's Batch API (``client.files.create``,
  ``client.batches.create``; polled with ``retrieve``). The proxy's runner
  (``--batch-concurrency``) runs it on the self-hosted tiers while they have spare slots and
  cuts its calls when interactive requests wait (:mod:`cascade.server.batch_schedule`);
- ``at once``: the same requests sent at ``--job-at`` as ordinary requests, ``--batch-concurrency``
  at a time, as a team without the Batch API would send them.

The completion window is whole hours (the API's unit), so after creating the job the benchmark
sets its ``expires_at`` to the compressed day's deadline in the database, and the deadline
margin is one compressed hour. Printed per run (each figure for the full day, as
``benchmarks/plan_measure.py`` computes it: the ledger's tokens and API spend x scale, each
self-hosted tier's bill for 24 hours):

- interactive latency p50 / p99 (wall seconds of the replay) against the target; the mean time
  per output token of every sequence the self-hosted replicas ran in their busiest hour
  (simulated ms) against the workload's ``max_tpot_ms``;
- when the job finished (hour of the day) against its deadline;
- each self-hosted tier's utilization (GPU time charged against billed), and in the deferred run
  the same without the job's requests;
- the day's cost (fleet bill + API spend) and what the job added to it, beside the job on the
  frontier at once (``cascade report``'s counterfactual for deferred work).

Run (about eight minutes on two cores; the ledgers, policies and logs stay in ``--workdir``)::

    .venv/bin/python -m benchmarks.bench_deferred [--requests 4000] [--scale 8000] \\
        [--time-scale 12] [--target-ms 1.6] [--job 2000] [--job-at 1] [--deadline 22] \\
        [--batch-concurrency 96] [--fleet small=1x51,medium=5x7] [--seed 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
from sqlalchemy import update

from benchmarks.day_replay import (
    DIURNAL,
    POLICY_NAME,
    SELF_HOSTED,
    Fleet,
    Replay,
    Sent,
    day_schedule,
    replay_day,
)
from benchmarks.plan_measure import day_fleet
from benchmarks.support_workload import handbook
from cascade.ledger.database import create_engine
from cascade.ledger.models import Batch
from cascade.ledger.queries import RequestFacts, read_requests
from cascade.logs import configure_json_logs
from cascade.policy import load_policy

RUNS = ("interactive only", "deferred", "at once")
_P99_SLACK = 1.10
_TERMINAL = ("completed", "expired", "failed", "cancelled")


@dataclass(slots=True)
class Job:
    """What the run's job did: when it ended (wall s from the day's start) and how."""

    done_s: float | None = None
    status: str = "-"
    counts: dict[str, int] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    """``at once``: each request as the client saw it."""


@dataclass(frozen=True, slots=True)
class Run:
    """One run measured."""

    name: str
    replay: Replay
    job: Job
    facts: tuple[RequestFacts, ...]
    report: dict[str, Any]


def _body(system: str, prompt: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return {"model": f"cascade/{POLICY_NAME}", "messages": messages, "max_tokens": 512}


def _job_file(prompts: Sequence[str]) -> bytes:
    system = handbook(3000)
    lines = (
        {"custom_id": f"job-{n}", "method": "POST", "url": "/v1/chat/completions"}
        | {"body": _body(system, prompt)}
        for n, prompt in enumerate(prompts)
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def _deferred(
    proxy: str, start: float, job: Job, *, prompts: Sequence[str], at_s: float, deadline_s: float,
    database: Path,
) -> None:  # fmt: skip
    await asyncio.sleep(max(0.0, start + at_s - time.perf_counter()))
    client = openai.AsyncOpenAI(base_url=f"{proxy}/v1", api_key="none", max_retries=0)
    uploaded = await client.files.create(file=("job.jsonl", _job_file(prompts)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    created = datetime.fromtimestamp(batch.created_at, UTC)
    await _move_deadline(database, batch.id, created + timedelta(seconds=deadline_s - at_s))
    while (batch := await client.batches.retrieve(batch.id)).status not in _TERMINAL:
        await asyncio.sleep(0.25)
    job.done_s, job.status = time.perf_counter() - start, batch.status
    if batch.request_counts is not None:
        job.counts = batch.request_counts.model_dump()
    await client.close()


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
    proxy: str, start: float, job: Job, *, prompts: Sequence[str], at_s: float, concurrency: int
) -> None:
    await asyncio.sleep(max(0.0, start + at_s - time.perf_counter()))
    system, gate = handbook(3000), asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=proxy, timeout=600, limits=limits) as client:

        async def one(prompt: str) -> Sent:
            async with gate:
                sent = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=_body(system, prompt))
                headers = response.headers
                return Sent(
                    at=sent - start,
                    status=response.status_code,
                    tier=headers.get("x-cascade-tier", "-"),
                    attempts=headers.get("x-cascade-attempts", ""),
                    spilled_from=headers.get("x-cascade-spilled-from"),
                    cost=Decimal(headers.get("x-cascade-cost-usd", "0")),
                    latency_s=time.perf_counter() - sent,
                )

        job.sent = list(await asyncio.gather(*(one(p) for p in prompts)))
    job.done_s, job.status = time.perf_counter() - start, "answered"


def run(name: str, ns: argparse.Namespace, fleet: Fleet) -> Run:
    """One run of the day (``name``: one of :data:`RUNS`)."""
    day_s = 86_400 * ns.time_scale / ns.scale
    hour_s = day_s / len(DIURNAL)
    arrivals = day_schedule(ns.requests, day_s, ns.seed)
    prompts = [a.prompt for a in day_schedule(ns.job * 2, day_s, ns.seed + 1)][: ns.job]
    database = ns.workdir / f"{name.replace(' ', '-')}.db"
    job = Job()
    at_s, deadline_s = ns.job_at * hour_s, ns.deadline * hour_s
    during = None
    if name == "deferred":

        async def during(proxy: str, start: float) -> None:
            await _deferred(
                proxy, start, job, prompts=prompts, at_s=at_s, deadline_s=deadline_s,
                database=database,
            )  # fmt: skip

    elif name == "at once":

        async def during(proxy: str, start: float) -> None:
            await _at_once(
                proxy, start, job, prompts=prompts, at_s=at_s, concurrency=ns.batch_concurrency
            )

    proxy_args = [
        *("--batch-concurrency", str(ns.batch_concurrency), "--batch-poll", "0.25"),
        *("--batch-deadline-margin", f"{hour_s:g}"),
    ]
    replay = replay_day(
        arrivals,
        fleet,
        database=database,
        time_scale=ns.time_scale,
        target_ms=ns.target_ms,
        proxy_args=proxy_args,
        during=during,
    )
    facts = tuple(read_requests(f"sqlite:///{database}", None))
    report = subprocess.run(
        [
            *(sys.executable, "-m", "cascade", "report", "--url", f"sqlite:///{database}"),
            *("--since", "all", "--policy", str(replay.policy), "--json"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return Run(name, replay, job, facts, json.loads(report.stdout))


@dataclass(frozen=True, slots=True)
class Day:
    """A run's day at full scale."""

    utilization: dict[str, float]
    utilization_without_job: dict[str, float]
    bill_usd: float
    api_usd: float
    job_api_usd: float

    @property
    def total_usd(self) -> float:
        return self.bill_usd + self.api_usd


def day(result: Run, fleet: Fleet, scale: float) -> Day:
    """The run's figures for the full day (module docstring)."""
    policy = load_policy(result.replay.policy)
    interactive = [f for f in result.facts if f.workload != "batch"]

    def fleets(facts: Sequence[RequestFacts]) -> dict[str, Any]:
        return {n: day_fleet(policy, facts, n, fleet.replicas[n], scale) for n in SELF_HOSTED}

    def api(facts: Sequence[RequestFacts]) -> float:
        calls = [a for f in facts for a in f.attempts if policy.tier(a.tier).kind == "api"]
        return float(sum((a.cost_usd for a in calls), Decimal(0))) * scale

    every, alone = fleets(result.facts), fleets(interactive)
    job_api = api([f for f in result.facts if f.workload == "batch"])
    if result.job.sent:
        job_api = float(sum((s.cost for s in result.job.sent), Decimal(0))) * scale
    return Day(
        utilization={n: float(c.utilization or 0) for n, c in every.items()},
        utilization_without_job={n: float(c.utilization or 0) for n, c in alone.items()},
        bill_usd=float(sum((c.billed_usd for c in every.values()), Decimal(0))),
        api_usd=api(result.facts),
        job_api_usd=job_api,
    )


def _p(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def _busiest_tpot(replay: Replay, tier: str, hour_s: float) -> tuple[float, float]:
    """The mean time per output token of the tier's sequences in its busiest hour, and the p99
    of all its sequences (simulated ms)."""
    by_hour: dict[int, list[float]] = {}
    for sequence in replay.sequences[tier]:
        by_hour.setdefault(min(int(sequence.at / hour_s), 23), []).append(sequence.tpot_ms)
    if not by_hour:
        return 0.0, 0.0
    busiest = max(by_hour, key=lambda h: len(by_hour[h]))
    every = [t for hour in by_hour.values() for t in hour]
    return statistics.fmean(by_hour[busiest]), _p(every, 99)


def table(runs: Sequence[Run], ns: argparse.Namespace, fleet: Fleet) -> str:
    """The runs as markdown tables (module docstring)."""
    day_s = 86_400 * ns.time_scale / ns.scale
    hour_s = day_s / len(DIURNAL)
    latencies = {r.name: [s.latency_s for s in r.replay.sent] for r in runs}
    target = _p(latencies[RUNS[0]], 99) * _P99_SLACK
    days = {r.name: day(r, fleet, ns.scale) for r in runs}
    base = days[RUNS[0]].total_usd
    lines = [
        f"Fleet {_fleet_text(fleet)}; {len(runs[0].replay.sent):,} interactive requests, "
        f"each standing for {ns.scale:g}; a job of {ns.job:,} at "
        f"{ns.job_at:02g}:00, deadline {ns.deadline:02g}:00.",
        "",
        "| run | interactive p50 / p99 (s) | p99 within target | interactive spilled to the API "
        f"| time per token, busiest hour (target {ns.target_ms:g} ms) | job done | utilization "
        "| day's cost | added by the job |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        d = days[r.name]
        p99 = _p(latencies[r.name], 99)
        tpot = ", ".join(f"{n} {_busiest_tpot(r.replay, n, hour_s)[0]:.2f} ms" for n in SELF_HOSTED)
        util = ", ".join(f"{n} {d.utilization[n] * 100:.1f}%" for n in SELF_HOSTED)
        if r.name == "deferred":
            util += (
                " (without the job: "
                + ", ".join(f"{d.utilization_without_job[n] * 100:.1f}%" for n in SELF_HOSTED)
                + ")"
            )
        done = "-"
        if r.job.done_s is not None:
            hour = r.job.done_s / hour_s
            met = "met" if hour <= ns.deadline else "missed"
            done = f"{_clock(hour)} ({r.job.status}, deadline {met})"
        added = "-" if r.name == RUNS[0] else f"+${d.total_usd - base:,.0f}"
        if r.name != RUNS[0]:
            added += f" (API ${d.job_api_usd:,.0f})"
        spilled = sum(s.spilled_from is not None for s in r.replay.sent)
        lines.append(
            f"| {r.name} | {_p(latencies[r.name], 50):.2f} / {p99:.2f} | "
            f"{'yes' if p99 <= target else 'no'} (≤ {target:.2f}) | {spilled} | {tpot} | "
            f"{done} | {util} | ${d.total_usd:,.0f} | {added} |"
        )
    deferred = next((r for r in runs if r.name == "deferred"), None)
    if deferred is not None and deferred.report["deferred"]["at_once_usd"] is not None:
        frontier = float(deferred.report["deferred"]["at_once_usd"]) * ns.scale
        lines += [
            "",
            f"The job at once on the frontier (cascade report's counterfactual): ${frontier:,.0f}; "
            f"the Batch API job's request counts: {deferred.job.counts}.",
        ]
    late = max(r.replay.late_s for r in runs)
    lines.append(
        f"The host fell behind the schedule by {late:.2f} s at most (an hour is {hour_s:.2f} s)."
    )
    return "\n".join(lines)


def _clock(hour: float) -> str:
    return f"{int(hour):02d}:{int(hour % 1 * 60):02d}"


def _fleet_text(fleet: Fleet) -> str:
    return ", ".join(f"{n} {fleet.replicas[n]} x {fleet.batch[n]}" for n in SELF_HOSTED)


def _fleet(text: str) -> Fleet:
    """``small=1x51,medium=5x7`` as replicas x sequences per tier."""
    try:
        parts = [part.split("=") for part in text.split(",")]
        shapes = {name.strip(): tuple(int(v) for v in shape.split("x")) for name, shape in parts}
        fleet = Fleet({n: s[0] for n, s in shapes.items()}, {n: s[1] for n, s in shapes.items()})
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected TIER=NxB,...") from None
    if set(fleet.replicas) != set(SELF_HOSTED):
        raise argparse.ArgumentTypeError(f"{text!r}: name each of {', '.join(SELF_HOSTED)}")
    return fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=4000, help="interactive requests")
    parser.add_argument("--scale", type=float, default=8000, help="requests each one stands for")
    parser.add_argument("--time-scale", type=float, default=12, help="wall s per simulated s")
    parser.add_argument("--target-ms", type=float, default=1.6, help="interactive max_tpot_ms")
    parser.add_argument("--job", type=int, default=2000, help="requests in the batch job")
    parser.add_argument("--job-at", type=float, default=1.0, help="hour the job arrives")
    parser.add_argument("--deadline", type=float, default=22.0, help="hour of its deadline")
    parser.add_argument("--batch-concurrency", type=int, default=96)
    parser.add_argument("--fleet", type=_fleet, default=_fleet("small=1x51,medium=5x7"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, comma-separated")
    parser.add_argument("--workdir", type=Path, default=Path("bench-deferred"))
    ns = parser.parse_args(argv)
    names = [n.strip() for n in ns.runs.split(",")]
    if not names or names[0] != RUNS[0] or not set(names) <= set(RUNS):
        parser.error(f"--runs: start with {RUNS[0]!r}, then any of {RUNS[1:]}")
    ns.workdir.mkdir(parents=True, exist_ok=True)
    log = ns.workdir / "bench-deferred.log"
    with log.open("wb") as sink:
        configure_json_logs("info", sink)
        runs = [run(name, ns, ns.fleet) for name in names]
    print(table(runs, ns, ns.fleet))
    print(f"logs: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
