"""Prefix affinity across engine replicas: cache hits, time to first token and cost per routing.

One self-hosted tier of ``--replicas`` simulated engines (the 7B profile by default; each has its
own prefix cache, as each vLLM replica does) behind one proxy (the real app under uvicorn, no
ledger). ``--concurrency`` clients send requests back to back, non-streamed; each carries one
of a few shared system prompts (1,000-2,000 tokens each, one per app, Zipf-skewed popularity)
and a varied question. The same seeded workload runs once per ``routing`` (``prefix``,
``round_robin``, ``least_loaded``), each time on fresh replicas (cold caches) at the same ports,
so the prefixes' rendezvous homes are the same from run to run.

Workloads:

- single turn: each request is one question under one app's system prompt;
- conversations: four turns each, the replica's earlier answers in the history (what a
  replica's cache can hold beyond the system prompt is the conversation so far);
- many prompts: as single turn, over ``--many`` apps instead of six.

Printed per workload and routing: the cache hit rate (prompt tokens the replicas read from their
prefix cache, from each answer's ``usage``), time to first token p50, p95 and mean (the
replicas' own ``x-simulated-ttft-ms``: queueing plus the step that prefills the uncached part of
the prompt, in simulated milliseconds, whatever the host's speed; with one request in ten to
twenty missing the cache, the p95 sits where the misses begin, and the mean counts them all),
the cost of the tier's calls per million requests
(``x-cascade-cost-usd``: a self-hosted call pays GPU time for its uncached prompt tokens and its
output, a cached token is free), and the busiest replica's share of the calls.
Then, for the single-turn workload, how the hottest app's requests and all requests spread over
the replicas: the bound on load keeps the hot prefix from landing on one replica alone.

    .venv/bin/python -m benchmarks.bench_affinity [--replicas 4] [--requests 600]
        [--concurrency 32] [--many 48] [--profile 7b] [--seed 7] [--base-port 18430]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks.support_workload import QUESTIONS, TOPICS
from cascade.core.tokens import estimate_tokens
from cascade.logs import configure_json_logs
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.labels import LabelTable
from cascade.simulator.server import create_app as create_simulator
from cascade.simulator.settings import SimulatorSettings

ROUTINGS = ("prefix", "round_robin", "least_loaded")
TIME_SCALE = 1.0
"""Simulated seconds run at wall speed: the host's own delays are small beside the model's."""
RAMP_S = 0.02
"""Seconds between two clients' first requests (32 cold prompts in one engine step would be a
burst no service sees)."""
_POLICY = """\
name: affinity
tiers:
  - name: medium
    model: {model}
    kind: self_hosted
    replicas: {replicas}
    routing: {routing}
    max_concurrency: 1024
    price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}  # the default policy's medium
