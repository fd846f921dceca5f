"""Exploration: a configured share of requests goes to a tier other than the one the thresholds
chose, with the probability of each choice recorded.

A router that always follows its thresholds never learns what another tier would have done on
the prompts it sends elsewhere: the logged traffic holds no such outcome, and any replay of a
policy that routes differently is biased. The policy's ``learning`` section sets two shares:

- ``explore``: of the scored requests whose thresholds chose a tier above the cheapest one they
  may use, this share goes to one of the cheaper tiers instead (each with room equally likely);
  its answer is checked, verified and escalated like any other. It shows what a policy with
  lower thresholds would get.
- ``explore_up`` (default 0): this share of the requests with a stronger tier above the chosen
  one goes to one of those instead, which shows what a policy sending more traffic up would get,
  at the price of the stronger tier's calls.

Each decision records the probability of the tier it took, its **propensity**: the share over
the number of tiers it was drawn among when explored, 1 minus the shares that applied when the
thresholds' tier was kept, 1 when no exploration applied (no other tier with room, or a decision
that spilled or queued: exploration never takes a full tier). ``cascade replay`` weighs each
logged outcome by ``1 / propensity`` (inverse propensity scoring).
"""

from __future__ import annotations

from dataclasses import replace

from cascade.core.capacity import CapacityView
from cascade.core.decision import Decision, decide
from cascade.core.prompt import PreparedPrompt
from cascade.policy.model import Policy, Tier

__all__ = ["explore"]


def explore(
    policy: Policy,
    decision: Decision,
    prompt: PreparedPrompt,
    draw: float,
    *,
    capacity: CapacityView,
    max_tokens: int | None,
) -> Decision:
    """``decision`` with exploration applied: ``draw`` is uniform in [0, 1) (the module docstring
    has the rule); ``prompt`` and ``max_tokens`` are those ``decision`` was made with."""
    # the thresholds' tier, before any spill (a spilled request took the tier it spilled to)
    decided = decision.spilled_from or decision.tier
    kept = replace(decision, decided_tier=decided, propensity=1.0)
    down, up = policy.learning.explore, policy.learning.explore_up
    if (down <= 0.0 and up <= 0.0) or decision.spilled_from is not None or decision.queued:
        return kept
    others = _others(policy, decision, capacity)
    order = [t.name for t in policy.tiers]
    at = order.index(decision.tier)
    cheaper = [t for t in others if order.index(t.name) < at] if down > 0 else []
    stronger = [t for t in others if order.index(t.name) > at] if up > 0 else []
    stay = 1.0 - (down if cheaper else 0.0) - (up if stronger else 0.0)
    if draw < down and cheaper:
        tier, propensity = cheaper[int(draw / down * len(cheaper))], down / len(cheaper)
    elif down <= draw < down + up and stronger:
        index = int((draw - down) / up * len(stronger))
        tier, propensity = stronger[index], up / len(stronger)
    else:
        return replace(kept, propensity=stay)
    moved = decide(
        policy,
        1.0,  # clears the only tier left
        prompt,
        capacity=capacity,
        workload=decision.workload,
        max_tokens=max_tokens,
        only_tiers=(tier.name,),
    )
    return replace(
        moved,
        confidence=decision.confidence,
        reason=(
            f"explored: sent to {tier.name} with probability {propensity:.3g} although the "
            f"thresholds chose {decision.tier} ({decision.reason})"
        ),
        only_tiers=decision.only_tiers,  # escalations and spills go where they would have
        decided_tier=decision.tier,
        propensity=propensity,
        explored=True,
    )


def _others(policy: Policy, decision: Decision, capacity: CapacityView) -> list[Tier]:
    """The tiers the request may use besides its own, each with room now."""
    allowed = policy.workloads[decision.workload].tiers
    narrowed = decision.only_tiers
    return [
        t
        for t in policy.tiers
        if t.name != decision.tier
        and (allowed is None or t.name in allowed)
        and (narrowed is None or t.name in narrowed)
        and capacity.saturation(t) is None
    ]
