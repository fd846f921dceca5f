"""cascade plan's fleet model against hand-computed cases: a day's cost, the cheapest fleet on a
day with one peak hour, a latency target's price in replicas, the break-even of a replica."""

from __future__ import annotations

import math

import pytest

from cascade.core.day_traffic import HOURS, DayTraffic, Flow, VisitMix
from cascade.core.fleet_plan import fleets
from cascade.core.fleet_search import plan_fleets
from cascade.core.operating_point import tier_models
from cascade.errors import PlanError
from cascade.policy import Policy, parse_policy

# One replica: $1 an hour ($24 a day) + $30 a month of operations ($1 a day), 10 sequences at
# once decoding 100 tok/s in all: every step 0.1 s whatever the batch (no single-stream speed).
# A visit decoding 100 tokens holds a slot 10 s: one replica serves a visit a second, flat out.
# The API charges $20 per million output tokens: $0.002 for such a visit.
PLAN = """\
name: plan
tiers:
  - name: gpu
    model: distill-7b
    kind: self_hosted
    endpoint: http://127.0.0.1:8002/v1
    price: {gpu_usd_per_hour: 1, tokens_per_second: 100, batch: 10, ops_usd_per_month: 30{extra}}
    max_concurrency: 10
    overflow: api
  - name: api
    model: openai/gpt-4o
    kind: api
    price: {input_usd_per_mtok: 2, cached_input_usd_per_mtok: 1, output_usd_per_mtok: 20}
workloads:
  interactive: {target}
"""
ANSWER = VisitMix(
    prompt_tokens=0, cached_tokens=0, completion_tokens=100, decode_tokens=100, prefill_tokens=0
)


def _policy(extra: str = "", target: str = "{}") -> Policy:
    return parse_policy(PLAN.replace("{extra}", extra).replace("{target}", target))


def _day(per_hour: list[float], mix: VisitMix = ANSWER) -> DayTraffic:
    return DayTraffic((Flow("interactive", "gpu", tuple(per_hour), mix),), days=1, requests=1)


def _erlang_b(servers: int, load: float) -> float:
    """Erlang's loss formula, the textbook way: (a^c / c!) / sum_k a^k / k!."""
    terms = [load**k / math.factorial(k) for k in range(servers + 1)]
    return terms[-1] / sum(terms)


def test_a_fleets_daily_cost_is_its_rent_and_operations_plus_what_spills() -> None:
    """Three replicas with nothing to do cost 3 x $24 + $1 of operations; with no replica,
    3,600 visits an hour all go to the API: 86,400 x $0.002 = $172.80."""
    policy = _policy()
    idle = _day([0.0] * HOURS)
    models = tier_models(policy, _day([1.0] * HOURS))
    (three,) = fleets(policy, idle, models, {"gpu": range(3, 4)})
    assert three.total_usd == pytest.approx(73.0)
    assert three.gpu_usd == pytest.approx(73.0)
    (none,) = fleets(policy, _day([3600.0] * HOURS), models, {"gpu": range(1)})
    assert none.gpu_usd == 0
    assert none.total_usd == pytest.approx(172.80)
    assert none.tiers[0].spill_share == 1


def test_the_cheapest_fleet_serves_the_baseline_and_spills_the_peak() -> None:
    """23 hours at 1,800 visits (5 busy slots of 10) and one hour at 36,000 (100 busy slots):
    one replica serves the baseline, losing Erlang B(10, 5) = 1.8% of it, and spills 90% of
    the peak hour; a second replica would cost $25 a day to save ~$3.5 of that spill. Peak
    provisioning needs 12 replicas ($289 a day), all-API costs $154.80."""
    policy = _policy()
    plan = plan_fleets(policy, _day([1800.0] * 23 + [36000.0]), max_replicas=20, scales=[1])
    scenario = plan.scenarios[0]
    assert scenario.cheapest is not None
    assert scenario.cheapest.replicas == (("gpu", 1),)
    spilled = 1800 * 23 * _erlang_b(10, 5) + 36000 * _erlang_b(10, 100)
    assert scenario.cheapest.total_usd == pytest.approx(25 + spilled * 0.002)
    assert scenario.all_api.total_usd == pytest.approx(154.80)
    assert scenario.peak.replicas == (("gpu", 12),)
    assert max(f.count("gpu") for f in scenario.fleets) == 14  # two past the peak: rent only
    assert scenario.peak.tiers[0].peak_spill_share <= 0.01
    assert scenario.peak.total_usd > scenario.cheapest.total_usd


def test_more_traffic_moves_the_answer_to_more_replicas() -> None:
    """At 10x the same day the baseline alone fills five replicas' worth of slots."""
    plan = plan_fleets(_policy(), _day([1800.0] * 23 + [36000.0]), max_replicas=4)
    one, _, ten = plan.scenarios
    assert one.cheapest is not None
    assert ten.cheapest is not None
    assert ten.cheapest.count("gpu") > 5 * one.cheapest.count("gpu")


