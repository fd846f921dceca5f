"""The learning loop end to end on simulated tiers: serve, export labels, adapt, replay, serve.

1. **Log.** Support-desk questions from the shipped labeled data go through the real proxy under
   policy ``loop`` (the default policy's three tiers on simulated servers, the verify step on the
   self-hosted ones) with exploration on (``learning.explore`` and ``explore_up``), into a SQLite
   ledger. A user grades each answer with the simulator's ground truth and marks wrong ones
   useless (``POST /v1/feedback``), as the demo's does.
2. **Labels.** ``cascade export --labels`` writes the ledger's traffic as labeled rows: the
   scorer's feature numbers (the ledger keeps no prompt), the labels from verify outcomes,
   escalations and feedback, and each row's propensity.
3. **Adapt.** ``cascade train --base prompt-features-v2`` adapts the shipped model on those rows.
4. **Replay.** ``cascade replay --policy`` the adapted policy (same tiers and thresholds, the new
   model, no exploration) on the logged ledger: its cost per useful token and escalation rate,
   estimated off-policy with confidence intervals.
5. **Serve** the adapted policy on the same questions into a fresh ledger and measure both.

The replay's estimate should hold what serving then measured within its confidence interval.

    .venv/bin/python -m benchmarks.learning_loop [--requests 300] [--seed 1] [--seeds 1]
        [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from cascade.cli import main as cascade
from cascade.cli.demo_grading import Grader
from cascade.ledger.queries import RequestFacts, read_requests
from cascade.logs import configure_json_logs
from cascade.policy import load_policy
from cascade.server.app import create_app
from cascade.server.background import serve_in_thread
from cascade.server.settings import ServerSettings
from cascade.simulator.dataset import iter_rows
from cascade.simulator.labels import LabelTable
from cascade.simulator.server import create_app as create_tier
from cascade.simulator.settings import SimulatorSettings

_KEY_ENV = "CASCADE_LOOP_FRONTIER_KEY"
_SYSTEM = "You are the assistant of ACME's help desk. Answer accurately and concisely."
_POLICY = """\
name: loop
description: the default policy's tiers on simulated servers (benchmarks/learning_loop.py)
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, max_concurrency: 64,
      threshold: {t_small}, verify: {{samples: 3, threshold: 0.5}}}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}, max_concurrency: 64,
      threshold: {t_medium}, verify: {{samples: 3, threshold: 0.5}}}}
  - {{name: frontier, model: openai/gpt-4o, kind: api, endpoint: "{frontier}/v1",
      api_key_env: {key_env}, max_concurrency: 512,
      price: {{input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25,
               output_usd_per_mtok: 10}}}}
escalation:
  checks: [length, empty, invalid_json, invalid_tool_call]
scorer:
  model: {model}
learning:
  explore: {explore}
  explore_up: {explore_up}
"""


@dataclass(frozen=True, slots=True)
class Figures:
    """A ledger's cost per useful token and escalation rate."""

    requests: int
    cost_per_useful_token: float
    escalation_rate: float


@dataclass(frozen=True, slots=True)
class LoopResult:
    """What each step produced."""

    logged: Figures
    replayed: dict[str, Any]
    """``cascade replay --json``."""
    served: Figures
    labels: int
    workdir: Path


def prompts(count: int, seed: int) -> list[str]:
    """``count`` questions of the shipped labeled data, shuffled by ``seed``."""
    rows = [r.prompt for r in iter_rows() if len(r.prompt) < 3000]
    random.Random(seed).shuffle(rows)
    return rows[:count]


def policy_text(urls: dict[str, str], *, model: str, explore: float, explore_up: float) -> str:
    """Policy ``loop`` on the simulated tiers, at the default policy's thresholds."""
    default = load_policy("default")
    return _POLICY.format(
        small=urls["small"],
        medium=urls["medium"],
        frontier=urls["frontier"],
        t_small=default.tier("small").threshold,
        t_medium=default.tier("medium").threshold,
        key_env=_KEY_ENV,
        model=model,
        explore=explore,
        explore_up=explore_up,
    )


