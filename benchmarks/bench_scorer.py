"""Scoring latency on one CPU core: one 2,000-character prompt, and batches of 64.

    .venv/bin/python -m benchmarks.bench_scorer [--model prompt-features-v2] [--iterations 3000]

Prints p50/p99 of ``OnnxScorer.score`` for one prompt (features or normalization included) and
of ``score_batch`` for 64 prompts. Prompts are fixed rotations of a mixed-language text, so runs
are comparable; pinned to one core as the decision budget assumes.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.bench_decision import _percentiles, _prompts
from cascade.model.scorer import OnnxScorer


def main() -> None:
    """Print scorer latency percentiles for single prompts and batches of 64."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="prompt-features-v2")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--chars", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    scorer = OnnxScorer(args.model, device="cpu", intra_op_threads=1)
    prompts = _prompts(256, args.chars)
    for i in range(200):  # warm up
        scorer.score(prompts[i % len(prompts)])
    single = []
    for i in range(args.iterations):
        start = time.perf_counter()
        scorer.score(prompts[i % len(prompts)])
        single.append(time.perf_counter() - start)
    batches = []
    for i in range(max(args.iterations // 20, 20)):
        batch = [prompts[(i + j) % len(prompts)] for j in range(64)]
        start = time.perf_counter()
        scorer.score_batch(batch)
        batches.append(time.perf_counter() - start)
    print(f"model {args.model}, {args.chars}-char prompts, onnxruntime CPU, 1 core")
    print(f"single prompt   {_percentiles(single)}")
    print(f"batch of 64     {_percentiles(batches)}")
    per_prompt = sorted(batches)[len(batches) // 2] / 64 * 1e3
    print(f"batch of 64, p50 per prompt {per_prompt:.3f} ms")


if __name__ == "__main__":
    main()
