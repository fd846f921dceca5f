"""The ``decide`` step: from a confidence to a tier, with the reason in words.

Pure: no I/O, no clock. Given the policy, the scorer's confidence, the prepared prompt and a view
of each tier's load, it picks the cheapest tier that

1. the request's workload class allows (and the caller's key, when it names tiers),
2. whose threshold the confidence clears (the last allowed tier takes whatever reaches it), and
3. that has capacity; a saturated tier sends the request to its overflow target, else to the next
   stronger allowed tier with room, else the request queues: on the tier it was given, or the
   first of those tiers whose queue (``max_queue``) has room. (When no queue has room, the
   router refuses the request: 503.)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any

from cascade.core.capacity import CapacityView
from cascade.core.pricing import workload_rates
from cascade.core.prompt import MovedSpan, PreparedPrompt
from cascade.errors import InvalidRequestError, RoutingError
from cascade.policy.model import Policy, Tier, VolatilePlacement
from cascade.policy.service_tiers import service_tier_of


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why, decided before any model runs."""

    tier: str
    """The chosen tier's name."""
    model: str
    """The model (or litellm model string) the tier is called with."""
    kind: str
    """``self_hosted`` or ``api``."""
    confidence: float
    """The scorer's estimate, 0..1, that the cheaper tier's answer will be good enough."""
    reason: str
    """Why this tier, in words."""
    workload: str
    policy: str
    policy_version: str
    messages: tuple[dict[str, Any], ...]
    """The cache-friendly messages to send (stable prefix first)."""
    tools: tuple[dict[str, Any], ...] | None
    prefix_hash: str
    prefix_tokens: int
    prompt_tokens: int
    expected_output_tokens: int
    estimated_cost_usd: Decimal | None
    """Estimated cost of the call on the chosen tier (None when the tier has no price yet); on
    a self-hosted tier, at the batch the workload's latency target allows; on an API tier that
    sends the workload at a service tier (flex, priority), at that service tier's price."""
    moved: tuple[MovedSpan, ...]
    """Volatile lines moved out of the stable prefix (empty when nothing moved)."""
    spilled_from: str | None = None
    """The tier the confidence chose, when it was saturated and the request went elsewhere."""
    queued: bool = False
    """Every allowed tier is saturated: the request waits in ``tier``'s queue for a slot."""
    only_tiers: tuple[str, ...] | None = None
    """The only tiers the caller may use (its key's), narrowing the workload's for every call of
    the request, escalations and spills included; None: the workload's tiers."""
    trimmed_messages: int = 0
    """Messages the workload's history cap (``max_history_tokens``) dropped from the
    conversation, the oldest whole turns (0: none); ``messages`` is what is left."""
    trimmed_tokens: int = 0
    """Estimated tokens of those messages (``prompt_tokens`` and the cost are without them)."""
    volatile_placement: VolatilePlacement = "system"
    """Where ``moved`` lines went (the policy's ``prompt.volatile``): ``system``, a system message
    right after the stable prefix; ``user``, the start of the last user message;
    ``keep``, nowhere."""
    prefix_messages: int = 0
    """How many leading ``messages`` are the stable prefix (cache markers close it)."""
    features: tuple[float, ...] | None = None
    """The numbers the scorer saw (float models; None for a text model), kept for replay."""
    feature_version: str | None = None
    """The version of the function that made ``features``."""
    decided_tier: str | None = None
    """The tier the thresholds chose before exploration (None: exploration not considered)."""
    propensity: float | None = None
    """Probability that ``tier`` was the one chosen (:mod:`cascade.core.exploration`)."""
    explored: bool = False
    """Exploration sent the request to a cheaper tier than its thresholds chose."""

    @property
    def history_trimmed(self) -> str | None:
        """What the history cap dropped, as ``messages=4; tokens=1234`` (the
        ``x-cascade-history-trimmed`` header); None when it dropped nothing."""
        if not self.trimmed_messages:
            return None
        return f"messages={self.trimmed_messages}; tokens={self.trimmed_tokens}"

    def trimmed_fields(self) -> dict[str, int]:
        """The same as fields for the request's log line (empty when nothing was dropped)."""
        if not self.trimmed_messages:
            return {}
        return {"trimmed_messages": self.trimmed_messages, "trimmed_tokens": self.trimmed_tokens}

    def pinned(self, tier: Tier) -> Decision:
        """This decision with routing skipped: ``tier`` was asked for by its model's name."""
        return replace(
            self,
            tier=tier.name,
            model=tier.model,
            kind=tier.kind,
            reason=f"model {tier.model!r} was asked for by name; routing skipped",
            spilled_from=None,
            queued=False,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the money as a string, to keep it exact)."""
        out = asdict(self)
        cost = self.estimated_cost_usd
        out["estimated_cost_usd"] = None if cost is None else str(cost)
        return out


def decide(
    policy: Policy,
    confidence: float,
    prompt: PreparedPrompt,
    *,
    capacity: CapacityView,
    workload: str | None = None,
    max_tokens: int | None = None,
    only_tiers: Collection[str] | None = None,
) -> Decision:
    """Pick the tier for one request (see the module docstring for the rule).

    ``only_tiers``: the only tier names the caller may use (a key's), or None.
    """
    workload_name = policy.default_workload if workload is None else workload
    if workload_name not in policy.workloads:
        allowed = ", ".join(policy.workloads)
        raise RoutingError(
            f"unknown workload {workload_name!r} for policy {policy.name!r}; allowed: {allowed}"
        )
    settings = policy.workloads[workload_name]
    allowed_names = settings.tiers
    tiers = [t for t in policy.tiers if allowed_names is None or t.name in allowed_names]
    narrowed = None
    if only_tiers is not None:
        narrowed = tuple(t.name for t in policy.tiers if t.name in only_tiers)
        tiers = [t for t in tiers if t.name in narrowed]
        if not tiers:
            raise RoutingError(
                f"workload {workload_name!r} of policy {policy.name!r} may use none of the "
                f"tiers allowed here ({', '.join(sorted(only_tiers)) or 'none'})"
            )

    chosen, reason = by_confidence(tiers, confidence)
    target, note, queued = _with_capacity(chosen, tiers, policy, capacity, spill=settings.spill)
    if note:
        reason = f"{reason}; {note}"
    if allowed_names is not None:
        reason = f"{reason} (workload {workload_name} allows {', '.join(t.name for t in tiers)})"
    elif narrowed is not None:
        reason = f"{reason} (this caller may use {', '.join(t.name for t in tiers)})"

    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise InvalidRequestError(
            f"max_tokens must be a whole number of at least 1, got {max_tokens!r}", "max_tokens"
        )
    output_tokens = max_tokens if max_tokens is not None else settings.expected_output_tokens
    rates = workload_rates(target, settings, workload_name)
    reason += _service_note(target, workload_name)
    cost = None if rates is None else rates.cost(prompt.prompt_tokens, output_tokens)
    return Decision(
        tier=target.name,
        model=target.model,
        kind=target.kind,
        confidence=confidence,
        reason=reason,
        workload=workload_name,
        policy=policy.name,
        policy_version=policy.fingerprint,
        messages=prompt.messages,
        tools=prompt.tools,
        prefix_hash=prompt.prefix_hash,
        prefix_tokens=prompt.prefix_tokens,
        prefix_messages=prompt.prefix_messages,
        prompt_tokens=prompt.prompt_tokens,
        expected_output_tokens=output_tokens,
        estimated_cost_usd=cost,
        moved=prompt.volatile if prompt.moved else (),
        spilled_from=chosen.name if target is not chosen else None,
        queued=queued,
        only_tiers=narrowed,
        volatile_placement=prompt.placement,
    )


def _service_note(tier: Tier, workload: str) -> str:
    """The provider's service tier the call is sent at, for the reason (empty: the default)."""
    service = service_tier_of(tier, workload) if tier.service_tiers else None
    if service is None:
        return ""
    expected = tier.service_tiers[service].expected_latency_s
    return f"; sent at {tier.name}'s service tier {service}" + (
        "" if expected is None else f" (expected {expected:g} s)"
    )


def by_confidence(tiers: Sequence[Tier], confidence: float) -> tuple[Tier, str]:
    """The first of ``tiers`` whose threshold ``confidence`` clears (else the last), and why."""
    passed: list[str] = []
    for tier in tiers:
        if confidence >= tier.threshold:
            head = f"confidence {confidence:.3f}"
            if not passed:
                return tier, f"{head} clears {tier.name}'s threshold {tier.threshold:.3f}"
            below = " and ".join(passed)
            return tier, f"{head} is below {below}; {tier.name} ({tier.threshold:.3f}) takes it"
        passed.append(f"{tier.name}'s threshold {tier.threshold:.3f}")
    last = tiers[-1]
    return last, (
        f"confidence {confidence:.3f} is below every threshold; "
        f"{last.name} is the strongest tier allowed"
    )


def _with_capacity(
    chosen: Tier, tiers: list[Tier], policy: Policy, capacity: CapacityView, *, spill: bool
) -> tuple[Tier, str, bool]:
    """The tier to use given load, a note on what changed, and whether the request queues."""
    why = capacity.saturation(chosen)
    if why is None:
        return chosen, "", False
    full = f"{chosen.name} is saturated ({why})"
    if not spill:
        return chosen, f"{full}; this workload does not spill, so it queues", True
    allowed = {t.name for t in tiers}
    overflow = policy.tier(chosen.overflow) if chosen.overflow in allowed else None
    if overflow is not None and capacity.saturation(overflow) is None:
        return overflow, f"{full}; spilled to its overflow {overflow.name}", False
    stronger = tiers[tiers.index(chosen) + 1 :]
    for tier in stronger:
        if capacity.saturation(tier) is None:
            return tier, f"{full}; moved up to {tier.name}, the next tier with room", False
    # Every tier it may go to is busy: it waits in the first of their queues with room (a
    # tier whose engines are full has none here: no call of this proxy's will free it).
    for tier in (chosen, *([overflow] if overflow is not None else []), *stronger):
        own_full = capacity.in_flight(tier.name) >= tier.max_concurrency
        if own_full and capacity.waiting(tier.name) < tier.queue_limit:
            where = "" if tier is chosen else f" on {tier.name}"
            return tier, f"{full}; every allowed tier is saturated, so it queues{where}", True
    return chosen, f"{full}; every allowed tier is saturated and its queue full", True
