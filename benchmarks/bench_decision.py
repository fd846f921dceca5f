"""Decision latency: prompt + score + decide for a 2,000-character prompt on one CPU core.

Budget (issue: the core): p50 <= 1 ms and p99 <= 5 ms with the shipped model.

    .venv/bin/python -m benchmarks.bench_decision [--iterations 5000] [--chars 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cascade.core.capacity import StaticCapacity
from cascade.core.decision import decide
from cascade.core.planner import Planner
from cascade.core.prompt import prepare_prompt
from cascade.model.scorer import OnnxScorer
from cascade.policy import load_policy

_TEXT = (
    "You are given a function that parses ISO-8601 timestamps and a failing unit test. "
    "Explain why `parse('2024-02-30T10:00:00Z')` returns a date in March instead of raising, "
    "propose a fix that keeps the public signature, and write two additional tests covering "
    "leap years and time zones with non-zero minute offsets such as +05:45. Résumé: naïve "
    "parsers often roll over invalid days; 日本語のテキストも含まれます. Кратко объясните. "
)
_SYSTEM = "You are a careful senior engineer. Answer concisely. Today is 2026-11-22T10:15:00Z."


def _prompts(n: int, chars: int) -> list[str]:
    """n distinct prompts of exactly ``chars`` characters (rotations of a mixed-language text)."""
    base = (_TEXT * (chars // len(_TEXT) + 2))[: chars + n]
    return [base[i : i + chars] for i in range(n)]


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def p(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"p50 {p(0.50) * 1e3:7.3f} ms  p90 {p(0.90) * 1e3:7.3f} ms  "
        f"p99 {p(0.99) * 1e3:7.3f} ms  max {ordered[-1] * 1e3:7.3f} ms  "
        f"mean {statistics.fmean(ordered) * 1e3:7.3f} ms"
    )


def _time(fn: Callable[[int], object], iterations: int) -> list[float]:
    samples = []
    for i in range(iterations):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    """Print decision latency percentiles, whole and per step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--policy", default="default")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(
            0, {sorted(os.sched_getaffinity(0))[0]}
        )  # one core, as the budget says

    policy = load_policy(args.policy)
    scorer = OnnxScorer(policy.scorer.model, device="cpu", intra_op_threads=1)
    planner = Planner(policy, scorer, StaticCapacity())
    prompts = _prompts(256, args.chars)
    requests = [
        [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": p}] for p in prompts
    ]
    for i in range(300):  # warm up: allocator, onnxruntime's first runs, branch predictors
        planner.plan(requests[i % len(requests)])

    n = args.iterations
    whole = _time(lambda i: planner.plan(requests[i % len(requests)]), n)
    prepared = [prepare_prompt(r) for r in requests]
    step_prompt = _time(lambda i: prepare_prompt(requests[i % len(requests)]), n)
    step_score = _time(lambda i: scorer.score(prepared[i % len(prepared)].scoring_text), n)
    idle = StaticCapacity()
    step_decide = _time(
        lambda i: decide(policy, 0.5, prepared[i % len(prepared)], capacity=idle), n
    )

    print(f"decision latency, {args.chars}-char prompt + system prompt, {n} iterations, one core")
    print(f"model {scorer.manifest.name} on {scorer.device}; policy {policy.name}")
    print(f"  route (all)  {_percentiles(whole)}")
    print(f"  prompt step  {_percentiles(step_prompt)}")
    print(f"  score step   {_percentiles(step_score)}")
    print(f"  decide step  {_percentiles(step_decide)}")
    p50 = sorted(whole)[len(whole) // 2] * 1e3
    p99 = sorted(whole)[int(0.99 * len(whole))] * 1e3
    verdict = "within" if p50 <= 1.0 and p99 <= 5.0 else "OVER"
    print(f"budget p50 <= 1 ms, p99 <= 5 ms: {verdict} (p50 {p50:.3f} ms, p99 {p99:.3f} ms)")


if __name__ == "__main__":
    main()