async def _send(proxy: str, questions: Sequence[str], grader: Grader, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=proxy, timeout=120) as client:

        async def one(question: str) -> None:
            body = {
                "model": "cascade/loop",
                "messages": [
                    {"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 512,
            }
            async with gate:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                if grader.grade(body, response.json()) is False:
                    request_id = response.headers["x-cascade-request-id"]
                    feedback = {"request_id": request_id, "useless": True}
                    (await client.post("/v1/feedback", json=feedback)).raise_for_status()

        await asyncio.gather(*(one(q) for q in questions))


def serve(
    policy: Path, database: Path, questions: Sequence[str], grader: Grader, *, seed: int
) -> None:
    """Serve ``questions`` under ``policy`` into ``database`` (emptied first), graded."""
    for stale in (database, database.with_suffix(".spool")):
        stale.unlink(missing_ok=True)
    settings = ServerSettings(
        policies=(str(policy),),
        database_url=f"sqlite:///{database}",
        spool_path=str(database.with_suffix(".spool")),
        reload_interval_s=0,
        explore_seed=seed,
    )
    with serve_in_thread(create_app(settings), name="cascade-proxy") as proxy:
        asyncio.run(_send(proxy, questions, grader, concurrency=8))


def figures(facts: Sequence[RequestFacts]) -> Figures:
    """Cost per useful token and the share of requests whose first answer was turned down."""
    cost = sum((f.cost_usd for f in facts), Decimal(0))
    useful = sum(f.useful_tokens for f in facts)
    escalated = sum(
        any(a.outcome == "rejected" for a in f.attempts if a.role == "primary") for f in facts
    )
    per_token = float(cost / useful) if useful else float("inf")
    return Figures(len(facts), per_token, escalated / len(facts) if facts else 0.0)


def _cli(args: list[str]) -> str:
    """``cascade ARGS`` as the CLI runs it; its standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cascade(args)
    if status != 0:
        raise RuntimeError(f"cascade {' '.join(args)} exited {status}: {out.getvalue()[-2000:]}")
    return out.getvalue()


def run_loop(*, requests: int, seed: int, workdir: Path) -> LoopResult:
    """The five steps of the module docstring; the ledgers, labels and models stay in
    ``workdir``."""
    os.environ.setdefault(_KEY_ENV, "loop-key-not-secret")
    workdir.mkdir(parents=True, exist_ok=True)
    questions = prompts(requests, seed)
    labels = LabelTable.load()
    grader = Grader(labels)
    with ExitStack() as stack:

        def tier(profile: str) -> str:
            settings = SimulatorSettings(profile=profile, time_scale=0.02)
            return stack.enter_context(serve_in_thread(create_tier(settings, labels=labels)))

        urls = {"small": tier("1.5b"), "medium": tier("7b"), "frontier": tier("frontier")}
        logged_policy = workdir / "loop.yaml"
        logged_policy.write_text(
            policy_text(urls, model="prompt-features-v2", explore=0.25, explore_up=0.15),
            encoding="utf-8",
        )
        logged = workdir / "logged.db"
        serve(logged_policy, logged, questions, grader, seed=seed)
        url = f"sqlite:///{logged}"
        label_file = workdir / "labels.jsonl"
        export = ["export", "--labels", "--url", url, "--policy", str(logged_policy)]
        _cli([*export, "--out", str(label_file)])
        adapted = workdir / "adapted"
        train = ["train", "--base", "prompt-features-v2", "--data", str(label_file)]
        _cli([*train, "--out", str(adapted)])
        candidate = workdir / "adapted.yaml"
        candidate.write_text(
            policy_text(urls, model=str(adapted), explore=0.0, explore_up=0.0), encoding="utf-8"
        )
        for name, share in (("medium", "0.15"), ("small", "0.45")):  # the default's targets
            calibrate = ["calibrate", "--data", str(label_file), "--model", str(adapted)]
            target = ["--max-strong-share", share, "--policy", str(candidate), "--tier", name]
            _cli([*calibrate, *target, "--write"])
        replayed = json.loads(_cli(["replay", "--policy", str(candidate), "--url", url, "--json"]))
        served = workdir / "served.db"
        serve(candidate, served, questions, grader, seed=seed)
    count = sum(1 for line in label_file.read_text().splitlines() if line.strip())
    return LoopResult(
        logged=figures(read_requests(url, None)),
        replayed=replayed,
        served=figures(read_requests(f"sqlite:///{served}", None)),
        labels=count,
        workdir=workdir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("learning-loop"))
    parser.add_argument("--seeds", type=int, default=1, help="runs, seeds --seed, --seed+1, ...")
    ns = parser.parse_args(argv)
    configure_json_logs("warning")  # the proxy's and the tiers' lines would bury the table
    print(
        "| seed | figure | logged policy (measured) | adapted, replayed (95% interval) "
        "| adapted, served (measured) | inside |"
    )
    print("|---|---|---|---|---|---|")
    inside = 0
    for seed in range(ns.seed, ns.seed + ns.seeds):
        result = run_loop(requests=ns.requests, seed=seed, workdir=ns.workdir / str(seed))
        estimate = result.replayed["estimate"]
        for name, scale, unit in (
            ("cost_per_useful_token", 1e6, "$/M"),
            ("escalation_rate", 100, "%"),
        ):
            logged, served = getattr(result.logged, name), getattr(result.served, name)
            interval = (estimate["candidate"] or {}).get(name)
            if interval is None:
                text, ok = "not supported: " + "; ".join(estimate["reasons"]), False
            else:
                low, high = interval["low"], interval["high"]
                text = f"{interval['value'] * scale:.3f} [{low * scale:.3f}, {high * scale:.3f}]"
                ok = low <= served <= high
            inside += ok
            print(
                f"| {seed} | {name} ({unit}) | {logged * scale:.3f} | {text} | "
                f"{served * scale:.3f} | {'yes' if ok else 'no'} |"
            )
    print(f"{inside} of {2 * ns.seeds} figures inside their interval")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