def test_a_latency_target_costs_replicas() -> None:
    """With one sequence alone at 25 tok/s (a 40 ms step against 100 ms at batch 10), a 70 ms
    target allows batch 5 (67 ms steps): a replica then serves 0.75 visits a second, not 1, and
    a steady 2.7 visits a second need 4 replicas instead of 3 at the same fleet cost rules."""
    single = ", single_stream_tokens_per_second: 25"
    free = plan_fleets(_policy(single), _day([9720.0] * HOURS), max_replicas=8, scales=[1])
    bound = plan_fleets(
        _policy(single, "{max_tpot_ms: 70}"), _day([9720.0] * HOURS), max_replicas=8, scales=[1]
    )
    assert free.models["gpu"].batch == 10
    assert bound.models["gpu"].batch == 5
    assert bound.models["gpu"].tpot_s == pytest.approx(0.0667, abs=1e-4)
    assert bound.models["gpu"].meets
    cheap_free, cheap_bound = free.scenarios[0].cheapest, bound.scenarios[0].cheapest
    assert cheap_free is not None
    assert cheap_bound is not None
    assert cheap_bound.count("gpu") > cheap_free.count("gpu")
    assert cheap_bound.tiers[0].slots == 5 * cheap_bound.count("gpu")


def test_a_target_out_of_reach_keeps_the_tier_out_of_the_cheapest_fleet() -> None:
    """A 30 ms target under a 40 ms single-stream step: no fleet with a replica keeps it."""
    single = ", single_stream_tokens_per_second: 25"
    plan = plan_fleets(
        _policy(single, "{max_tpot_ms: 30}"), _day([1800.0] * HOURS), max_replicas=2, scales=[1]
    )
    scenario = plan.scenarios[0]
    assert scenario.cheapest is not None
    assert scenario.cheapest.replicas == (("gpu", 0),)
    missed = [f for f in scenario.fleets if f.count("gpu")]
    assert missed
    assert all("over the 30 ms target" in p for f in missed for p in f.problems)


def test_break_even_of_a_worked_example() -> None:
    """A visit of 300 prompt tokens (100 cached) and 100 output costs at the API 200 x $2/M +
    100 x $1/M + 100 x $20/M = $0.0025 for 400 tokens: $6.25 per million. One replica bills $25
    a day, so it breaks even at 4M tokens a day; flat out it serves 400 tokens per 1.2 s of GPU
    (200 prefilled at 1,000 tok/s, 100 decoded at 100): 28.8M a day."""
    mix = VisitMix(300, 100, 100, 100, 200)
    plan = plan_fleets(_policy(), _day([100.0] * HOURS, mix), max_replicas=1, scales=[1])
    (line,) = plan.break_even
    assert (line.tier, line.api_tier) == ("gpu", "api")
    assert line.replica_usd_per_day == pytest.approx(25)
    assert line.api_usd_per_mtok == pytest.approx(6.25)
    assert line.tokens_per_day == pytest.approx(4_000_000)
    assert line.replica_tokens_per_day == pytest.approx(28_800_000)
    assert line.observed_tokens_per_day == pytest.approx(2400 * 400)


def test_work_that_cannot_spill_must_fit_the_free_slots() -> None:
    """Batch jobs (spill: false) wait for free slots: a day of them beyond a replica's 240
    slot-hours fails the fleet, and with no replica they have nowhere to go."""
    policy = parse_policy(
        PLAN.replace("{extra}", "").replace("{target}", "{}\n  batch: {spill: false}")
    )
    jobs = DayTraffic((Flow("batch", "gpu", (4000.0,) * HOURS, ANSWER),), days=1, requests=1)
    plan = plan_fleets(policy, jobs, max_replicas=3, scales=[1])
    by_count = {f.count("gpu"): f for f in plan.scenarios[0].fleets}
    assert not by_count[0].meets
    assert "slot-hours" in by_count[1].problems[0]  # 96,000 visits x 10 s = 267 slot-hours
    assert plan.scenarios[0].cheapest is not None
    assert plan.scenarios[0].cheapest.count("gpu") == 2


def test_no_traffic_is_a_clear_error() -> None:
    """A window with nothing in it cannot be planned for."""
    with pytest.raises(PlanError, match="no traffic to plan for"):
        plan_fleets(_policy(), _day([0.0] * HOURS))


def test_the_verify_steps_samples_take_a_slot_each() -> None:
    """Visits decoding three samples (300 tokens for a 100-token answer) hold three slots: two
    replicas of batch 10 take 20 sequences, so the proxy's max_concurrency is 6 calls, and each
    visit holds its slots 30 s of steps in all."""
    sampled = VisitMix(0, 0, completion_tokens=100, decode_tokens=300, prefill_tokens=0)
    policy = _policy()
    traffic = _day([100.0] * HOURS, sampled)
    (two,) = fleets(policy, traffic, tier_models(policy, traffic), {"gpu": range(2, 3)})
    (tier,) = two.tiers
    assert (tier.slots, tier.sequences, tier.max_concurrency) == (20, 3, 6)
    assert tier.busy_slot_hours == pytest.approx(2400 * 30 / 3600, rel=1e-3)
