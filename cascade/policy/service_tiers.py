"""Provider service tiers: the latency tier an API provider serves a workload's calls at.

OpenAI (``service_tier``: ``flex`` at about half the price with slower answers and a 429 when
it has no capacity; ``priority`` at about 1.7x for steadier latency), Gemini (``flex``,
``priority``) and Anthropic (``auto`` lets an organisation with Priority Tier capacity use it,
``standard_only`` keeps a workload off it) sell one model at several latency tiers. An API
tier's ``service_tiers`` names the ones a policy uses, keyed by the provider's own value, with
the workloads sent there, their price and timeouts.

Split from :mod:`cascade.policy.model` (which holds ``Tier.service_tiers``) to keep that file
the policy's outline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from cascade.policy.parts import Timeouts, TokenPrice, _Strict

if TYPE_CHECKING:
    from cascade.policy.model import Problem, Tier

__all__ = ["ServiceTier", "ServiceTierName", "service_tier_of", "service_tier_problems"]

ServiceTierName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)]

STANDARD_PRICED = frozenset({"auto", "default", "standard", "standard_only"})
"""Values billed at the tier's own (standard) price: ``auto`` is served at the standard tier
unless the organisation bought priority capacity (then the provider bills that contract)."""

ACCEPTED: dict[str, tuple[str, ...]] = {
    "openai": ("auto", "default", "flex", "priority", "scale"),
    "azure": ("auto", "default", "flex", "priority"),
    "gemini": ("default", "flex", "priority"),
    "vertex_ai": ("default", "flex", "priority"),
    "anthropic": ("auto", "standard_only"),
}
"""The ``service_tier`` values each provider (litellm's model-string prefix) takes. litellm
passes ``service_tier`` on for OpenAI, Azure and Gemini; Anthropic's Messages API takes it too,
but litellm refuses it there, so the call sends it in the request body (``extra_body``)."""


class ServiceTier(_Strict):
    """One of the provider's service tiers on an API tier, and the workloads sent to it.

    The key is the value sent as the request's ``service_tier`` (``flex``, ``priority``, …).
    A call of a listed workload to this tier is sent at it, charged at its price and given its
    timeouts; every other call is sent without ``service_tier`` (the provider's default)."""

    workloads: list[str] = Field(min_length=1)
    """The workloads whose calls to this tier use this service tier (each at most one per
    tier), e.g. ``[batch]`` for ``flex``, ``[interactive]`` for ``priority``."""
    price: TokenPrice | None = None
    """What a call costs at this service tier. Default: litellm's price map for the model at
    this service tier (``input_cost_per_token_flex`` and the like) when the tier has no
    ``price`` of its own; a tier with a ``price`` needs one here for any service tier billed
    at another price than the standard one (all but ``auto``, ``default``, ``standard``,
    ``standard_only``)."""
    timeouts: Timeouts | None = None
    """The call's limits at this service tier, instead of the tier's ``timeouts``: flex answers
    more slowly (OpenAI suggests allowing 15 minutes), and a call that times out spills."""
    expected_latency_s: float | None = Field(default=None, gt=0)
    """What a call is expected to take here, in seconds, for people and reports (e.g. minutes
    on flex); it limits nothing (``timeouts`` do)."""
    description: str = ""
    """Free text for humans."""


def provider(model: str) -> str:
    """litellm's provider of a model string (``openai/gpt-4o`` → openai; a bare name is
    OpenAI's)."""
    return model.split("/", 1)[0] if "/" in model else "openai"


def service_tier_of(tier: Tier, workload: str) -> str | None:
    """The service tier ``workload``'s calls to ``tier`` are sent at, or None (the default)."""
    for name, service in tier.service_tiers.items():
        if workload in service.workloads:
            return name
    return None


def service_tier_problems(index: int, tier: Tier, workloads: set[str]) -> list[Problem]:
    """What is wrong with one tier's ``service_tiers``, each located."""
    if not tier.service_tiers:
        return []
    where = ("tiers", index, "service_tiers")
    if tier.kind != "api":
        return [(where, "service tiers are an API provider's; a self_hosted tier has none")]
    accepted = ACCEPTED.get(provider(tier.model))
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name, service in tier.service_tiers.items():
        if accepted is None:
            problems.append(((*where, name), _no_service_tiers(tier.model)))
        elif name not in accepted:
            allowed = ", ".join(accepted)
            message = f"{provider(tier.model)} takes service_tier {allowed}, not {name!r}"
            problems.append(((*where, name), message))
        for j, workload in enumerate(service.workloads):
            here = (*where, name, "workloads", j)
            if workload not in workloads:
                known = ", ".join(sorted(workloads))
                problems.append((here, f"unknown workload {workload!r}; allowed: {known}"))
            elif workload in seen:
                problems.append((here, f"{workload!r} is already sent at {seen[workload]!r}"))
            seen.setdefault(workload, name)
        if service.price is None and tier.price is not None and name not in STANDARD_PRICED:
            message = (
                f"the tier's price is its standard one; give {name}'s own price "
                "(price: input_usd_per_mtok, output_usd_per_mtok)"
            )
            problems.append(((*where, name, "price"), message))
    return problems


def _no_service_tiers(model: str) -> str:
    providers = ", ".join(f"{p}/" for p in ACCEPTED)
    return f"{model!r}: only {providers} models take a service_tier"
