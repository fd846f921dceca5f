"""Decide where a handful of requests would go, the way a Python service calls cascade.

    .venv/bin/python examples/route_requests.py [--policy policies/default.yaml]

No model is called: ``cascade.route`` is pure CPU. The service would then send
``decision.messages`` to ``decision.model`` on ``decision.tier``.
"""

from __future__ import annotations

import argparse

import cascade

SYSTEM = "You are a helpful assistant for ACME Corp. Today's date: 2026-11-22."

REQUESTS = [
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "A train leaves at 3:40 pm and arrives at 6:15 pm. How long is the trip in minutes?",
    "Prove that the square root of 2 is irrational, then explain where the proof fails for 4.",
    "Write a Python function that merges overlapping intervals, with tests for edge cases.",
]


def main() -> None:
    """Route each request under the policy and print the decision in one line."""
    parser = argparse.ArgumentParser(description="Route a few example requests.")
    parser.add_argument("--policy", default="default", help="policy file or shipped policy name")
    args = parser.parse_args()
    total = 0.0
    for text in REQUESTS:
        decision = cascade.route(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            policy=args.policy,
        )
        cost = float(decision.estimated_cost_usd or 0)
        total += cost
        print(
            f"{decision.tier:<9} conf {decision.confidence:.3f}  ${cost:.7f}  "
            f"prefix {decision.prefix_hash}  {text[:50]}"
        )
    print(f"estimated total ${total:.6f}; reason for the last: {decision.reason}")


if __name__ == "__main__":
    main()
