"""``cascade demo``: the whole router on one machine, in about a minute, with no GPU or API key.

Starts simulated 1.5B, 7B and frontier tiers and the proxy on loopback (the frontier as an API
tier through litellm, like a real provider), with the ledger on SQLite. Then it sends real
prompts from the shipped labeled data — a steady phase, then a burst that saturates the
self-hosted tiers so the overflow goes to the API — and then the steady phase's prompts once more
under the same policy with the verify step on (``demo-verify``: three samples from each
self-hosted tier in one call, judged by the verifier). Every delivered answer is graded with the
simulator's ground truth and wrong ones are marked useless (``POST /v1/feedback``), as a user
would, so cost per useful token compares the two policies on the same traffic.
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

from cascade.cli.demo_grading import Grader
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
name: {name}
description: the default policy's tiers, on simulated servers
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, max_concurrency: {cap},
      overflow: frontier, threshold: {t_small}{verify}}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}, max_concurrency: {cap},
      overflow: frontier, threshold: {t_medium}{verify}}}
  - {{name: frontier, model: openai/gpt-4o, kind: api, endpoint: "{frontier}/v1",
      api_key_env: {key_env}, max_concurrency: 512,
      price: {{input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25,
               output_usd_per_mtok: 10}}}}
escalation:
  checks: [length, empty, invalid_json, invalid_tool_call]
"""
# demo-verify: each self-hosted answer comes with two more samples of its tier (one call, n=3)
# and is kept only when the verifier's confidence in it clears 0.5.
_VERIFY = ",\n      verify: {samples: 3, threshold: 0.5}"


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it."""

    status: int
    tier: str
    attempts: str
    spilled: bool
    cost: Decimal
    completion_tokens: int
    policy: str = "demo"
    request_id: str = ""
    correct: bool | None = None
    """The simulator's verdict on the delivered answer (None: not graded)."""
    evidence_cost: Decimal = Decimal(0)


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured, and where its ledger is."""

    outcomes: tuple[Outcome, ...]
    database: Path
    policy: Path
    seconds: float
    verified: tuple[Outcome, ...] = ()
    """The steady phase's prompts once more, under ``demo-verify``."""


def _prompts(count: int, seed: int) -> list[str]:
    rows = [r.prompt for r in iter_rows() if len(r.prompt) < 3000]
    random.Random(seed).shuffle(rows)
    return rows[:count]


@dataclass(frozen=True)
class _Tiers:
    small: str
    medium: str
    frontier: str


def _start_tiers(stack: ExitStack, time_scale: float, labels: LabelTable) -> _Tiers:
    def start(profile: str, scale: float) -> str:
        settings = SimulatorSettings(profile=profile, time_scale=scale)
        app = create_tier(settings, labels=labels)
        return stack.enter_context(serve_in_thread(app, name=f"simulated-{profile}"))

    return _Tiers(start("1.5b", time_scale), start("7b", time_scale), start("frontier", time_scale))


