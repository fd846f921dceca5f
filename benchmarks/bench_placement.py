"""Prefix-cache hits of each ``prompt.volatile`` placement on the simulated tiers.

A support app's system prompt (about 500 tokens of rules) carries a volatile line; the requests
go through the prompt step with each placement (``system``, ``user``, ``keep``) and then to a
fresh simulated tier, whose prefix cache reports ``usage.prompt_tokens_details.cached_tokens``.
Printed: the share of prompt tokens served from the cache, per placement and workload:

- single-turn: one question per request, the timestamp line new on every request;
- multi-turn, timestamp per request: conversations of four user turns (the tier's own answers
  as the assistant turns in between), the timestamp new on every request;
- multi-turn, date per conversation: the same, with a line that changes between conversations
  but not within one ("Today's date: ...").

    .venv/bin/python -m benchmarks.bench_placement [--conversations 40] [--profile 1.5b]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any, get_args

import httpx

from cascade.core.prompt import prepare_prompt
from cascade.logs import configure_json_logs
from cascade.policy.model import VolatilePlacement
from cascade.server.background import serve_in_thread
from cascade.simulator.server import create_app
from cascade.simulator.settings import SimulatorSettings

_RULES = "\n".join(
    f"Rule {n}: answer questions about ACME's orders, refunds and shipping accurately and "
    f"concisely; never invent a product, a price or a policy; escalate case type {n} to a human."
    for n in range(1, 16)
)
_QUESTIONS = (
    "Where is my order?",
    "How do I return a broken kettle?",
    "Can I change the delivery address?",
    "What does express shipping cost?",
    "Why was my card charged twice?",
    "How long does a refund take?",
    "Do you ship to Norway?",
    "Can I cancel a subscription online?",
)
_TURNS = 4

Line = Callable[[int, int], str]
"""The volatile line for (conversation, turn)."""


def _per_request(conversation: int, turn: int) -> str:
    second = conversation * _TURNS + turn
    return f"Current time: 2026-11-22T10:{second // 60 % 60:02d}:{second % 60:02d}Z"


def _per_conversation(conversation: int, turn: int) -> str:
    return f"Today's date: 2026-{1 + conversation // 28 % 12:02d}-{1 + conversation % 28:02d}."


def _conversations(count: int, turns: int, line: Line) -> Iterator[list[list[dict[str, Any]]]]:
    """For each conversation, its requests' messages as the app would send them (no answers yet:
    the assistant turns are filled in from the tier's replies)."""
    for c in range(count):
        yield [[{"role": "system", "content": f"{_RULES}\n{line(c, t)}"}] for t in range(turns)]


def _run(
    url: str, placement: VolatilePlacement, count: int, turns: int, line: Line
) -> tuple[int, int]:
    """(prompt tokens, cached tokens) over every request of the workload."""
    prompt = cached = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        for c, requests in enumerate(_conversations(count, turns, line)):
            history: list[dict[str, Any]] = []
            for t, system in enumerate(requests):
                question = _QUESTIONS[(c + t) % len(_QUESTIONS)]
                history.append({"role": "user", "content": f"{question} (case {c}-{t})"})
                prepared = prepare_prompt([*system, *history], volatile=placement)
                body = {"model": model, "messages": list(prepared.messages), "max_tokens": 64}
                reply = client.post("/v1/chat/completions", json=body)
                reply.raise_for_status()
                data = reply.json()
                usage = data["usage"]
                prompt += usage["prompt_tokens"]
                cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                answer = data["choices"][0]["message"]["content"] or ""
                history.append({"role": "assistant", "content": answer})
    return prompt, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--profile", default="1.5b")
    ns = parser.parse_args()
    configure_json_logs("warning")  # the tier's per-request lines would bury the table
    workloads: tuple[tuple[str, int, int, Line], ...] = (
        ("single-turn, timestamp per request", ns.conversations * _TURNS, 1, _per_request),
        ("multi-turn, timestamp per request", ns.conversations, _TURNS, _per_request),
        ("multi-turn, date per conversation", ns.conversations, _TURNS, _per_conversation),
    )
    placements: tuple[VolatilePlacement, ...] = get_args(VolatilePlacement)
    print(f"cached share of prompt tokens, simulated tier {ns.profile}")
    print(f"{'workload':<36} " + " ".join(f"{p:>8}" for p in placements))
    for name, count, turns, line in workloads:
        shares = []
        for placement in placements:
            settings = SimulatorSettings(profile=ns.profile, time_scale=0.0001)
            with serve_in_thread(create_app(settings), name="bench-tier") as url:
                prompt, cached = _run(url, placement, count, turns, line)
            shares.append(cached / prompt if prompt else 0.0)
        print(f"{name:<36} " + " ".join(f"{s:>8.1%}" for s in shares))


if __name__ == "__main__":
    main()
