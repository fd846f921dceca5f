"""Calibration: a target becomes a threshold, written into a policy with comments kept."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.errors import LabeledDataError, PolicyError
from cascade.policy import parse_policy
from cascade.resources import policy_path
from cascade.training.calibration import threshold_for, write_threshold
from cascade.training.evaluation import Outcomes

# Ten prompts, confidence 0.05 .. 0.95; the strong tier gains only on the three least confident.
CONFIDENCE = np.arange(10) / 10 + 0.05
OUTCOMES = Outcomes(
    weak_score=np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], dtype=float),
    strong_score=np.ones(10),
    weak_cost=np.ones(10),
    strong_cost=np.full(10, 10.0),
)


def test_strong_share_target_gives_the_highest_threshold_within_it() -> None:
    """At most 30% to the strong side: the threshold sends exactly the three lowest there."""
    result = threshold_for(CONFIDENCE, OUTCOMES, max_strong_share=0.3)
    assert result.threshold == pytest.approx(0.35)
    assert (result.strong_share, result.pgr) == (0.3, 1.0)
    assert result.cost_ratio == pytest.approx((3 * 10 + 7) / 100)


def test_pgr_target_gives_the_fewest_strong_calls() -> None:
    """PGR 0.6 is reached with two of the three gaining prompts on the strong side, not more."""
    result = threshold_for(CONFIDENCE, OUTCOMES, min_pgr=0.6)
    assert result.strong_share == 0.2
    assert result.pgr == pytest.approx(2 / 3)
    assert result.threshold == pytest.approx(0.25)
    with pytest.raises(LabeledDataError, match=r"no threshold reaches PGR 1.5"):
        threshold_for(CONFIDENCE, OUTCOMES, min_pgr=1.5)


def test_writing_changes_only_the_threshold_and_keeps_comments() -> None:
    """The tier's threshold line changes, a provenance comment lands above it, the rest stays."""
    text = policy_path("default").read_text("utf-8")
    new = write_threshold(text, "medium", 0.7312, "0.7312 from team.jsonl (sha256 ab, 9 rows)")
    policy = parse_policy(new)
    assert policy.tier("medium").threshold == 0.7312
    assert policy.tier("small").threshold == parse_policy(text).tier("small").threshold
    old_lines, new_lines = text.split("\n"), new.split("\n")
    assert len(new_lines) == len(old_lines) + 1
    added = [line for line in new_lines if line not in old_lines]
    assert added == [
        "    # calibrated: 0.7312 from team.jsonl (sha256 ab, 9 rows)",
        "    threshold: 0.7312",
    ]
    again = write_threshold(new, "medium", 0.7, "second run")
    assert "# calibrated: second run" in again
    assert "team.jsonl" not in again  # the old provenance is replaced, not piled up


def test_invalid_results_are_refused() -> None:
    """A threshold that breaks the policy (small below medium) or an unknown tier is an error."""
    text = policy_path("default").read_text("utf-8")
    with pytest.raises(PolicyError, match="threshold"):
        write_threshold(text, "small", 0.1, "too low")
    with pytest.raises(PolicyError, match="no tier named 'huge'"):
        write_threshold(text, "huge", 0.5, "x")
