"""Per-token rates and call costs, exact to the cent fraction."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cascade.core.per_object import PerObject
from cascade.core.pricing import Rates, tier_rates
from cascade.policy import parse_policy
from tests.conftest import TWO_TIERS


def test_token_prices_charge_cached_input_at_its_own_rate() -> None:
    """600 fresh + 400 cached input tokens and 200 output tokens cost exactly $0.004."""
    rates = tier_rates(parse_policy(TWO_TIERS).tier("big"))
    assert rates is not None
    assert rates.cost(prompt_tokens=1000, completion_tokens=200, cached_tokens=400) == Decimal(
        "0.004"
    )


def test_cached_price_defaults_to_input_price() -> None:
    """Without a cached-input price, cached tokens cost as much as fresh ones."""
    text = TWO_TIERS.replace("cached_input_usd_per_mtok: 1.25, ", "")
    rates = tier_rates(parse_policy(text).tier("big"))
    assert rates is not None
    assert rates.cached_input == rates.input == Decimal("0.0000025")


def test_gpu_time_pricing_matches_the_serving_economics() -> None:
    """A 1.5B tier at $2.5/hour and 32,000 tok/s costs about $0.022 per million output tokens."""
    text = TWO_TIERS.replace(
        "gpu_usd_per_hour: 2.0, tokens_per_second: 1000",
        "gpu_usd_per_hour: 2.5, tokens_per_second: 32000",
    )
    rates = tier_rates(parse_policy(text).tier("small"))
    assert rates is not None
    per_million = rates.output * 1_000_000
    assert per_million.quantize(Decimal("0.0001")) == Decimal("0.0217")
    # Prompt tokens use GPU time at the (default 10x faster) prefill rate; cached ones are free.
    assert rates.input == rates.output / 10
    assert rates.cached_input == 0


def test_gpu_tier_cost_is_gpu_seconds_used() -> None:
    """1,000 output tokens at 1,000 tok/s on a $2/hour GPU cost one GPU-second: $2/3600."""
    rates = tier_rates(parse_policy(TWO_TIERS).tier("small"))
    assert rates is not None
    cost = rates.cost(prompt_tokens=0, completion_tokens=1000)
    assert cost.quantize(Decimal("1e-12")) == (Decimal(2) / 3600).quantize(Decimal("1e-12"))


def test_api_tier_without_price_has_no_rates() -> None:
    """An API tier without a price is priced later (litellm's map), not guessed here."""
    text = TWO_TIERS.replace(
        "    price: {input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25,"
        " output_usd_per_mtok: 10}\n",
        "",
    )
    assert tier_rates(parse_policy(text).tier("big")) is None


def test_cached_tokens_cannot_exceed_prompt_tokens() -> None:
    """Usage that claims more cached than prompt tokens is rejected, not priced negative."""
    rates = Rates(input=Decimal(1), cached_input=Decimal(0), output=Decimal(1))
    with pytest.raises(
        ValueError, match=r"cached_tokens=5 and cache_write_tokens=0 must add up to within 0\.\.4"
    ):
        rates.cost(prompt_tokens=4, completion_tokens=0, cached_tokens=5)


def test_a_reloaded_policy_is_priced_by_its_new_prices() -> None:
    """Rates are remembered per price object: an edited policy's new price takes effect, and
    an unchanged one is not recomputed."""
    before = parse_policy(TWO_TIERS).tier("big")
    after = parse_policy(TWO_TIERS.replace("output_usd_per_mtok: 10", "output_usd_per_mtok: 20"))
    old, new = tier_rates(before), tier_rates(after.tier("big"))
    assert old is not None
    assert new is not None
    assert new.output == 2 * old.output
    assert tier_rates(before) is old


def test_per_object_builds_once_per_object_not_per_equal_value() -> None:
    built: list[object] = []

    def build(key: object) -> int:
        built.append(key)
        return len(built)

    remember = PerObject(build, max_entries=2)
    first, twin = [1], [1]  # equal, distinct objects
    assert (remember(first), remember(first), remember(twin)) == (1, 1, 2)
    assert remember([2]) == 3  # full: starts over, still correct
    assert remember(first) == 4
