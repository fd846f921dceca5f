"""Exploration: a configured share of requests tries the cheapest tier the thresholds passed over.

A router that always follows its thresholds never learns what a cheaper tier would have done on
the prompts it sends up: the logged traffic holds no such outcome, and any replay of a cheaper
policy is biased. With ``learning.explore = p`` (the policy), each scored request whose thresholds
chose a tier above the cheapest one it may use goes to that cheapest tier instead with
probability ``p`` -- its answer is checked, verified and escalated like any other -- and the
decision records the probability of the choice it made, its **propensity**: ``p`` when explored,
``1 - p`` when it could have been and was not, 1 when exploration did not apply (the cheapest
tier was chosen anyway, or it is full, or the decision spilled or queued). ``cascade replay``
weighs each logged outcome by ``1 / propensity`` (inverse propensity scoring).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from cascade.core.capacity import CapacityView
from cascade.core.decision import Decision, decide
from cascade.core.prompt import PreparedPrompt
from cascade.policy.model import Policy

__all__ = ["explore"]


def explore(
    policy: Policy,
    decision: Decision,
    prompt: PreparedPrompt,
    draw: float,
    *,
    capacity: CapacityView,
    workload: str | None,
    max_tokens: int | None,
    only_tiers: Collection[str] | None,
) -> Decision:
    """``decision`` with its exploration applied: ``draw`` is uniform in [0, 1) (the module
    docstring has the rule); the other arguments are those ``decision`` was made with."""
    chosen = replace(decision, decided_tier=decision.tier, propensity=1.0)
    share = policy.learning.explore
    if share <= 0.0 or decision.spilled_from is not None or decision.queued:
        return chosen
    # Confidence 1 clears every threshold: the cheapest tier the request may use, with room.
    cheapest = decide(
        policy,
        1.0,
        prompt,
        capacity=capacity,
        workload=workload,
        max_tokens=max_tokens,
        only_tiers=only_tiers,
    )
    if cheapest.spilled_from is not None or cheapest.queued or cheapest.tier == decision.tier:
        return chosen
    if draw >= share:
        return replace(chosen, propensity=1.0 - share)
    return replace(
        cheapest,
        confidence=decision.confidence,
        reason=(
            f"explored: sent to {cheapest.tier} (a share of {share:g} of requests is) although "
            f"the thresholds chose {decision.tier} ({decision.reason})"
        ),
        decided_tier=decision.tier,
        propensity=share,
        explored=True,
    )
