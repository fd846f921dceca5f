"""The parts of a shadow policy that need no proxy: deciding on the live prompt, and the
report's off-policy estimate of the shadow, checked against figures computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cascade.core.planner import Planner
from cascade.ledger.queries import AttemptFacts, RequestFacts
from cascade.ledger.shadow_facts import ShadowFacts
from cascade.ledger.shadow_report import ShadowReport, build_shadow_report, format_shadow
from cascade.model.scorer import OnnxScorer
from cascade.policy import load_policy
from cascade.server.shadow import live_prompt
from tests.test_shadow import policy_text

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is 7 times 8?"}],
    [
        {"role": "system", "content": "You are terse.\nToday is 2026-11-22T10:15:00Z."},
        {"role": "user", "content": "Prove that there are infinitely many primes."},
    ],
    [
        {"role": "system", "content": "You help with code."},
        *[
            {"role": role, "content": f"turn {n}: " + "lorem ipsum dolor " * 40}
            for n in range(6)
            for role in ("user", "assistant")
        ],
        {"role": "user", "content": "Write a Python function that merges two sorted lists."},
    ],
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_live_prompt_decides_as_the_shadow_would_prepare_it(
    tmp_path: Path, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> None:
    """A shadow on the live scorer decides on the live decision's prompt rather than prepare it
    again: the decision is the one the candidate makes from the request itself, its own
    history cap included (volatile lines moved, tools, a long conversation)."""
    live_file, candidate = tmp_path / "live.yaml", tmp_path / "candidate.yaml"
    live_file.write_text(policy_text("http://127.0.0.1:9", "http://127.0.0.1:9"))
    capped = "interactive: {max_history_tokens: 200}"
    candidate.write_text(
        policy_text("http://127.0.0.1:9", "http://127.0.0.1:9", threshold=0.9).replace(
            "interactive: {}", capped
        )
    )
    scorer = OnnxScorer("prompt-features-v2")
    live = Planner(load_policy(live_file), scorer).plan(messages, tools=tools, explore=False)
    shadow = Planner(load_policy(candidate), scorer)
    reused = shadow.thresholds(live_prompt(live), live.confidence)
    own = shadow.plan(messages, tools=tools, explore=False)
    kept = ("features", "feature_version", "decided_tier", "propensity", "explored")
    assert {k: v for k, v in own.to_dict().items() if k not in kept} == {
        k: v for k, v in reused.to_dict().items() if k not in kept
    } | {"trimmed_messages": own.trimmed_messages, "trimmed_tokens": own.trimmed_tokens}
    assert live.moved == own.moved


def _fact(n: int, first: str, cost: str) -> RequestFacts:
    """A request answered by its first tier at ``cost`` dollars, with 10 useful tokens."""
    attempt = AttemptFacts(0, first, "primary", "ok", 10, 0, 10, Decimal(cost))
    return RequestFacts(
        request_id=f"r{n}",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        tenant=None,
        policy="simulated",
        first_tier=first,
        final_tier=first,
        status="ok",
        prefix_hash=None,
        prompt_tokens=10,
        cached_tokens=0,
        completion_tokens=10,
        cost_usd=Decimal(cost),
        useful_tokens=10,
        useless=False,
        key_id=None,
        attempts=(attempt,),
        workload="interactive",
    )


def test_the_shadow_estimate_weights_explored_traffic_by_its_propensity() -> None:
    """With live exploration (half of what its thresholds send to medium tried on small), the
    shadow that keeps everything on small is estimated from the agreed requests, each weighted
    by 1 / propensity: by hand, 30 certain small requests at $1 and 10 explored ones at $2
    (weight 2) give (30 + 40) / 50 = $1.40 a request, against $1.25 for the agreed requests
    unweighted; the 10 left on medium are within exploration's reach, so all are supported."""
    facts, shadows = [], {}
    rows = [("small", "small", 1.0, False, "0.000001")] * 30
    rows += [("medium", "small", 0.5, True, "0.000002")] * 10
    rows += [("medium", "medium", 0.5, False, "0.000009")] * 10
    for n, (decided, first, propensity, explored, cost) in enumerate(rows):
        facts.append(_fact(n, first, cost))
        shadows[f"r{n}"] = ShadowFacts(
            f"r{n}", "simulated", "v2", "small", 0.9, propensity, decided, explored
        )
    (line,) = build_shadow_report(facts, shadows, tier_order=["small", "medium"]).lines
    assert (line.requests, line.agreed) == (50, 40)
    assert line.where_agreed.cost_per_request == Decimal("0.00000125")
    figures = line.estimate.candidate
    assert figures is not None
    assert figures.mean_cost_usd.value == pytest.approx(1.4e-6)
    assert figures.mean_cost_usd.low < 1.4e-6 < figures.mean_cost_usd.high
    assert figures.cost_per_useful_token is not None
    assert figures.cost_per_useful_token.value == pytest.approx(1.4e-7)
    assert line.estimate.ess == pytest.approx(50**2 / 70)
    assert line.estimate.unsupported == 0
    assert "cost/request 1.400000E-6" in "\n".join(format_shadow(ShadowReport((line,))))
