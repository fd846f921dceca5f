"""Latency of a code check: a candidate and two witnesses run in the sandbox, in parallel.

    .venv/bin/python -m benchmarks.bench_code_evidence [--iterations 40] [--witnesses 2]

Prints p50/p99 of :func:`cascade.model.code_evidence.check_code` (one fresh interpreter per
answer, 10 inputs each) for three fixed Fibonacci programs, and of one program that loops on
every input (the cost a looping answer imposes: its per-call timers and the CPU limit). This is
the price of verifying a code answer; answers that are not code never pay it
(``benchmarks/bench_verifier`` measures that path).
"""

from __future__ import annotations

import argparse
import time

from cascade.model.code_evidence import Code, check_code

PROMPT = "Write a python function fib(n) that returns the n-th Fibonacci number (0 based)."
PROGRAMS = (
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "from functools import cache\n@cache\ndef fib(n):\n"
    "    return fib(n - 1) + fib(n - 2) if n > 1 else n\n",
)
LOOPING = "def fib(n):\n    while True:\n        pass\n"


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1e3:7.1f} ms   p99 {p99 * 1e3:7.1f} ms"


def _time(candidate: str, witnesses: list[str], iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        check_code(PROMPT, Code(candidate, True), [Code(w, True) for w in witnesses])
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    """Print code-check latency percentiles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--witnesses", type=int, default=2)
    args = parser.parse_args()
    witnesses = [PROGRAMS[1 + i % 2] for i in range(args.witnesses)]
    plain = _time(PROGRAMS[0], witnesses, args.iterations)
    looping = _time(LOOPING, witnesses, max(args.iterations // 4, 3))
    print(f"check_code, candidate + {args.witnesses} witnesses   {_percentiles(plain)}")
    print(f"the same with a looping candidate       {_percentiles(looping)}")


if __name__ == "__main__":
    main()
