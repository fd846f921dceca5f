"""Exploration and what the ledger keeps for replay: features, the decided tier, propensities."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from cascade.core.capacity import StaticCapacity
from cascade.core.planner import Planner
from cascade.core.probes import run_probes
from cascade.errors import PolicyError
from cascade.model.features import FEATURE_NAMES, PROMPT_FEATURES_VERSION, prompt_features
from cascade.model.scorer import OnnxScorer
from cascade.policy import parse_policy
from cascade.server.recording import features_text, request_record
from tests.conftest import TWO_TIERS


class FixedScorer:
    def __init__(self, confidence: float) -> None:
        self.confidence = confidence

    def score(self, text: str) -> float:
        return self.confidence

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        return [self.confidence for _ in texts]


def _policy(explore: float, extra: str = "") -> str:
    return TWO_TIERS + f"learning:\n  explore: {explore}\n" + extra


def test_a_share_of_requests_sent_up_tries_the_cheapest_tier_first() -> None:
    """With explore 0.2, about a fifth of the requests the thresholds send to the API go to the
    cheap tier instead; each decision says what the thresholds chose and how likely its own
    tier was."""
    policy = parse_policy(_policy(0.2))
    planner = Planner(policy, FixedScorer(0.1), rng=random.Random(7))
    decisions = [planner.plan("Prove the Riemann hypothesis.") for _ in range(2000)]
    tiers = Counter(d.tier for d in decisions)
    assert 0.17 < tiers["small"] / 2000 < 0.23
    for d in decisions:
        assert d.decided_tier == "big"
        if d.tier == "small":
            assert d.explored
            assert d.propensity == pytest.approx(0.2)
            assert d.reason.startswith("explored: sent to small with probability 0.2")
            assert d.confidence == 0.1  # the score is kept, not the forced one
        else:
            assert not d.explored
            assert d.propensity == pytest.approx(0.8)


THREE_TIERS = TWO_TIERS.replace(
    "  - name: big",
    """  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: http://127.0.0.1:8002/v1
    price: {gpu_usd_per_hour: 2.0, tokens_per_second: 500}
    threshold: 0.4
  - name: big""",
)


def test_exploration_down_draws_among_the_cheaper_tiers_and_up_among_the_stronger() -> None:
    """On three tiers, a request decided for the middle one explores down to small with
    ``explore`` and up to big with ``explore_up``; each choice's propensity is its probability,
    and over many draws the tiers' shares match them."""
    text = THREE_TIERS + "learning:\n  explore: 0.2\n  explore_up: 0.1\n"
    planner = Planner(parse_policy(text), FixedScorer(0.5), rng=random.Random(11))
    decisions = [planner.plan("Summarize this.") for _ in range(3000)]
    shares = Counter(d.tier for d in decisions)
    assert 0.18 < shares["small"] / 3000 < 0.22
    assert 0.08 < shares["big"] / 3000 < 0.12
    expected = {"small": 0.2, "medium": 0.7, "big": 0.1}
    for d in decisions:
        assert d.decided_tier == "medium"
        assert d.propensity == pytest.approx(expected[d.tier])
        assert d.explored == (d.tier != "medium")
    # a request decided for the cheapest tier can only explore up
    low = Planner(parse_policy(text), FixedScorer(0.95), rng=random.Random(2))
    drawn = [low.plan("Hi") for _ in range(300)]
    assert all(d.propensity == pytest.approx(0.9) for d in drawn if not d.explored)
    moved = [d for d in drawn if d.explored]
    assert moved
    assert {d.tier for d in moved} == {"medium", "big"}  # 0.05 each
    assert all(d.propensity == pytest.approx(0.05) for d in moved)


def test_requests_already_on_the_cheapest_tier_are_certain() -> None:
    """A request the thresholds keep on the cheapest tier has propensity 1 and never moves."""
    planner = Planner(parse_policy(_policy(0.5)), FixedScorer(0.95), rng=random.Random(1))
    decisions = [planner.plan("What is 7 times 8?") for _ in range(200)]
    assert {(d.tier, d.propensity, d.explored) for d in decisions} == {("small", 1.0, False)}


def test_a_full_cheap_tier_is_not_explored() -> None:
    """Exploration never queues a request on a saturated tier: the thresholds' choice stands,
    certain."""
    policy = parse_policy(_policy(0.5))
    full = StaticCapacity({"small": 2})  # small's max_concurrency is 2
    planner = Planner(policy, FixedScorer(0.1), capacity=full, rng=random.Random(3))
    decisions = [planner.plan("Prove it.") for _ in range(100)]
    assert {(d.tier, d.propensity) for d in decisions} == {("big", 1.0)}


