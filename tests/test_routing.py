"""``cascade.route`` and ``Planner``: the three steps chained, policies loaded once and reloaded."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import cascade
from cascade.core.capacity import StaticCapacity
from cascade.core.planner import Planner
from cascade.errors import RoutingError
from cascade.model.batching import MicroBatcher
from cascade.policy import load_policy, parse_policy
from tests.conftest import TWO_TIERS

WritePolicy = Callable[..., Path]


class FixedScorer:
    """A scorer that returns one confidence and records what it was asked to score."""

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence
        self.seen: list[str] = []

    def score(self, text: str) -> float:
        self.seen.append(text)
        return self.confidence

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        return [self.score(t) for t in texts]


def test_route_a_bare_prompt_with_the_default_policy() -> None:
    """A prompt string is routed with the shipped policy and model, with a reason and a cost."""
    decision = cascade.route("What is 7 times 8?")
    assert decision.tier == "small"
    assert decision.policy == "default"
    assert decision.reason.startswith("confidence ")
    assert decision.estimated_cost_usd is not None
    assert decision.estimated_cost_usd > 0
    assert decision.messages == ({"role": "user", "content": "What is 7 times 8?"},)


def test_route_returns_cache_friendly_messages() -> None:
    """The decision's messages keep the system prompt stable, the timestamp in a system message
    after it."""
    messages = [
        {"role": "system", "content": "You are terse.\nNow: 2026-11-22T10:15:00Z"},
        {"role": "user", "content": "Hi"},
    ]
    decision = cascade.route(messages)
    assert decision.messages == (
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Now: 2026-11-22T10:15:00Z"},
        {"role": "user", "content": "Hi"},
    )
    assert [m.kind for m in decision.moved] == ["timestamp"]
    assert messages[0]["content"] == "You are terse.\nNow: 2026-11-22T10:15:00Z"  # caller's intact


def test_route_scores_the_last_user_message() -> None:
    """The scorer sees the user's text, not the system prompt or moved lines."""
    scorer = FixedScorer(0.9)
    planner = Planner(parse_policy(TWO_TIERS), scorer)
    planner.plan(
        [
            {"role": "system", "content": "Today is 2026-11-22."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "second question"},
        ]
    )
    assert scorer.seen == ["second question"]


def test_planner_reads_capacity_for_spills() -> None:
    """A planner whose capacity view reports the cheap tier full sends requests to its overflow."""
    planner = Planner(parse_policy(TWO_TIERS), FixedScorer(0.9), StaticCapacity({"small": 2}))
    decision = planner.plan("hello")
    assert (decision.tier, decision.spilled_from) == ("big", "small")
    assert planner.plan("hello", capacity=StaticCapacity()).tier == "small"


def test_route_reloads_a_changed_policy_file(write_policy: WritePolicy) -> None:
    """Editing the policy file changes the next decision without restarting anything."""
    path = write_policy(TWO_TIERS.replace("threshold: 0.7", "threshold: 0.0"))
    assert cascade.route("Prove the Riemann hypothesis.", policy=path).tier == "small"
    path.write_text(TWO_TIERS.replace("threshold: 0.7", "threshold: 1.0"), encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cascade.route("Prove the Riemann hypothesis.", policy=path).tier == "big"


def test_route_accepts_a_policy_object() -> None:
    """A Policy built in code routes like a file."""
    policy = parse_policy(TWO_TIERS.replace("threshold: 0.7", "threshold: 1.0"))
    assert cascade.route("hello", policy=policy).tier == "big"


def test_route_rejects_a_conversation_without_user_message() -> None:
    """Routing needs a user message; the error says which field is wrong."""
    with pytest.raises(RoutingError, match="user"):
        cascade.route([{"role": "system", "content": "Be brief."}])


def test_route_rejects_empty_messages() -> None:
    """An empty message list is a clear error."""
    with pytest.raises(RoutingError, match="messages"):
        cascade.route([])


async def _plan_concurrently(planner: Planner, prompts: list[str]) -> list[float]:
    async with MicroBatcher(planner.scorer, max_wait_ms=5) as batcher:
        decisions = await asyncio.gather(*(planner.aplan(p, batcher) for p in prompts))
        assert batcher.batches_run < len(prompts)
    return [d.confidence for d in decisions]


def test_async_planning_batches_concurrent_requests() -> None:
    """Concurrent aplan calls share scorer batches and decide exactly as plan does one by one."""
    planner = Planner(load_policy("default"))
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(24)]
    concurrent = asyncio.run(_plan_concurrently(planner, prompts))
    sequential = [planner.plan(p).confidence for p in prompts]
    assert concurrent == pytest.approx(sequential, abs=1e-6)
