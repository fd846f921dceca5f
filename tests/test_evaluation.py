"""Cost-quality metrics: APGR, CPT, cost and AUROC on hand-made data, random and oracle routers."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.errors import LabeledDataError
from cascade.training.evaluation import (
    Outcomes,
    auroc,
    cost_quality_curve,
    oracle_confidence,
    random_confidence,
    report,
)

# Four prompts; the strong tier gains +1, 0, +1, -1 on them; weak calls cost 1, strong 10.
HAND = Outcomes(
    weak_score=np.array([0.0, 1.0, 0.0, 1.0]),
    strong_score=np.array([1.0, 1.0, 1.0, 0.0]),
    weak_cost=np.ones(4),
    strong_cost=np.full(4, 10.0),
)
CONFIDENCE = np.array([0.1, 0.2, 0.3, 0.4])


def test_curve_matches_hand_computation() -> None:
    """Quality, PGR and cost at each strong-call count equal the values worked out by hand."""
    curve = cost_quality_curve(CONFIDENCE, HAND)
    # all-weak quality 0.5, all-strong 0.75: gap 0.25; cumulative gains 0, 1, 1, 2, 1 (of 4)
    assert curve.strong_share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.quality.tolist() == [0.5, 0.75, 0.75, 1.0, 0.75]
    assert curve.pgr.tolist() == [0.0, 1.0, 1.0, 2.0, 1.0]
    assert curve.cost_ratio.tolist() == pytest.approx([4 / 40, 13 / 40, 22 / 40, 31 / 40, 1.0])
    # trapezoids: 0.25 * (0.5 + 1 + 1.5 + 1.5)
    assert curve.apgr == pytest.approx(1.125)
    assert curve.cpt(0.5) == pytest.approx((0.25, 13 / 40))
    assert curve.cpt(1.5) == pytest.approx((0.75, 31 / 40))


def test_auroc_matches_hand_computation_and_counts_ties_half() -> None:
    """AUROC is the share of (positive, negative) pairs ordered right, a tie counting half."""
    labels = HAND.weak_suffices  # [False, True, False, True]
    assert auroc(labels, CONFIDENCE) == pytest.approx(0.75)
    assert auroc(labels, np.array([0.1, 0.3, 0.3, 0.4])) == pytest.approx(0.875)
    assert auroc(np.array([True, True]), np.array([0.1, 0.2])) is None


def test_oracle_is_the_best_possible_order() -> None:
    """No ordering of the prompts beats the oracle's APGR, and the oracle's AUROC is 1."""
    rng = np.random.default_rng(0)
    weak = rng.integers(0, 2, 40).astype(float)
    strong = np.maximum(weak, rng.integers(0, 2, 40)) * (rng.random(40) > 0.1)
    outcomes = Outcomes(weak, strong, np.ones(40), np.full(40, 5.0))
    best = report(oracle_confidence(outcomes), outcomes)
    assert best.auroc == 1.0
    for _ in range(200):
        assert report(rng.random(40), outcomes).apgr <= best.apgr + 1e-12
    assert report(oracle_confidence(HAND), HAND).apgr == pytest.approx(1.375)


def test_random_router_recovers_the_gap_linearly() -> None:
    """The random router's expected APGR is exactly 0.5, and random orders average to it."""
    rng = np.random.default_rng(1)
    n = 300
    outcomes = Outcomes(rng.random(n), rng.random(n) + 0.2, np.ones(n), np.full(n, 4.0))
    expected = report(random_confidence(outcomes), outcomes)
    assert expected.apgr == pytest.approx(0.5)
    assert expected.auroc == 0.5
    assert expected.cpt[0.8][0] == pytest.approx(0.8)
    sampled = [report(rng.random(n), outcomes).apgr for _ in range(200)]
    assert np.mean(sampled) == pytest.approx(0.5, abs=0.01)


def test_no_gap_is_an_error() -> None:
    """Data where both tiers score the same on average has no PGR, and says so."""
    same = Outcomes(np.ones(3), np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(LabeledDataError, match="no gap to recover"):
        cost_quality_curve(np.zeros(3), same)
