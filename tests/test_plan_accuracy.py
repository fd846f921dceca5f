"""cascade plan's stated error holds against the simulated tiers it plans for: a replica's
visits a second at the operating batch and its time per output token, on two of the cases
benchmarks/bench_plan_model.py measures (10 simulated seconds here, 60 there)."""

from __future__ import annotations

import pytest

from cascade.core.day_traffic import HOURS, DayTraffic, Flow, VisitMix
from cascade.core.fleet_search import CAPACITY_ERROR, TPOT_ERROR
from cascade.core.operating_point import tier_models
from cascade.policy import load_policy
from cascade.policy.model import Workload
from cascade.simulator.profiles import PROFILES, GpuTiming
from tests.engine_runs import simulate


@pytest.mark.parametrize(
    ("tier", "profile", "mix", "target_ms"),
    [
        ("small", "1.5b", (600, 300, 250), None),  # chat, half the prompt cached, full batch
        ("medium", "7b", (1500, 0, 150), 2.0),  # nothing cached, a 2 ms target: batch 5
    ],
)
def test_the_plans_capacity_and_time_per_token_hold_on_the_simulated_tier(
    tier: str, profile: str, mix: tuple[int, int, int], target_ms: float | None
) -> None:
    """Saturated at three times the plan's capacity, the default policy's tier at the plan's
    batch serves within CAPACITY_ERROR of the plan's visits a second, its sequences within
    TPOT_ERROR of the plan's time per token (so within the target's margin too)."""
    default = load_policy("default")
    policy = default.model_copy(
        update={"workloads": {"interactive": Workload(max_tpot_ms=target_ms)}}
    )
    prompt, cached, output = mix
    visit = VisitMix(prompt, cached, output, output, prompt - cached)
    traffic = DayTraffic((Flow("interactive", tier, (3600.0,) * HOURS, visit),), 1, 1)
    model = tier_models(policy, traffic)[tier]
    capacity = model.batch / model.slot_seconds(visit)
    timing = PROFILES[profile].timing
    assert isinstance(timing, GpuTiming)
    run = simulate(timing, model.batch, 3 * capacity, mix, seconds=10, seed=3)
    assert run.served_per_s == pytest.approx(capacity, rel=CAPACITY_ERROR)
    assert run.tpot_s == pytest.approx(model.tpot_s, rel=TPOT_ERROR)
    if target_ms is not None:
        assert model.batch < 64
        assert run.tpot_s * 1000 <= target_ms * (1 + TPOT_ERROR)
