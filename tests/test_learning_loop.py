"""The learning loop end to end (issue 18's must-show): serve the demo's traffic under a policy
that explores, export labels from the ledger, adapt the shipped model on them, calibrate its
thresholds, replay the adapted policy on the logged traffic, then serve it: what replay
estimated is what serving measures, within the estimate's own confidence interval."""

from __future__ import annotations

from pathlib import Path

from benchmarks.learning_loop import run_loop


def test_the_replayed_estimate_holds_what_serving_the_adapted_policy_measures(
    tmp_path: Path,
) -> None:
    result = run_loop(requests=300, seed=3, workdir=tmp_path)
    replay = result.replayed
    # the loop really learned from the ledger: labels from traffic (numbers, no prompt), a model
    # adapted from the shipped one, a candidate that routes many requests differently
    assert result.labels >= 200
    assert (tmp_path / "adapted" / "manifest.json").is_file()
    assert replay["replayed"] == replay["requests"] == 300
    assert replay["model"] == "adapted"
    assert replay["changed"] >= 30
    estimate = replay["estimate"]
    assert estimate["supported"], estimate["reasons"]
    candidate = estimate["candidate"]
    served = result.served
    for name, measured in (
        ("cost_per_useful_token", served.cost_per_useful_token),
        ("escalation_rate", served.escalation_rate),
    ):
        interval = candidate[name]
        assert interval["low"] <= measured <= interval["high"], (name, interval, measured)
    # and the estimate is of the candidate, not a copy of what was logged
    assert served.escalation_rate != result.logged.escalation_rate
