"""``cascade demo``: the whole router on one machine, in about a minute, with no GPU or API key.

Starts simulated 1.5B, 7B and frontier tiers and the proxy on loopback (the frontier as an API
tier through litellm, like a real provider), with the ledger on SQLite. Then it sends real
prompts from the shipped labeled data — a steady phase, then a burst that saturates the
self-hosted tiers so the overflow goes to the API — and prints what happened.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx

from cascade.policy.loading import load_policy
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.dataset import iter_rows
from cascade.simulator.labels import LabelTable
from cascade.simulator.server import create_app as create_tier
from cascade.simulator.settings import SimulatorSettings

_KEY_ENV = "CASCADE_DEMO_FRONTIER_KEY"
_SYSTEM = (
    "You are the assistant of ACME's help desk. Answer the question accurately and concisely; "
    "show your reasoning briefly when the question needs calculation, and say so when you are "
    "not sure. Never invent facts, product names or policies."
)
_POLICY = """\
name: demo
description: the default policy's tiers, on simulated servers
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, max_concurrency: {cap},
      overflow: frontier, threshold: {t_small}}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}, max_concurrency: {cap},
      overflow: frontier, threshold: {t_medium}}}
  - {{name: frontier, model: openai/gpt-4o, kind: api, endpoint: "{frontier}/v1",
      api_key_env: {key_env}, max_concurrency: 512,
      price: {{input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25,
               output_usd_per_mtok: 10}}}}
escalation:
  checks: [length, empty, invalid_json, invalid_tool_call]
"""


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it."""

    status: int
    tier: str
    attempts: str
    spilled: bool
    cost: Decimal
    completion_tokens: int


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured, and where its ledger is."""

    outcomes: tuple[Outcome, ...]
    database: Path
    policy: Path
    seconds: float


def _prompts(count: int, seed: int) -> list[str]:
    rows = [r.prompt for r in iter_rows() if len(r.prompt) < 3000]
    random.Random(seed).shuffle(rows)
    return rows[:count]


@dataclass(frozen=True)
class _Tiers:
    small: str
    medium: str
    frontier: str


def _start_tiers(stack: ExitStack, time_scale: float) -> _Tiers:
    labels = LabelTable.load()

    def start(profile: str, scale: float) -> str:
        settings = SimulatorSettings(profile=profile, time_scale=scale)
        app = create_tier(settings, labels=labels)
        return stack.enter_context(serve_in_thread(app, name=f"simulated-{profile}"))

    return _Tiers(start("1.5b", time_scale), start("7b", time_scale), start("frontier", time_scale))


async def _send(
    client: httpx.AsyncClient, prompts: Sequence[str], concurrency: int
) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: str) -> Outcome:
        # A support app's system prompt with today's date in it: cascade moves the date line
        # after the stable prefix, so the tiers' prefix caches keep hitting.
        system = f"{_SYSTEM}\nToday's date: 2026-11-{1 + i % 28:02d}."
        body: dict[str, object] = {
            "model": "cascade",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": 512,
        }
        if i % 10 == 0:  # some traffic asks for JSON, which cheap tiers sometimes get wrong
            body["response_format"] = {"type": "json_object"}
        async with gate:
            response = await client.post("/v1/chat/completions", json=body)
        usage = response.json().get("usage") or {} if response.status_code == 200 else {}
        return Outcome(
            response.status_code,
            response.headers.get("x-cascade-tier", "-"),
            response.headers.get("x-cascade-attempts", ""),
            "x-cascade-spilled-from" in response.headers
            or "error(" in response.headers.get("x-cascade-attempts", ""),
            Decimal(response.headers.get("x-cascade-cost-usd", "0")),
            int(usage.get("completion_tokens") or 0),
        )

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def run_demo(
    *,
    database: Path,
    steady: int = 240,
    burst: int = 160,
    time_scale: float = 1.0,
    seed: int = 0,
) -> DemoResult:
    """Start everything, send the workload, stop everything (the ledger is flushed on stop).

    ``database`` and its spool (``<database>.spool``) are emptied first: each demo reports on
    its own run.
    """
    started = time.perf_counter()
    spool = database.with_suffix(".spool")
    for stale in (database, spool):
        stale.unlink(missing_ok=True)
    default = load_policy("default")
    os.environ.setdefault(_KEY_ENV, "demo-key-not-secret")
    prompts = _prompts(steady + burst, seed)
    with ExitStack() as stack:
        tiers = _start_tiers(stack, time_scale)
        policy = database.with_suffix(".policy.yaml")
        policy.write_text(
            _POLICY.format(
                small=tiers.small,
                medium=tiers.medium,
                frontier=tiers.frontier,
                cap=4,
                t_small=default.tier("small").threshold,
                t_medium=default.tier("medium").threshold,
                key_env=_KEY_ENV,
            ),
            encoding="utf-8",
        )
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=f"sqlite:///{database}",
            spool_path=str(spool),
            reload_interval_s=0,
        )
        proxy = stack.enter_context(serve_in_thread(create_app(settings), name="cascade-proxy"))
        print(
            f"simulated tiers and proxy up in {time.perf_counter() - started:.1f} s; "
            f"sending {steady} requests at concurrency 8, then a burst of {burst} at 96 ..."
        )

        async def workload() -> list[Outcome]:
            async with httpx.AsyncClient(base_url=proxy, timeout=120) as client:
                calm = await _send(client, prompts[:steady], concurrency=8)
                peak = await _send(client, prompts[steady:], concurrency=96)
                return calm + peak

        outcomes = asyncio.run(workload())
    return DemoResult(tuple(outcomes), database, policy, time.perf_counter() - started)


def summarize(result: DemoResult) -> str:
    """The client's view of the run: tier mix, escalations, spills, cost per useful token."""
    outcomes = result.outcomes
    ok = [o for o in outcomes if o.status == 200]
    tiers = Counter(o.tier for o in ok)
    escalated = sum("rejected" in o.attempts for o in outcomes)
    spilled = sum(o.spilled for o in outcomes)
    cost = sum((o.cost for o in outcomes), Decimal(0))
    useful = sum(o.completion_tokens for o in ok)
    lines = [
        f"{len(outcomes)} requests in {result.seconds:.1f} s: {len(ok)} answered, "
        f"{len(outcomes) - len(ok)} failed",
        "tier mix: "
        + ", ".join(f"{t} {n} ({n / max(len(ok), 1):.0%})" for t, n in sorted(tiers.items())),
        f"escalated {escalated}, spilled {spilled}",
        f"cost ${cost:.6f}; cost per 1M useful tokens ${cost / max(useful, 1) * 1_000_000:.2f}",
        f"ledger: {result.database}",
    ]
    return "\n".join(lines)
