"""What a tier charges per token, in US dollars, as exact decimals.

API tiers: the policy's $/M-token prices (or litellm's offline price map), with their own rates
for prompt tokens read from the provider's cache and for tokens written to it. Self-hosted
tiers: GPU time. A decode step serves a whole batch, so ``$/output token = GPU $/hour ÷
(measured tokens/s * 3600)``; prompt tokens cost GPU time at the prefill throughput, and prompt
tokens the engine found in its prefix cache cost nothing.

A workload with a latency target (``max_tpot_ms``) is served at a smaller batch, where a step
serves fewer sequences: :func:`workload_rates` prices its output tokens at ``GPU $/s x step
time ÷ batch`` there (:mod:`cascade.core.serving_model`).

A workload an API tier sends at one of its provider's service tiers (``service_tiers``: flex,
priority) pays that service tier's price: :func:`workload_rates` with the workload's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from cascade.core.cache_markers import write_premium
from cascade.core.per_object import PerObject
from cascade.core.serving_model import DEFAULT_PREFILL_SPEEDUP, step_line
from cascade.policy.model import GpuPrice, ServiceTier, Tier, TokenPrice, Workload
from cascade.policy.service_tiers import service_tier_of

__all__ = ["DEFAULT_PREFILL_SPEEDUP", "Rates", "tier_rates", "workload_rates"]

_MILLION = Decimal(1_000_000)
_SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class Rates:
    """US dollars per single token."""

    input: Decimal
    cached_input: Decimal
    """A prompt token read from the provider's cache."""
    output: Decimal
    cache_write: Decimal | None = None
    """A prompt token written to the provider's cache; None: the input price."""

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """Dollars for one call; ``cached_tokens`` of ``prompt_tokens`` were read from the cache
        and ``cache_write_tokens`` of them written to it, the rest billed as plain input."""
        if not 0 <= cached_tokens + cache_write_tokens <= prompt_tokens or cache_write_tokens < 0:
            raise ValueError(
                f"cached_tokens={cached_tokens} and cache_write_tokens={cache_write_tokens} "
                f"must add up to within 0..{prompt_tokens}"
            )
        plain = prompt_tokens - cached_tokens - cache_write_tokens
        write = self.input if self.cache_write is None else self.cache_write
        return (
            plain * self.input
            + cached_tokens * self.cached_input
            + cache_write_tokens * write
            + completion_tokens * self.output
        )

    def most(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """The most a call of this size can cost: every prompt token at the dearer of the input
        and cache-write prices (a budget's reservation must not fall short of a write)."""
        write = self.input if self.cache_write is None else self.cache_write
        return prompt_tokens * max(self.input, write) + completion_tokens * self.output


def tier_rates(tier: Tier) -> Rates | None:
    """The tier's per-token rates; None when the policy has no price (priced later, by litellm)."""
    return None if tier.price is None else _rates_of(tier)


def _rates(tier: Tier) -> Rates:
    """Rates for a priced tier (remembered per tier object by :data:`_rates_of`)."""
    price = tier.price
    assert price is not None
    if isinstance(price, TokenPrice):
        return _token_rates(price, tier)
    return _gpu_rates(price)


def _token_rates(price: TokenPrice, tier: Tier) -> Rates:
    cached = price.cached_input_usd_per_mtok
    write = price.cache_write_usd_per_mtok
    if write is None:
        write = price.input_usd_per_mtok * write_premium(tier)
    return Rates(
        input=price.input_usd_per_mtok / _MILLION,
        cached_input=(price.input_usd_per_mtok if cached is None else cached) / _MILLION,
        output=price.output_usd_per_mtok / _MILLION,
        cache_write=write / _MILLION,
    )


def _gpu_rates(price: GpuPrice) -> Rates:
    per_second = price.gpu_usd_per_hour / _SECONDS_PER_HOUR
    decode = Decimal(repr(price.tokens_per_second))
    prefill = (
        Decimal(repr(price.prefill_tokens_per_second))
        if price.prefill_tokens_per_second is not None
        else decode * DEFAULT_PREFILL_SPEEDUP
    )
    return Rates(input=per_second / prefill, cached_input=Decimal(0), output=per_second / decode)


_rates_of: PerObject[Tier, Rates] = PerObject(_rates)


def workload_rates(tier: Tier, workload: Workload, name: str | None = None) -> Rates | None:
    """The tier's rates for one workload's requests: :func:`tier_rates`, but for a GPU-priced
    tier and a workload with ``max_tpot_ms``, output tokens at the batch that target allows
    (remembered per workload and tier object); and on an API tier that sends the workload
    called ``name`` at one of its ``service_tiers``, that service tier's price (None when it
    has none and the tier is priced from litellm's map: see :func:`service_rates`)."""
    if name is not None and tier.service_tiers:
        service = service_tier_of(tier, name)
        if service is not None:
            return service_rates(tier, service)
    if workload.max_tpot_ms is None or not isinstance(tier.price, GpuPrice):
        return tier_rates(tier)
    return _at_target(workload)(tier)


def service_rates(tier: Tier, service: str) -> Rates | None:
    """The rates of a call sent to ``tier`` at its service tier ``service``: the service tier's
    price, else the tier's own (the policy allows that only for a standard-priced one such as
    ``auto``); None for a tier priced from litellm's map, which prices it at the call."""
    price = tier.service_tiers[service].price
    if price is None:
        return tier_rates(tier)
    return _service_rates_of(tier.service_tiers[service])(tier)


def _service_rates(service: ServiceTier) -> PerObject[Tier, Rates]:
    price = service.price
    assert price is not None
    return PerObject(lambda tier: _token_rates(price, tier))


_service_rates_of: PerObject[ServiceTier, PerObject[Tier, Rates]] = PerObject(_service_rates)


def _at_target_of(workload: Workload) -> PerObject[Tier, Rates]:
    target_s = workload.max_tpot_ms
    assert target_s is not None

    def rates(tier: Tier) -> Rates:
        line, price = step_line(tier), tier.price
        assert line is not None  # (a GPU price has a line)
        assert isinstance(price, GpuPrice)
        batch = line.operating_batch(target_s / 1000)
        if batch == line.max_batch:
            return _rates_of(tier)
        seconds_per_token = Decimal(repr(line.decode_step(batch) / batch))
        output = price.gpu_usd_per_hour / _SECONDS_PER_HOUR * seconds_per_token
        return replace(_rates_of(tier), output=output)

    return PerObject(rates)


_at_target: PerObject[Workload, PerObject[Tier, Rates]] = PerObject(_at_target_of)
