"""A day of support-desk traffic replayed through the real proxy onto simulated tiers, at scale.

What ``benchmarks/plan_check.py`` (and ``tests/test_plan_check.py``) serve twice: once on the
default policy's shape (one simulated 1.5B and one 7B replica, the simulated frontier through
litellm) to record a ledger for ``cascade plan``, then on the fleet the plan recommends.

**The day.** Requests arrive at random (Poisson) at a rate that follows a working day: a quiet
night, a morning ramp, an afternoon peak, an evening decline (:data:`DIURNAL`, the share of the
day's requests in each hour, constant within the hour as ``cascade plan`` counts it). Each asks a
question from the shipped labeled data (so the scorer spreads them over the tiers as real
traffic, and the simulated tiers answer right or wrong as the data says) under a support desk's
handbook of ~3,000 tokens as the system prompt (the context per sequence the policy's speeds were
measured at; the engines' prefix caches keep it); one in ten asks for JSON, which cheap tiers
sometimes get wrong, so some answers escalate.

**At scale.** A fleet's size depends on each hour's offered load -- arrivals x how long each
holds a slot -- not on how long the day lasts. One H100 replica of these small models serves
thousands of visits a minute; no replay through a proxy on a laptop can send a real day of that.
So the replay is the day at ``1 / scale``: ``scale`` times fewer requests in a day ``scale``
times shorter (``86,400 / scale`` simulated seconds), every hour's offered load that of the full
day. ``cascade plan --scales SCALE`` plans for the full day; its bill and API spend are
``scale`` times the replay's. The self-hosted tiers run at ``time_scale`` wall seconds per
simulated second, so the replay lasts ``86,400 x time_scale / scale`` wall seconds (what
``cascade plan --day`` is told); a time scale above 1 (simulated time slower than the wall
clock) keeps the host's own delays, in the proxy and the client, small beside the engines'
steps.

**What is measured.** Every request's answer headers (tier, attempts, the tier it spilled from,
cost) and every sequence the self-hosted replicas finished: its time per output token in
simulated milliseconds, ``(latency - time to first token) / (tokens - 1)`` from the
``x-simulated-*`` headers, read by a wrapper around each replica's app.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.processes import started
from benchmarks.sequence_log import SequenceLog, SequenceTiming
from benchmarks.support_workload import handbook
from cascade.ledger.queries import read_requests
from cascade.policy import load_policy
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.dataset import iter_rows
from cascade.simulator.labels import LabelTable
from cascade.simulator.server import create_app as create_tier
from cascade.simulator.settings import SimulatorSettings

__all__ = [
    "DIURNAL",
    "POLICY_NAME",
    "Arrival",
    "During",
    "Fleet",
    "Replay",
    "Sent",
    "SequenceTiming",
    "day_schedule",
    "replay_day",
]

DIURNAL = (
    0.15, 0.12, 0.10, 0.10, 0.12, 0.18, 0.30, 0.50, 0.70, 0.80, 0.85, 0.85,
    0.80, 0.90, 1.00, 1.00, 0.90, 0.75, 0.60, 0.50, 0.42, 0.35, 0.25, 0.18,
)  # fmt: skip
"""Relative request rate in each hour of the day (00:00 to 23:00)."""
POLICY_NAME = "plan-check"
SELF_HOSTED = {"small": "1.5b", "medium": "7b"}
"""The default policy's self-hosted tiers and the simulated profile each runs."""
_KEY_ENV = "CASCADE_PLAN_CHECK_KEY"
During = Callable[[str, float], Coroutine[Any, Any, None]]
"""Work run beside the day's requests: given the proxy's URL and the day's start
(``time.perf_counter``)."""
_HANDBOOK_TOKENS = 3000
_FRONTIER_TIME_SCALE = 0.05
"""The simulated API answers 20x faster than real time: its latency is no part of the plan, and
its per-token pacing costs the host CPU time the replay needs for the proxy."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request of the day: when it is sent (wall seconds from the day's start) and what."""

    at: float
    prompt: str
    json_mode: bool


