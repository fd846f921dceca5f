"""The off-policy estimator: self-normalized IPS with delta-method intervals, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade.ledger.off_policy import (
    Z_95,
    ExplorationReach,
    Interval,
    OffPolicyEstimator,
    estimate_json,
)

# Four requests logged on small/big with exploration 0.2
# (first tier, propensity, decided tier, cost, useful tokens, escalated, good):
# A stayed on small (certain); B was explored down to small; C and D were not explored.
ROWS = [
    ("small", 1.0, "small", 1.0, 10, False, True),
    ("small", 0.2, "big", 2.0, 10, True, True),
    ("big", 0.8, "big", 10.0, 20, False, True),
    ("big", 0.8, "big", 12.0, 0, False, False),
]


def _fed(candidate: str, **limits: float) -> OffPolicyEstimator:
    estimator = OffPolicyEstimator(**limits)
    for tier, p, decided, cost, useful, escalated, good in ROWS:
        estimator.add(
            logged_tier=tier,
            propensity=p,
            candidate_tier=candidate,
            decided_tier=decided,
            explorable=candidate == "small",  # exploration only ever went down to small
            cost_usd=cost,
            useful_tokens=useful,
            escalated=escalated,
            good=good,
        )
    return estimator


def _close(interval: Interval | None, value: float, low: float, high: float) -> None:
    assert interval is not None
    assert (interval.value, interval.low, interval.high) == pytest.approx((value, low, high))


def test_all_small_is_weighted_by_inverse_propensity() -> None:
    """Sending everything to small: A counts once, B (explored at 0.2) five times; C and D were
    on big but small was possible for them, so they are supported and simply do not count."""
    result = _fed("small", min_ess=1).result()
    assert (result.rows, result.matched, result.unsupported) == (4, 2, 0)
    assert result.ess == pytest.approx(36 / 26)  # (1 + 5)² / (1 + 25)
    se = math.sqrt(50 / 36) / 6  # Σw²(c - 11/6)² = 25/36 + 25·(1/36), over (Σw)² = 36
    candidate = result.candidate
    assert candidate is not None
    z = Z_95  # 1.96: a 95% interval
    _close(candidate.mean_cost_usd, 11 / 6, 11 / 6 - z * se, 11 / 6 + z * se)
    _close(candidate.escalation_rate, 5 / 6, 5 / 6 - z * se, 1.0)  # clipped at 1
    _close(candidate.good_rate, 1.0, 1.0, 1.0)  # every matched answer was good: no spread
    ratio_se = math.sqrt(50 / 36) / 60  # Σw²(c - R·u)² with R = 11/60, over (Σwu)² = 60²
    _close(candidate.cost_per_useful_token, 11 / 60, 11 / 60 - z * ratio_se, 11 / 60 + z * ratio_se)
    assert candidate.mean_cost_usd.half_width == pytest.approx(z * se)


def test_measured_figures_are_the_plain_ones() -> None:
    """Beside the estimate, the logged policy's own figures on the same rows, unweighted."""
    logged = _fed("small").result().logged
    assert logged is not None
    assert logged.mean_cost_usd.value == pytest.approx(25 / 4)
    assert logged.cost_per_useful_token is not None
    assert logged.cost_per_useful_token.value == pytest.approx(25 / 40)
    assert logged.escalation_rate.value == pytest.approx(1 / 4)
    assert logged.good_rate.value == pytest.approx(3 / 4)


def test_a_tier_the_logged_policy_never_chose_is_unsupported() -> None:
    """All big: A was certain to stay on small, so big for it is unsupported (1 of 4, over 5%),
    and with its own limits lifted the estimate is C and D's, each weighted 1.25."""
    result = _fed("big").result()
    assert result.unsupported == 1
    assert result.unsupported_share == 0.25
    assert result.candidate is None
    assert not result.supported
    assert "1 of 4 requests (25.0%, more than 5%)" in result.reasons[0]
    assert "effective sample size is 2.0, below 30" in result.reasons[1]
    lifted = _fed("big", max_unsupported=0.5, min_ess=1).result().candidate
    assert lifted is not None
    assert lifted.mean_cost_usd.value == pytest.approx(11.0)
    assert lifted.cost_per_useful_token is not None
    assert lifted.cost_per_useful_token.value == pytest.approx(22 / 20)
    assert lifted.good_rate.value == pytest.approx(0.5)


