"""The fleet cost model against hand-computed cases: bills, utilization, break-even."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cascade.core.fleet_cost import (
    Fleet,
    Served,
    billed_usd,
    break_even,
    capacity_tokens,
    fleet_cost,
    fleet_of,
)
from cascade.core.pricing import Rates, tier_rates
from cascade.policy import parse_policy
from tests.conftest import TWO_TIERS

_M = 1_000_000


def _fleet(gpus: int, usd: str, decode: int, prefill: int, ops: str = "0") -> Fleet:
    return Fleet(gpus, Decimal(usd), Decimal(decode), Decimal(prefill), Decimal(ops))


def test_a_fleet_idle_half_the_time_costs_twice_the_nominal_per_token() -> None:
    """One $2/hour GPU decoding 1,000 tok/s for one hour of a two-hour window: utilization 50%,
    billed $4 against the ledger's $2, so each token really cost twice its nominal price."""
    fleet = _fleet(1, "2", 1000, 10_000)
    cost = fleet_cost(fleet, Decimal(2), Served(0, 3_600_000))
    assert cost.utilization == Decimal("0.5")
    assert cost.billed_usd == 4
    assert cost.nominal_usd == 2
    assert cost.effective_over_nominal == 2
    assert cost.effective_usd_per_mtok == 2 * cost.nominal_usd_per_mtok  # type: ignore[operator]


def test_worked_example_with_operations_cost() -> None:
    """2 GPUs x $2.30/hour for 24 h plus $300 a 30-day month of operations bill $110.40 + $10;
    56M tokens served (41.6M prompt of which 5.6M cached, 14.4M completion) cost $2.15 per
    million, against a nominal 2.5 busy GPU-hours x $2.30 = $5.75."""
    fleet = _fleet(2, "2.30", 2000, 20_000, ops="300")
    served = Served(prompt_tokens=41_600_000, completion_tokens=14_400_000, cached_tokens=5_600_000)
    cost = fleet_cost(fleet, Decimal(24), served, useful_tokens=12_040_000)
    assert cost.billed_usd == Decimal("120.40")
    # 36M uncached prompt tokens at 20,000 tok/s = 0.5 h; 14.4M at 2,000 tok/s = 2 h.
    assert cost.busy_gpu_hours == Decimal("2.5")
    assert cost.utilization == Decimal("2.5") / 48
    assert cost.nominal_usd == Decimal("5.75")
    assert cost.effective_usd_per_mtok == Decimal("2.15")
    assert cost.effective_usd_per_useful_token == Decimal("0.00001")
    assert cost.capacity_tokens == 2 * 2000 * 3600 * 24


def test_the_ledgers_nominal_price_is_the_policy_rate_at_full_batch() -> None:
    """The nominal cost of a fleet's tokens equals what the ledger charges them at the tier's
    rates: busy GPU time at the GPU's rent."""
    tier = parse_policy(TWO_TIERS).tier("small")
    fleet, rates = fleet_of(tier), tier_rates(tier)
    assert fleet is not None
    assert rates is not None
    served = Served(prompt_tokens=50_000, completion_tokens=7_000, cached_tokens=20_000)
    charged = rates.cost(50_000, 7_000, 20_000)
    nominal = fleet_cost(fleet, Decimal(1), served).nominal_usd
    assert nominal == pytest.approx(charged, rel=Decimal("1e-20"))


def test_billed_gpus_default_to_one_per_replica() -> None:
    """A tier with three replicas is billed for three GPUs unless its price says how many."""
    three = TWO_TIERS.replace(
        "    endpoint: http://127.0.0.1:8001/v1\n",
        "    replicas: [http://a:1/v1, http://b:1/v1, http://c:1/v1]\n",
    )
    fleet = fleet_of(parse_policy(three).tier("small"))
    assert fleet is not None
    assert fleet.gpus == 3
    assert billed_usd(fleet, Decimal(10)) == 60
    stated = three.replace("tokens_per_second: 1000}", "tokens_per_second: 1000, gpus: 8}")
    fleet = fleet_of(parse_policy(stated).tier("small"))
    assert fleet is not None
    assert fleet.gpus == 8
    assert capacity_tokens(fleet, Decimal(1)) == 8 * 1000 * 3600


def test_operations_cost_is_prorated_over_a_30_day_month() -> None:
    """$720 a month of operations adds exactly $1 an hour to the bill."""
    text = TWO_TIERS.replace(
        "tokens_per_second: 1000}", "tokens_per_second: 1000, ops_usd_per_month: 720}"
    )
    fleet = fleet_of(parse_policy(text).tier("small"))
    assert fleet is not None
    assert billed_usd(fleet, Decimal(5)) == 5 * 2 + 5


def test_token_priced_tiers_have_no_fleet() -> None:
    """A tier priced per token (an API, or self-hosted at a stated $/M) has no GPU bill."""
    policy = parse_policy(TWO_TIERS)
    assert fleet_of(policy.tier("big")) is None


def test_break_even_of_a_worked_example() -> None:
    """One $2.40/hour GPU ($57.60 a day) against an API at $2.50/M input and $12.50/M output,
    for traffic of three prompt tokens per completion token ($5 per million): 11.52M tokens a
    day, well within what the GPU serves (decode 1,500 tok/s, prefill 15,000: 398.77M a day)."""
    fleet = _fleet(1, "2.40", 1500, 15_000)
    api = Rates(
        input=Decimal("2.50") / _M, cached_input=Decimal("0.25") / _M, output=Decimal("12.50") / _M
    )
    even = break_even(fleet, api, Served(prompt_tokens=3_000_000, completion_tokens=1_000_000))
    assert even.fleet_usd_per_day == Decimal("57.60")
    assert even.api_usd_per_mtok == Decimal(5)
    assert even.tokens_per_day == Decimal(11_520_000)
    assert even.fleet_tokens_per_day is not None
    assert round(even.fleet_tokens_per_day) == 398_769_231
    assert even.reachable
    # With $300 a month of operations the bill is $67.60 a day: break-even 13.52M tokens a day.
    with_ops = _fleet(1, "2.40", 1500, 15_000, ops="300")
    assert break_even(with_ops, api, Served(3_000_000, 1_000_000)).tokens_per_day == 13_520_000


def test_a_break_even_beyond_the_fleets_capacity_is_unreachable() -> None:
    """A slow, dear GPU that cannot serve its own break-even volume in a day never pays off."""
    fleet = _fleet(1, "12", 34, 340)
    api = Rates(input=Decimal("3") / _M, cached_input=Decimal("3") / _M, output=Decimal("15") / _M)
    even = break_even(fleet, api, Served(prompt_tokens=1_000, completion_tokens=1_000))
    assert even.tokens_per_day is not None
    assert even.fleet_tokens_per_day is not None
    assert even.tokens_per_day > even.fleet_tokens_per_day
    assert not even.reachable