"""
_TURNS = 4


def _system_prompt(app: int, rng: random.Random) -> str:
    """One app's handbook: 1,000 to 2,000 tokens of rules that name the app."""
    target = rng.randint(1_000, 2_000)
    lines: list[str] = []
    while estimate_tokens("\n".join(lines)) < target:
        n, topic = len(lines) + 1, rng.choice(TOPICS)
        lines.append(
            f"App {app} rule {n}: for {topic}, check the customer's account first, quote "
            f"section {n} of the app {app} handbook, and never promise a date or a refund."
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Workload:
    """Sessions to run: (app, questions asked one after another in one conversation)."""

    name: str
    prompts: tuple[str, ...]
    sessions: tuple[tuple[int, tuple[str, ...]], ...]


def _workload(name: str, apps: int, requests: int, turns: int, seed: int) -> Workload:
    """Zipf-skewed (s = 1.2) apps, varied questions; the same for every routing."""
    rng = random.Random(f"{seed}-{name}")
    prompts = tuple(_system_prompt(app, rng) for app in range(apps))
    weights = [1 / (rank + 1) ** 1.2 for rank in range(apps)]
    sessions = []
    for _ in range(requests // turns):
        app = rng.choices(range(apps), weights)[0]
        asked = (rng.choice(QUESTIONS).format(n=rng.randint(100, 99_999)) for _ in range(turns))
        sessions.append((app, tuple(asked)))
    return Workload(name, prompts, tuple(sessions))


@dataclass
class _Served:
    """What one replica saw: the app of each call and its time to first token (simulated ms)."""

    apps: list[int] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)


class _Recorder:
    """ASGI middleware in front of one simulated replica: records each chat call's app (by its
    system prompt) and the replica's ``x-simulated-ttft-ms``."""

    def __init__(self, app: ASGIApp, prompts: Sequence[str]) -> None:
        self.app = app
        self.served = _Served()
        self._apps = {prompt: index for index, prompt in enumerate(prompts)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        ttft: list[float] = []

        async def reading() -> Message:
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", ()))
                ttft.extend(float(v) for v in [headers.get(b"x-simulated-ttft-ms")] if v)
            await send(message)

        await self.app(scope, reading, sending)
        system = json.loads(body)["messages"][0]["content"]
        self.served.apps.append(self._apps.get(system, -1))
        self.served.ttft_ms.extend(ttft)


@dataclass
class Result:
    """One routing's run of one workload."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = Decimal(0)
    requests: int = 0
    replicas: list[_Served] = field(default_factory=list)

    @property
    def ttft_ms(self) -> list[float]:
        return sorted(t for served in self.replicas for t in served.ttft_ms)


async def _conversation(
    client: httpx.AsyncClient, prompt: str, questions: tuple[str, ...], result: Result
) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": prompt}]
    for question in questions:
        messages.append({"role": "user", "content": question})
        body = {"model": "cascade", "messages": messages, "max_tokens": 256}
        reply = await client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()
        answer = reply.json()
        usage = answer["usage"]
        result.prompt_tokens += usage["prompt_tokens"]
        result.cached_tokens += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        result.cost += Decimal(reply.headers["x-cascade-cost-usd"])
        result.requests += 1
        messages.append(
            {"role": "assistant", "content": answer["choices"][0]["message"]["content"]}
        )


async def _drive(proxy: str, workload: Workload, concurrency: int) -> Result:
    """Every session of ``workload``, ``concurrency`` at a time, back to back (the clients start
    ``RAMP_S`` apart)."""
    result = Result()
    queue = list(reversed(workload.sessions))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=proxy, timeout=120, limits=limits) as client:

        async def worker(index: int) -> None:
            await asyncio.sleep(index * RAMP_S)  # clients arrive one by one, not all at once
            while queue:
                app, questions = queue.pop()
                await _conversation(client, workload.prompts[app], questions, result)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return result


@contextmanager
def _tier(ns: argparse.Namespace, workload: Workload, labels: LabelTable) -> Iterator[list[Any]]:
    """Fresh simulated replicas at the same ports every time: (recorder, URL) pairs."""
    settings = SimulatorSettings(profile=ns.profile, time_scale=TIME_SCALE)
    with ExitStack() as stack:
        replicas = []
        for index in range(ns.replicas):
            recorder = _Recorder(create_simulator(settings, labels=labels), workload.prompts)
            url = stack.enter_context(
                serve_in_thread(recorder, name=f"replica-{index}", port=ns.base_port + index)
            )
            replicas.append((recorder, url))
        yield replicas


def run(ns: argparse.Namespace, workload: Workload, routing: str, labels: LabelTable) -> Result:
    """``workload`` through a proxy routing by ``routing`` to fresh replicas."""
    with _tier(ns, workload, labels) as replicas, tempfile.TemporaryDirectory() as folder:
        model = SimulatorSettings(profile=ns.profile).spec.models[0]
        urls = json.dumps([f"{url}/v1" for _, url in replicas])
        policy = Path(folder) / "affinity.yaml"
        policy.write_text(_POLICY.format(model=model, replicas=urls, routing=routing))
        settings = ServerSettings(policies=(str(policy),), reload_interval_s=0)
        with serve_in_thread(create_app(settings), name="proxy") as proxy:
            result = asyncio.run(_drive(proxy, workload, ns.concurrency))
        result.replicas = [recorder.served for recorder, _ in replicas]
    return result


def _percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def _row(workload: str, routing: str, result: Result) -> str:
    ttft = result.ttft_ms
    calls = [len(served.apps) for served in result.replicas]
    per_million = result.cost / result.requests * 1_000_000
    return (
        f"| {workload} | {routing} | {result.cached_tokens / result.prompt_tokens:.1%} "
        f"| {_percentile(ttft, 0.5):.0f} | {_percentile(ttft, 0.95):.0f} "
        f"| {statistics.fmean(ttft):.1f} "
        f"| {per_million:.2f} | {max(calls) / sum(calls):.0%} |"
    )


def _spread(workloads: dict[str, dict[str, Result]]) -> None:
    """How the hottest app's requests, and all requests, spread over the replicas."""
    single = workloads["single turn"]
    print("\nSingle turn: each replica's share of the hottest app's requests / of all requests")
    count = len(single["prefix"].replicas)
    print("\n| routing | " + " | ".join(f"replica {i}" for i in range(count)) + " |")
    print("|---|" + "---|" * count)
    for routing, result in single.items():
        hot = Counter(app for served in result.replicas for app in served.apps).most_common(1)
        top = hot[0][0]
        hot_total = hot[0][1]
        total = sum(len(served.apps) for served in result.replicas)
        cells = [
            f"{served.apps.count(top) / hot_total:.0%} / {len(served.apps) / total:.0%}"
            for served in result.replicas
        ]
        print(f"| {routing} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--apps", type=int, default=6)
    parser.add_argument("--many", type=int, default=48, help="apps of the many-prompts workload")
    parser.add_argument("--profile", default="7b")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--base-port", type=int, default=18430)
    ns = parser.parse_args()
    configure_json_logs("warning")  # the replicas' and the proxy's lines would bury the table
    labels = LabelTable.load()
    workloads = (
        _workload("single turn", ns.apps, ns.requests, 1, ns.seed),
        _workload("conversations", ns.apps, ns.requests, _TURNS, ns.seed),
        _workload(f"{ns.many} prompts", ns.many, ns.requests, 1, ns.seed),
    )
    print(
        f"{ns.replicas} simulated {ns.profile} replicas, {ns.concurrency} clients, "
        f"{ns.requests} requests per run, seed {ns.seed}\n"
    )
    print(
        "| workload | routing | cache hit rate | TTFT p50 ms | TTFT p95 ms | TTFT mean ms "
        "| cost per 1M requests ($) | busiest replica |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results: dict[str, dict[str, Result]] = {}
    for workload in workloads:
        for routing in ROUTINGS:
            result = run(ns, workload, routing, labels)
            results.setdefault(workload.name, {})[routing] = result
            print(_row(workload.name, routing, result), flush=True)
    _spread(results)


if __name__ == "__main__":
    main()
