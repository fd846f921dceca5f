"""Verifier latency on one CPU core: one candidate with two witnesses, and batches of 64.

    .venv/bin/python -m benchmarks.bench_verifier [--model verifier-v2] [--iterations 3000]

Prints p50/p99 of ``OnnxVerifier.confidence`` (final-answer extraction and features of three
answers included), of the features alone, and of ``confidence_batch`` for 64 items. The answers
are fixed, realistic replies (a JSON reply with reasoning, a multiple-choice chain of thought, a
short reply) at ``--chars`` characters each, so runs are comparable; pinned to one core.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cascade.model.answer_features import answer_features
from cascade.model.verifier import OnnxVerifier, Verification

PROMPT = (
    "A farmer has 16 eggs a day, eats 3 and bakes with 4; she sells the rest at $2 each. "
    "How much does she make a day?\nA) $14\nB) $18\nC) $20\nD) $22"
)
STYLES = (
    '{{"reasoning": "{body}", "answer": "{answer}"}}',
    "{body} The answer is ({letter}).",
    "{body}\n\nAnswer: {answer}",
)


def _answers(count: int, chars: int) -> list[str]:
    """Replies of about ``chars`` characters in rotating styles and final answers."""
    body = "She uses 3 + 4 = 7 eggs, so 16 - 7 = 9 are left, and 9 * 2 = 18 dollars. " * 40
    replies = []
    for i in range(count):
        answer, letter = ("18", "B") if i % 3 else ("20", "C")
        text = body[(i * 7) % 50 : (i * 7) % 50 + chars]
        replies.append(STYLES[i % 3].format(body=text, answer=answer, letter=letter))
    return replies


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    return f"p50 {p50 * 1e6:8.1f} µs   p99 {p99 * 1e6:8.1f} µs"


def _time(call: Callable[[int], object], iterations: int) -> list[float]:
    for i in range(200):  # warm up
        call(i)
    samples = []
    for i in range(iterations):
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    """Print verifier latency percentiles for single calls, features alone, and batches."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="verifier-v2")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--chars", type=int, default=1500)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    verifier = OnnxVerifier(args.model, device="cpu", intra_op_threads=1)
    answers = _answers(64, args.chars)

    def trio(i: int) -> tuple[str, list[str]]:
        return answers[i % 64], [answers[(i + 1) % 64], answers[(i + 2) % 64]]

    single = _time(lambda i: verifier.confidence(PROMPT, *trio(i)), args.iterations)
    features = _time(lambda i: answer_features(PROMPT, *trio(i)), args.iterations)
    batch = [Verification(PROMPT, trio(i)[0], tuple(trio(i)[1])) for i in range(64)]
    batches = _time(lambda i: verifier.confidence_batch(batch), max(args.iterations // 20, 20))
    print(f"model {args.model}, 3 answers of ~{args.chars} chars, onnxruntime CPU, 1 core")
    print(f"confidence (1 candidate + 2 witnesses)  {_percentiles(single)}")
    print(f"answer_features alone                   {_percentiles(features)}")
    print(f"confidence_batch of 64                  {_percentiles(batches)}")
    per_item = sorted(batches)[len(batches) // 2] / 64 * 1e6
    print(f"batch of 64, p50 per item {per_item:.1f} µs")


if __name__ == "__main__":
    main()
