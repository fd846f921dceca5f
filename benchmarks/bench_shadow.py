"""A shadow policy's cost per request, in process: the live plan, and the shadow's decision beside.

The proxy's benchmark (``bench_proxy --shadow``) measures the same end to end, but on a shared
2-core machine its runs differ by a few percent between two identical proxies, about what a
shadow costs; here the two steps are timed alone, on one core, with the proxy's own objects:
the live plan as the chat route makes it (prepare, score through the loop batcher, decide), and
:meth:`cascade.server.shadow.Shadows.decide` for a candidate with other thresholds that reuses
the live score (``same-scorer``) or scores with another model through its own batcher
(``own-scorer``). Prompts are the bench_proxy request with a different question each time (so
no scorer cache helps), interleaved live then shadow as the proxy runs them.

    .venv/bin/python -m benchmarks.bench_shadow [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.bench_proxy import _BODY, policy_text, shadow_text
from cascade.core.capacity import InFlightCounter
from cascade.core.planner import Planner
from cascade.core.request import ChatRequest, parse_chat_request
from cascade.model.batching import LoopBatcher
from cascade.model.scorer import OnnxScorer, Scorer
from cascade.policy import Policy, load_policy
from cascade.server.metrics import Metrics
from cascade.server.shadow import Shadows

_URL = "http://127.0.0.1:9"


def _requests(n: int) -> list[ChatRequest]:
    """The benchmark's request, each with its own question."""
    system = _BODY["messages"][0]  # type: ignore[index]
    return [
        parse_chat_request(
            orjson.dumps(
                {
                    **_BODY,
                    "messages": [
                        system,
                        {"role": "user", "content": f"What is the capital of land {i}?"},
                    ],
                }
            )
        )
        for i in range(n)
    ]


async def _measure(kind: str, n: int, folder: Path) -> tuple[list[float], list[float]]:
    live_file, candidate = folder / "live.yaml", folder / f"{kind}.yaml"
    live_file.write_text(policy_text(_URL, verify=False))
    candidate.write_text(shadow_text(_URL, kind))
    live = load_policy(live_file)
    scorers: dict[str, Scorer] = {}
    batchers: dict[str, LoopBatcher] = {}

    def scorer(policy: Policy) -> Scorer:
        return scorers.setdefault(policy.scorer.model, OnnxScorer(policy.scorer.model))

    async def batcher(policy: Policy) -> LoopBatcher:
        return batchers.setdefault(policy.scorer.model, LoopBatcher(scorer(policy)))

    capacity = InFlightCounter()
    shadows = Shadows(scorer, batcher, capacity)
    await shadows.load([str(candidate)], {live.name})
    planner, live_batcher, metrics = (
        Planner(live, scorer(live), capacity),
        await batcher(live),
        Metrics(),
    )
    plans, beside = [], []
    for chat in _requests(n):
        started = time.perf_counter()
        decision = await planner.aplan(
            chat.messages, live_batcher, max_tokens=32, capacity=capacity
        )
        planned = time.perf_counter()
        await shadows.decide(
            live, chat, decision, workload=None, only_tiers=None, counter=metrics, request_id="r"
        )
        plans.append(planned - started)
        beside.append(time.perf_counter() - planned)
    return plans, beside


def main() -> None:
    """Print the live plan's and the shadow's time per request (p50, mean) for each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{'shadow':<12} {'live plan p50/mean us':>22} {'shadow p50/mean us':>19} {'share':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("same-scorer", "own-scorer"):
            plans, beside = asyncio.run(_measure(kind, args.requests, Path(tmp)))
            p50, mean = statistics.median(plans) * 1e6, statistics.fmean(plans) * 1e6
            s50, smean = statistics.median(beside) * 1e6, statistics.fmean(beside) * 1e6
            share = smean / mean
            print(f"{kind:<12} {p50:>10.1f}/{mean:<11.1f} {s50:>8.1f}/{smean:<10.1f} {share:>6.0%}")


if __name__ == "__main__":
    main()
