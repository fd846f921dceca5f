"""What each tier call cost: one :class:`~cascade.run.attempts.Attempt` per call, priced.

A tier's rates come from its policy price, else (API tiers) from litellm's offline price map; a
call whose usage or rates are unknown costs nothing rather than a guess. A call an API tier sent
at one of its provider's service tiers (the request's workload chose it) is priced at that
service tier: its policy price, else litellm's map for it. A call to a GPU-priced tier for a
workload with a latency target (``max_tpot_ms``) is priced at the batch that target allows.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from cascade.core.pricing import Rates, service_rates, tier_rates, workload_rates
from cascade.errors import TierError
from cascade.policy.model import Policy, Tier
from cascade.policy.service_tiers import service_tier_of
from cascade.run.attempts import CLIENT_GONE, Attempt, Outcome, Role
from cascade.tiers.base import TierAnswer, Usage

ApiRates = Callable[[Tier, str | None], Rates | None]
"""litellm's rates of an API tier at a service tier (None: the provider's default one)."""


class Pricer:
    """Prices calls at their tiers' rates (``api_rates``: litellm's map, for API tiers)."""

    def __init__(
        self, api_rates: ApiRates | None = None, policy: Callable[[], Policy] | None = None
    ) -> None:
        self._api_rates = api_rates
        self._policy = policy

    def rates(self, tier: Tier, workload: str | None = None) -> Rates | None:
        """The tier's per-token rates for ``workload``'s calls: the policy's price, else
        litellm's map for API tiers; at the service tier the tier sends the workload at, if
        any; on a GPU-priced tier, at the batch the workload's ``max_tpot_ms`` allows."""
        service = service_tier_of(tier, workload) if workload and tier.service_tiers else None
        if service is not None:
            rates = service_rates(tier, service)
        elif workload is not None and self._policy is not None:
            settings = self._policy().workloads.get(workload)
            rates = tier_rates(tier) if settings is None else workload_rates(tier, settings)
        else:
            rates = tier_rates(tier)
        if rates is None and self._api_rates is not None:
            rates = self._api_rates(tier, service)
        return rates

    def attempt(
        self,
        tier: Tier,
        role: Role,
        outcome: Outcome,
        *,
        usage: Usage | None,
        latency_s: float,
        reason: str | None = None,
        error_class: str | None = None,
        verify_confidence: float | None = None,
        workload: str | None = None,
    ) -> Attempt:
        """One call's record, priced at the tier's rates for ``workload``'s calls (nothing
        known costs nothing)."""
        rates = self.rates(tier, workload)
        cost = Decimal(0)
        if usage is not None and rates is not None:
            cached = min(usage.cached_tokens, usage.prompt_tokens)
            written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
            cost = rates.cost(usage.prompt_tokens, usage.completion_tokens, cached, written)
        return Attempt(
            tier.name,
            tier.model,
            role,
            outcome,
            reason,
            error_class,
            usage,
            cost,
            latency_s,
            verify_confidence,
        )

    def answered(
        self,
        tier: Tier,
        role: Role,
        answer: TierAnswer,
        outcome: Outcome,
        reason: str | None,
        *,
        verify_confidence: float | None = None,
        workload: str | None = None,
    ) -> Attempt:
        """The record of a call that answered (kept, rejected, or a witness)."""
        return self.attempt(
            tier,
            role,
            outcome,
            usage=answer.usage,
            latency_s=answer.latency_s,
            reason=reason,
            verify_confidence=verify_confidence,
            workload=workload,
        )

    def gone(self, tier: Tier, role: Role, latency_s: float) -> Attempt:
        """The call the run was making when its client went away."""
        reason = "the client went away before the tier answered"
        return self.attempt(
            tier,
            role,
            "error",
            usage=None,
            latency_s=latency_s,
            reason=reason,
            error_class=CLIENT_GONE,
        )

    def failed(self, tier: Tier, role: Role, error: TierError, latency_s: float) -> Attempt:
        return self.attempt(
            tier,
            role,
            "error",
            usage=None,
            latency_s=latency_s,
            reason=str(error),
            error_class=error.kind,
        )