def day_schedule(requests: int, day_s: float, seed: int) -> list[Arrival]:
    """About ``requests`` arrivals over ``day_s`` wall seconds, Poisson at the rate of
    :data:`DIURNAL` (each hour's count drawn, its times uniform within it); the first at 0, so
    the ledger's first request starts the day, and none in the day's last thousandth, so
    none is read as the next day's."""
    rng = random.Random(seed)
    hour = day_s / len(DIURNAL)
    total = sum(DIURNAL)
    times: list[float] = []
    for index, weight in enumerate(DIURNAL):
        count = _poisson(rng, requests * weight / total)
        times += [(index + rng.random()) * hour * 0.999 for _ in range(count)]
    times.sort()
    times[0] = 0.0
    rows = [r.prompt for r in iter_rows() if len(r.prompt) < 3000]
    rng.shuffle(rows)
    return [Arrival(at, rows[i % len(rows)], i % 10 == 0) for i, at in enumerate(times)]


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (a sum of exponential gaps: means here are a few hundred at most)."""
    count, clock = 0, rng.expovariate(1.0)
    while clock < mean:
        count += 1
        clock += rng.expovariate(1.0)
    return count


@dataclass(frozen=True, slots=True)
class Fleet:
    """Replicas of each self-hosted tier, and the sequences each engine runs at once."""

    replicas: dict[str, int]
    batch: dict[str, int]
    """Sequences per engine (the simulated server's and, times the replicas, the proxy's
    ``max_concurrency``)."""

    @classmethod
    def default(cls) -> Fleet:
        """The default policy's: one replica of each, 64 sequences."""
        return cls(dict.fromkeys(SELF_HOSTED, 1), dict.fromkeys(SELF_HOSTED, 64))


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as the client saw it."""

    at: float
    """Wall seconds from the day's start when it was sent."""
    status: int
    tier: str
    attempts: str
    spilled_from: str | None
    cost: Decimal
    latency_s: float = 0.0
    """Wall seconds from sending to the whole answer."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What one replay of the day measured, and where its ledger and policy are."""

    sent: tuple[Sent, ...]
    sequences: dict[str, tuple[SequenceTiming, ...]]
    """Per self-hosted tier, every sequence of two tokens or more its replicas finished."""
    database: Path
    policy: Path
    wall_s: float
    late_s: float = 0.0
    """How far behind the schedule requests reached the proxy at most (the ledger's arrivals
    against the schedule, both in order): a host that falls behind reshapes the day."""


def policy_text(urls: dict[str, list[str]], fleet: Fleet, *, target_ms: float | None) -> str:
    """The default policy with its self-hosted tiers on the simulated replicas (``max_concurrency``
    = replicas x batch, requests spread to the least loaded replica, as ``cascade plan``'s
    pooled slots assume), the frontier on the simulated API, and the interactive workload's
    ``max_tpot_ms``."""
    data: dict[str, Any] = load_policy("default").model_dump(mode="json", exclude_defaults=True)
    data["name"] = POLICY_NAME
    data["description"] = "the default policy on simulated replicas (benchmarks/plan_check.py)"
    for tier in data["tiers"]:
        name = tier["name"]
        tier.pop("endpoint", None)
        if name in SELF_HOSTED:
            tier["replicas"] = [f"{url}/v1" for url in urls[name]]
            tier["routing"] = "least_loaded"
            tier["max_concurrency"] = fleet.replicas[name] * fleet.batch[name]
        else:
            tier["endpoint"] = f"{urls[name][0]}/v1"
            tier["api_key_env"] = _KEY_ENV
            tier["max_concurrency"] = 1024
    if target_ms is not None:
        data["workloads"]["interactive"]["max_tpot_ms"] = target_ms
    return yaml.safe_dump(data, sort_keys=False)


def replay_day(
    arrivals: Sequence[Arrival],
    fleet: Fleet,
    *,
    database: Path,
    time_scale: float,
    target_ms: float | None,
    in_process: bool = False,
    proxy_args: Sequence[str] = (),
    during: During | None = None,
) -> Replay:
    """Start the fleet's simulated replicas, the frontier and the proxy (ledger: ``database``,
    emptied first; ``proxy_args`` added to ``cascade serve``'s), send ``arrivals`` on time
    while ``during`` runs beside them (given the proxy's URL and the day's start), wait for
    every answer and for ``during``, stop everything (the ledger is flushed on stop)."""
    for stale in (database, database.with_suffix(".spool")):
        stale.unlink(missing_ok=True)
    os.environ.setdefault(_KEY_ENV, "plan-check-key-not-secret")
    labels = LabelTable.load()
    started = [time.perf_counter()]
    logs: dict[str, list[SequenceLog]] = {name: [] for name in SELF_HOSTED}
    with ExitStack() as stack:

        def start(profile: str, scale: float, batch: int | None = None) -> str:
            settings = SimulatorSettings(profile=profile, time_scale=scale, max_concurrency=batch)
            app = create_tier(settings, labels=labels)
            if profile == "frontier":
                return stack.enter_context(serve_in_thread(app, name="simulated-frontier"))
            log = SequenceLog(app, started)
            logs[_tier_of(profile)].append(log)
            return stack.enter_context(serve_in_thread(log, name=f"simulated-{profile}"))

        urls = {
            name: [
                start(profile, time_scale, fleet.batch[name]) for _ in range(fleet.replicas[name])
            ]
            for name, profile in SELF_HOSTED.items()
        }
        urls["frontier"] = [start("frontier", _FRONTIER_TIME_SCALE)]
        policy = database.with_suffix(".policy.yaml")
        policy.write_text(policy_text(urls, fleet, target_ms=target_ms), encoding="utf-8")
        proxy = stack.enter_context(
            _proxy(policy, database, in_process=in_process, extra=proxy_args)
        )
        sent = asyncio.run(_send_day(proxy, arrivals, started, during))
        wall_s = time.perf_counter() - started[0]
    sequences = {
        name: tuple(sorted(r for log in tier_logs for r in log.records))
        for name, tier_logs in logs.items()
    }
    late = _late_s(arrivals, database)
    return Replay(tuple(sent), sequences, database, policy, wall_s, late)


