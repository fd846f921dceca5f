"""What cache writes and reads cost, against figures computed by hand, and usage read from each
provider's own fields."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from cascade.core.pricing import tier_rates
from cascade.policy.model import Tier
from cascade.run.pricing import Pricer
from cascade.tiers.api import LiteLLMClient
from cascade.tiers.base import Usage, parse_usage

# Claude Sonnet 4.5's list prices: $3/M input, $0.30/M cache read, $15/M output.
SONNET_PRICE = {
    "input_usd_per_mtok": 3,
    "cached_input_usd_per_mtok": "0.30",
    "output_usd_per_mtok": 15,
}


def tier(
    model: str = "anthropic/claude-sonnet-4-5", price: Any = SONNET_PRICE, **cache: Any
) -> Tier:
    return Tier.model_validate(
        {"name": "frontier", "model": model, "kind": "api", "price": price, "cache": cache}
    )


def test_a_cache_write_costs_the_five_minute_premium() -> None:
    """3,200 prompt tokens of which 3,000 written, 100 output, on Sonnet with 5m markers:
    200 x $3/M + 3,000 x $3.75/M + 100 x $15/M = $0.0006 + $0.01125 + $0.0015 = $0.01335."""
    rates = tier_rates(tier())
    assert rates is not None
    assert rates.cache_write == Decimal("0.00000375")
    cost = rates.cost(prompt_tokens=3200, completion_tokens=100, cache_write_tokens=3000)
    assert cost == Decimal("0.01335")


def test_a_cache_read_costs_a_tenth() -> None:
    """The same call reading the 3,000 tokens: $0.0006 + 3,000 x $0.30/M + $0.0015 = $0.003."""
    rates = tier_rates(tier())
    assert rates is not None
    assert rates.cost(prompt_tokens=3200, completion_tokens=100, cached_tokens=3000) == Decimal(
        "0.003"
    )


def test_a_one_hour_write_costs_twice_the_input_price() -> None:
    """ttl 1h: 3,000 written at $6/M = $0.018; with the rest, $0.0201."""
    rates = tier_rates(tier(ttl="1h"))
    assert rates is not None
    assert rates.cost(3200, 100, cache_write_tokens=3000) == Decimal("0.0201")


def test_the_policy_write_price_overrides_the_premium() -> None:
    price = {**SONNET_PRICE, "cache_write_usd_per_mtok": 4}
    rates = tier_rates(tier(price=price))
    assert rates is not None
    assert rates.cost(1000, 0, cache_write_tokens=1000) == Decimal("0.004")


def test_providers_without_write_charges_price_writes_as_input() -> None:
    """OpenAI has no write premium: a tier without Anthropic markers pays the input price."""
    openai = tier("openai/gpt-4o", {"input_usd_per_mtok": "2.5", "output_usd_per_mtok": 10})
    off = tier(markers="off")
    for each in (openai, off):
        rates = tier_rates(each)
        assert rates is not None
        assert rates.cache_write == rates.input


def test_write_and_read_together_cannot_exceed_the_prompt() -> None:
    rates = tier_rates(tier())
    assert rates is not None
    with pytest.raises(ValueError, match=r"must add up to within 0\.\.100"):
        rates.cost(100, 0, cached_tokens=60, cache_write_tokens=60)


def test_usage_as_litellm_reports_anthropic_caching() -> None:
    """litellm's OpenAI-form usage for an Anthropic answer: prompt_tokens counts input,
    creation and read tokens together; cached_tokens is the read, cache_creation the write."""
    usage = parse_usage(
        {
            "completion_tokens": 3,
            "prompt_tokens": 2510,
            "prompt_tokens_details": {
                "cache_write_tokens": 2000,
                "cached_tokens": 500,
                "cache_creation_tokens": 2000,
            },
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 500,
        }
    )
    assert usage == Usage(2510, 3, 500, cache_write_tokens=2000)


def test_usage_that_claims_more_than_the_prompt_is_clamped() -> None:
    """An upstream's nonsense (more written than the prompt holds) is never priced negative."""
    usage = parse_usage(
        {
            "completion_tokens": 1,
            "prompt_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 80},
            "cache_creation_input_tokens": 5000,
        }
    )
    assert usage == Usage(100, 1, 80, cache_write_tokens=20)


def test_openai_usage_has_no_writes() -> None:
    usage = parse_usage(
        {
            "completion_tokens": 5,
            "prompt_tokens": 2000,
            "prompt_tokens_details": {"cached_tokens": 1024},
        }
    )
    assert usage == Usage(2000, 5, 1024)


def test_an_attempt_is_priced_with_its_writes_and_reads() -> None:
    """One call that read 1,000 and wrote 2,000 of 3,100 prompt tokens, 50 output:
    100 x $3/M + 1,000 x $0.30/M + 2,000 x $3.75/M + 50 x $15/M = $0.00885."""
    usage = Usage(3100, 50, 1000, cache_write_tokens=2000)
    attempt = Pricer().attempt(tier(), "primary", "ok", usage=usage, latency_s=0.1)
    assert attempt.cost_usd == Decimal("0.00885")


def test_litellm_map_supplies_write_prices_when_the_policy_has_none() -> None:
    """Without a price block, a Claude tier's write price comes from litellm's map: $3.75/M for
    5m, $6/M for 1h."""
    client = LiteLLMClient()
    five = client.rates(tier(price=None))
    hour = client.rates(tier(price=None, ttl="1h"))
    assert five is not None
    assert hour is not None
    assert (five.input, five.cached_input, five.cache_write) == (
        Decimal("0.000003"),
        Decimal("3E-7"),
        Decimal("0.00000375"),
    )
    assert hour.cache_write == Decimal("0.000006")


def test_a_budget_reserves_for_writes() -> None:
    """The worst case of a call counts every prompt token at the write price when it is dearer."""
    rates = tier_rates(tier())
    assert rates is not None
    assert rates.most(1000, 10) == Decimal("0.00375") + Decimal("0.00015")