async def _send(
    client: httpx.AsyncClient,
    prompts: Sequence[str],
    concurrency: int,
    grader: Grader,
    policy: str = "demo",
) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: str) -> Outcome:
        # A support app's system prompt with today's date in it: cascade moves the date line
        # after the stable prefix, so the tiers' prefix caches keep hitting.
        system = f"{_SYSTEM}\nToday's date: 2026-11-{1 + i % 28:02d}."
        body: dict[str, object] = {
            "model": f"cascade/{policy}",
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
            ok = response.status_code == 200
            answer = response.json() if ok else {}
            request_id = response.headers.get("x-cascade-request-id", "")
            correct = grader.grade(body, answer) if ok else None
            if correct is False:  # a user who got a wrong answer says so
                feedback = {"request_id": request_id, "useless": True}
                await client.post("/v1/feedback", json=feedback)
        usage = answer.get("usage") or {}
        headers = response.headers
        return Outcome(
            response.status_code,
            headers.get("x-cascade-tier", "-"),
            headers.get("x-cascade-attempts", ""),
            "x-cascade-spilled-from" in headers
            or "error(" in headers.get("x-cascade-attempts", ""),
            Decimal(headers.get("x-cascade-cost-usd", "0")),
            int(usage.get("completion_tokens") or 0),
            policy,
            request_id,
            correct,
            Decimal(headers.get("x-cascade-evidence-cost-usd", "0")),
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
    labels = LabelTable.load()
    grader = Grader(labels)
    with ExitStack() as stack:
        tiers = _start_tiers(stack, time_scale, labels)
        policy, verifying = (
            database.with_suffix(".policy.yaml"),
            database.with_suffix(".verify.yaml"),
        )
        for path, name, verify in ((policy, "demo", ""), (verifying, "demo-verify", _VERIFY)):
            text = _POLICY.format(
                name=name,
                small=tiers.small,
                medium=tiers.medium,
                frontier=tiers.frontier,
                cap=4,
                t_small=default.tier("small").threshold,
                t_medium=default.tier("medium").threshold,
                key_env=_KEY_ENV,
                verify=verify,
            )
            path.write_text(text, encoding="utf-8")
        settings = ServerSettings(
            policies=(str(policy), str(verifying)),
            database_url=f"sqlite:///{database}",
            spool_path=str(spool),
            reload_interval_s=0,
        )
        proxy = stack.enter_context(serve_in_thread(create_app(settings), name="cascade-proxy"))
        print(
            f"simulated tiers and proxy up in {time.perf_counter() - started:.1f} s; "
            f"sending {steady} requests at concurrency 8, then a burst of {burst} at 96, then the "
            f"first {steady} again with the verify step on ..."
        )

        async def workload() -> tuple[list[Outcome], list[Outcome]]:
            async with httpx.AsyncClient(base_url=proxy, timeout=120) as client:
                calm = await _send(client, prompts[:steady], 8, grader)
                peak = await _send(client, prompts[steady:], 96, grader)
                checked = await _send(client, prompts[:steady], 8, grader, "demo-verify")
                return calm + peak, checked

        outcomes, verified = asyncio.run(workload())
    seconds = time.perf_counter() - started
    return DemoResult(tuple(outcomes), database, policy, seconds, tuple(verified))


def summarize(result: DemoResult) -> str:
    """The client's view of the run: tier mix, escalations, spills, right answers, cost per
    useful token; then the same steady prompts without and with the verify step."""
    outcomes = result.outcomes
    ok = [o for o in outcomes if o.status == 200]
    tiers = Counter(o.tier for o in ok)
    escalated = sum("rejected" in o.attempts for o in outcomes)
    spilled = sum(o.spilled for o in outcomes)
    lines = [
        f"{len(outcomes) + len(result.verified)} requests in {result.seconds:.1f} s: "
        f"{len(ok) + _ok(result.verified)} answered, "
        f"{len(outcomes) + len(result.verified) - len(ok) - _ok(result.verified)} failed",
        "demo (steady + burst): tier mix "
        + ", ".join(f"{t} {n} ({n / max(len(ok), 1):.0%})" for t, n in sorted(tiers.items())),
        f"  escalated {escalated}, spilled {spilled}; {_economics(outcomes)}",
    ]
    if result.verified:
        steady = outcomes[: len(result.verified)]
        checked = result.verified
        by_verifier = sum("rejected(verify)" in o.attempts for o in checked)
        # The same prompt without the verify step went to the same first tier: its verdict says
        # whether the answer the verifier sent up was wrong.
        sent_up = [
            a for a, b in zip(steady, checked, strict=True) if "rejected(verify)" in b.attempts
        ]
        caught = sum(a.correct is False for a in sent_up)
        alarms = sum(a.correct is True for a in sent_up)
        evidence = sum((o.evidence_cost for o in checked), Decimal(0))
        lines += [
            f"same {len(steady)} steady prompts, without and with the verify step:",
            f"  demo         {_economics(steady)}",
            f"  demo-verify  {_economics(checked)}",
            f"  the verifier escalated {by_verifier} cheap answers: {caught} were wrong without "
            f"it (caught), {alarms} were right (false alarms); the samples it judged by cost "
            f"${evidence:.6f}",
        ]
    lines.append(f"ledger: {result.database}")
    return "\n".join(lines)


def _ok(outcomes: Sequence[Outcome]) -> int:
    return sum(o.status == 200 for o in outcomes)


def _economics(outcomes: Sequence[Outcome]) -> str:
    """Right answers, cost, and cost per 1M useful tokens (the right answers' tokens)."""
    graded = [o for o in outcomes if o.correct is not None]
    right = [o for o in graded if o.correct]
    cost = sum((o.cost for o in outcomes), Decimal(0))
    useful = sum(o.completion_tokens for o in right)
    per_million = f"${cost / useful * 1_000_000:.2f}" if useful else "n/a"
    return (
        f"right {len(right)}/{len(graded)} ({len(right) / max(len(graded), 1):.0%}), "
        f"cost ${cost:.6f}, per 1M useful tokens {per_million}"
    )