def test_a_spilled_request_records_the_tier_its_thresholds_chose() -> None:
    """The ledger's decided tier is the thresholds' choice, before the spill moved it."""
    full = StaticCapacity({"small": 2})
    planner = Planner(parse_policy(_policy(0.2)), FixedScorer(0.95), capacity=full)
    decision = planner.plan("What is 7 times 8?")
    assert (decision.tier, decision.spilled_from) == ("big", "small")
    assert (decision.decided_tier, decision.propensity, decision.explored) == ("small", 1.0, False)


def test_without_exploration_every_decision_is_certain() -> None:
    planner = Planner(parse_policy(TWO_TIERS), FixedScorer(0.1))
    decision = planner.plan("Prove it.")
    assert (decision.tier, decision.decided_tier, decision.propensity) == ("big", "big", 1.0)


def test_probes_see_the_thresholds_not_exploration() -> None:
    """Probes check the thresholds: a policy exploring half its traffic still passes them."""
    probes = "probes:\n  - name: hard\n    prompt: Prove it.\n    expect: big\n"
    planner = Planner(parse_policy(_policy(0.5, probes)), FixedScorer(0.1), rng=random.Random(0))
    for _ in range(20):
        assert all(result.passed for result in run_probes(planner))


def test_the_shipped_scorer_gives_the_numbers_it_scored() -> None:
    """The default model reads prompt features: the decision carries them, with their version,
    and the ledger's text reads back to the same float32 values."""
    planner = Planner(parse_policy(TWO_TIERS), OnnxScorer("prompt-features-v2"))
    text = "Janet's ducks lay 16 eggs per day. How many does she sell?"
    decision = planner.plan(text)
    assert decision.feature_version == PROMPT_FEATURES_VERSION
    assert decision.features is not None
    assert len(decision.features) == len(FEATURE_NAMES)
    stored = json.loads(features_text(decision.features))
    expected = np.asarray(prompt_features(text), dtype=np.float32)
    assert np.array_equal(np.asarray(stored, dtype=np.float32), expected)
    record = request_record(
        request_id="r1",
        decision=decision,
        attempts=(),
        final_tier=None,
        http_status=502,
        latency_ms=1.0,
        tenant=None,
        stream=False,
    )
    assert record.features == features_text(decision.features)
    assert (record.decided_tier, record.propensity) == (decision.tier, 1.0)


def test_a_policy_can_keep_no_features() -> None:
    policy = parse_policy(_policy(0.0, "  record_features: false\n"))
    decision = Planner(policy, OnnxScorer("prompt-features-v2")).plan("Hello there")
    assert decision.features is None
    assert decision.feature_version is None


def test_exploring_more_than_half_the_traffic_in_all_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"explore \+ explore_up is 0\.6"):
        parse_policy(TWO_TIERS + "learning:\n  explore: 0.3\n  explore_up: 0.3\n")


def test_explore_above_half_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"learning\.explore: .*less than or equal to 0\.5"):
        parse_policy(_policy(0.8))


def test_a_seeded_planner_draws_by_prompt_whatever_the_order() -> None:
    """With ``explore_seed`` the draw is a function of the seed and the prompt: the same
    prompts explore the same way in any order, and about the configured share of them do."""
    policy = parse_policy(_policy(0.3))
    prompts = [f"Question number {n}: prove it." for n in range(400)]

    def explored(order: list[str]) -> set[str]:
        planner = Planner(policy, FixedScorer(0.1), explore_seed=5)
        return {p for p in order if planner.plan(p).explored}

    forward = explored(prompts)
    assert forward == explored(prompts[::-1])
    assert 0.25 < len(forward) / len(prompts) < 0.35
    other = {
        p for p in prompts if Planner(policy, FixedScorer(0.1), explore_seed=6).plan(p).explored
    }
    assert other != forward


def test_the_scorer_keeps_no_long_prompt_but_still_gives_its_numbers() -> None:
    """A huge prompt is featurized again rather than kept in the scorer's cache (a client's
    megabyte prompts must not stay in memory), and its numbers are the same either way."""
    scorer = OnnxScorer("prompt-features-v2")
    long_text = "Summarize the following log. " + "error at line 42; " * 20_000
    scorer.score_batch([long_text, "What is 7 times 8?"])
    assert long_text not in scorer._rows
    assert "What is 7 times 8?" in scorer._rows
    expected = tuple(float(v) for v in np.asarray(prompt_features(long_text), dtype=np.float32))
    assert scorer.features(long_text) == expected