def test_the_logged_policy_itself_is_measured_exactly() -> None:
    """Without exploration, a candidate choosing every logged tier gets weight 1 everywhere: its
    estimate is the measured figures to the last bit, with the sample mean's interval."""
    rng = np.random.default_rng(3)
    n = 500
    tiers = np.where(rng.random(n) < 0.6, "small", "big")
    estimator = OffPolicyEstimator()
    for start in range(0, n, 128):  # in chunks, as replay feeds it
        part = slice(start, start + 128)
        estimator.add_chunk(
            logged_tier=tiers[part],
            propensity=np.ones(len(tiers[part])),
            candidate_tier=tiers[part],
            decided_tier=tiers[part],
            explorable=np.zeros(len(tiers[part]), dtype=bool),
            cost_usd=rng.random(len(tiers[part])),
            useful_tokens=rng.integers(0, 50, len(tiers[part])),
            escalated=rng.random(len(tiers[part])) < 0.1,
            good=rng.random(len(tiers[part])) < 0.9,
        )
    result = estimator.result()
    assert result.candidate is not None
    assert result.candidate == result.logged
    assert result.ess == n
    cost = result.candidate.mean_cost_usd
    assert 0 < cost.half_width < 0.03  # ~1.96 x 0.29 / √500


def test_the_interval_covers_the_truth_of_a_cheaper_policy() -> None:
    """Logged with exploration 0.1, outcomes depending on the prompt: the estimate for "always
    small" is unbiased (its interval holds the true mean), where the matched rows' plain average
    is not."""
    rng = np.random.default_rng(11)
    n = 40_000
    hard = rng.random(n)  # how hard each prompt is
    decided = np.where(hard > 0.5, "big", "small")
    explored = (decided == "big") & (rng.random(n) < 0.1)
    first = np.where(explored, "small", decided)
    propensity = np.where(decided == "small", 1.0, np.where(explored, 0.1, 0.9))
    escalated = (first == "small") & (rng.random(n) < hard)  # small fails on hard prompts
    cost = np.where(first == "small", 1.0, 10.0) + escalated * 10.0
    estimator = OffPolicyEstimator()
    estimator.add_chunk(
        logged_tier=first,
        propensity=propensity,
        candidate_tier=["small"] * n,
        decided_tier=decided,
        explorable=np.ones(n, dtype=bool),
        cost_usd=cost,
        useful_tokens=np.full(n, 10.0),
        escalated=escalated,
        good=np.ones(n, dtype=bool),
    )
    result = estimator.result()
    assert result.unsupported == 0
    candidate = result.candidate
    assert candidate is not None
    truth = 0.5  # P(escalate | small) = E[hard] = 0.5 over every prompt
    esc = candidate.escalation_rate
    assert esc.low <= truth <= esc.high
    naive = escalated[first == "small"].mean()  # easy prompts are over-represented
    assert not esc.low <= naive <= esc.high
    assert candidate.mean_cost_usd.low <= 1 + 10 * truth <= candidate.mean_cost_usd.high


def test_nothing_to_estimate_is_said_in_words() -> None:
    """No rows, or no row going where the candidate sends it: reasons, no numbers."""
    assert OffPolicyEstimator().result().reasons == ("no logged requests to estimate from",)
    result = _fed("medium").result()
    assert result.candidate is None
    assert result.reasons[0].startswith("no logged request went to the tier the candidate")


def test_a_propensity_outside_0_1_is_refused() -> None:
    """A propensity of 0 (or over 1) cannot be the probability of a logged choice."""
    with pytest.raises(ValueError, match=r"propensity must be in \(0, 1\], got 0"):
        OffPolicyEstimator().add_chunk(
            logged_tier=["small"],
            propensity=[0.0],
            candidate_tier=["small"],
            decided_tier=["small"],
            explorable=[False],
            cost_usd=[1.0],
            useful_tokens=[1.0],
            escalated=[False],
            good=[True],
        )


def test_json_carries_the_verdict() -> None:
    """The JSON view has the figures as {value, low, high}, null when unsupported, and why."""
    supported = estimate_json(_fed("small", min_ess=1).result())
    assert supported["supported"] is True
    assert supported["candidate"]["mean_cost_usd"]["value"] == pytest.approx(11 / 6)
    refused = estimate_json(_fed("big").result())
    assert refused["candidate"] is None
    assert refused["unsupported_share"] == 0.25
    assert len(refused["reasons"]) == 2


def test_exploration_reach_is_read_from_the_explored_rows() -> None:
    """A tier counts as reachable for a workload and decided tier only once an explored request
    of that kind went there."""
    reach = ExplorationReach(
        [("chat", "big", "small"), ("chat", "big", "small"), ("chat", "small", None)]
    )
    assert reach.reaches("chat", "big", "small")
    assert not reach.reaches("chat", "small", "big")  # never explored up
    assert not reach.reaches("batch", "big", "small")  # another workload
    mask = reach.mask(["chat", "chat", "batch"], ["big", "small", "big"], ["small", "big", "small"])
    assert mask.tolist() == [True, False, False]