def _late_s(arrivals: Sequence[Arrival], database: Path) -> float:
    """The most any request reached the proxy behind its place in the schedule, by rank (the
    ledger's k-th arrival against the schedule's k-th), the first request's arrival as 0."""
    facts = read_requests(f"sqlite:///{database}", None)
    recorded = sorted(f.arrived_at for f in facts)
    if not recorded:
        return 0.0
    offsets = [(at - recorded[0]).total_seconds() for at in recorded]
    planned = sorted(a.at for a in arrivals)
    return max(got - want for got, want in zip(offsets, planned, strict=False))


@contextmanager
def _proxy(
    policy: Path, database: Path, *, in_process: bool, extra: Sequence[str] = ()
) -> Iterator[str]:
    """The proxy on ``policy`` with its ledger in ``database``: ``cascade serve`` in a process of
    its own (the replay's client and simulated tiers take the other core), or the same app in a
    thread of this one (tests: no start-up of a second interpreter)."""
    spool = database.with_suffix(".spool")
    if in_process:
        if extra:
            raise ValueError("proxy_args are for the proxy in a process of its own")
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=f"sqlite:///{database}",
            spool_path=str(spool),
            reload_interval_s=0,
        )
        with serve_in_thread(create_app(settings), name="cascade-proxy") as url:
            yield url
        return
    port = _free_port()
    args = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy), "--port", str(port)]
    args += ["--database-url", f"sqlite:///{database}", "--spool", str(spool), "--no-keys"]
    args += ["--drain-delay", "0", "--log-level", "warning", *extra]
    url = f"http://127.0.0.1:{port}"
    log = database.with_suffix(".proxy.log")
    with started(args, f"{url}/readyz", log=log) as process:
        yield url
        process.send_signal(signal.SIGTERM)  # drains, flushes the ledger, exits
        process.wait(60)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tier_of(profile: str) -> str:
    return next(name for name, p in SELF_HOSTED.items() if p == profile)


async def _send_day(
    proxy: str, arrivals: Sequence[Arrival], started: list[float], during: During | None
) -> list[Sent]:
    system = handbook(_HANDBOOK_TOKENS)
    # Idle connections expire before the server's keep-alive (uvicorn: 5 s) closes them: a
    # POST sent on a connection the server is closing fails, and is not retried.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=proxy, timeout=600, limits=limits) as client:
        started[0] = time.perf_counter()
        beside = None if during is None else asyncio.create_task(during(proxy, started[0]))

        async def one(arrival: Arrival) -> Sent:
            await asyncio.sleep(max(0.0, started[0] + arrival.at - time.perf_counter()))
            body: dict[str, Any] = {
                "model": f"cascade/{POLICY_NAME}",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": arrival.prompt},
                ],
                "max_tokens": 512,
            }
            if arrival.json_mode:
                body["response_format"] = {"type": "json_object"}
            sent = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            latency = time.perf_counter() - sent
            headers = response.headers
            return Sent(
                at=arrival.at,
                status=response.status_code,
                tier=headers.get("x-cascade-tier", "-"),
                attempts=headers.get("x-cascade-attempts", ""),
                spilled_from=headers.get("x-cascade-spilled-from"),
                cost=Decimal(headers.get("x-cascade-cost-usd", "0")),
                latency_s=latency,
            )

        answered = list(await asyncio.gather(*(one(a) for a in arrivals)))
        if beside is not None:
            await beside
        return answered
