"""What a tier charges per token, in US dollars, as exact decimals.

API tiers: the policy's $/M-token prices (or, later, litellm's offline price map). Self-hosted
tiers: GPU time. A decode step serves a whole batch, so ``$/output token = GPU $/hour ÷
(measured tokens/s * 3600)``; prompt tokens cost GPU time at the prefill throughput, and prompt
tokens the engine found in its prefix cache cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cascade.core.per_object import PerObject
from cascade.policy.model import GpuPrice, Tier, TokenPrice

_MILLION = Decimal(1_000_000)
_SECONDS_PER_HOUR = Decimal(3600)
# Prefill processes a prompt's tokens in parallel; an order of magnitude above decode throughput
# is typical for vLLM/SGLang on one GPU. A policy can state the measured number instead.
_DEFAULT_PREFILL_SPEEDUP = 10


@dataclass(frozen=True)
class Rates:
    """US dollars per single token."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal:
        """Dollars for one call; ``cached_tokens`` of ``prompt_tokens`` hit the cache."""
        if not 0 <= cached_tokens <= prompt_tokens:
            raise ValueError(f"cached_tokens={cached_tokens} must be within 0..{prompt_tokens}")
        uncached = prompt_tokens - cached_tokens
        return (
            uncached * self.input
            + cached_tokens * self.cached_input
            + completion_tokens * self.output
        )


def tier_rates(tier: Tier) -> Rates | None:
    """The tier's per-token rates; None when the policy has no price (priced later, by litellm)."""
    return None if tier.price is None else _rates_of(tier.price)


def _rates(price: TokenPrice | GpuPrice) -> Rates:
    """Rates for a price (remembered per price object by :data:`_rates_of`)."""
    if isinstance(price, TokenPrice):
        cached = price.cached_input_usd_per_mtok
        return Rates(
            input=price.input_usd_per_mtok / _MILLION,
            cached_input=(price.input_usd_per_mtok if cached is None else cached) / _MILLION,
            output=price.output_usd_per_mtok / _MILLION,
        )
    per_second = price.gpu_usd_per_hour / _SECONDS_PER_HOUR
    decode = Decimal(repr(price.tokens_per_second))
    prefill = (
        Decimal(repr(price.prefill_tokens_per_second))
        if price.prefill_tokens_per_second is not None
        else decode * _DEFAULT_PREFILL_SPEEDUP
    )
    return Rates(input=per_second / prefill, cached_input=Decimal(0), output=per_second / decode)


_rates_of: PerObject[TokenPrice | GpuPrice, Rates] = PerObject(_rates)
