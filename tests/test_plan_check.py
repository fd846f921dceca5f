"""``cascade plan`` checked by serving its recommendation: a small day (benchmarks/plan_check.py
at a sixteenth of its requests) replayed through the real proxy app onto simulated tiers into
SQLite, planned with the CLI, served again on the fleet the plan names, and measured."""

from __future__ import annotations

from pathlib import Path

from benchmarks.plan_check import check_plan


def test_the_recommended_fleet_costs_and_serves_as_planned(tmp_path: Path) -> None:
    """250 requests over a day replayed in 8.6 s, each standing for 20,000: the plan names a
    fleet with replicas of both self-hosted tiers at the batch the 1.6 ms target allows, and
    that fleet, serving the same day, answers every request at the cost the plan stated (within
    its range for capacity off by its error) and within its time per token."""
    result = check_plan(
        requests=250,
        scale=20_000,
        time_scale=2.0,
        target_ms=1.6,
        seed=3,
        workdir=tmp_path,
        in_process=True,
    )
    assert all(r.status == 200 for r in result.served.sent)
    assert all(count >= 1 for count in result.fleet.replicas.values())
    assert result.fleet.batch["medium"] < 64  # the target binds: a smaller batch
    judged = {f.name: f for f in result.measured.figures if f.within is not None}
    assert set(judged) == {"cost $/day", "ms/token small", "ms/token medium"}
    assert result.measured.within, [f for f in judged.values() if not f.within]
