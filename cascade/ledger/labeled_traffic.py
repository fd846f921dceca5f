"""The ledger's traffic as labeled-traffic rows (the format of ``cascade.training.traffic``).

What ``cascade export`` writes, for ``cascade train`` to learn from the requests the proxy routed.
The ledger keeps no prompts, but it keeps the numbers the scorer saw (``features``, with their
``feature_version``) and the probability of the routing choice (``propensity``, with
``explored``): ``cascade train`` fits a model of the same feature version on the numbers alone,
each row weighted by 1 / propensity (:mod:`cascade.ledger.learning_facts` reads them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from cascade.core.pricing import Rates
from cascade.ledger.learning_facts import LearningFacts
from cascade.ledger.queries import AttemptFacts, RequestFacts


def label_requests(
    facts: Iterable[RequestFacts],
    *,
    last_tier: str,
    frontier_rates: Rates | None,
    prompts: Mapping[str, str] | None = None,
    learning: Mapping[str, LearningFacts] | None = None,
) -> list[dict[str, Any]]:
    """The requests that teach the router something, as labeled-traffic rows.

    The weak tier is the request's first tier, the strong one the policy's ``last_tier``:

    - escalated (the first tier's answer was rejected, by a check or by the verify step):
      ``weak_score 0, strong_score 1``;
    - marked useless and answered below ``last_tier``: ``weak_score 0, strong_score 1`` (assumes
      the frontier would have done better: the ledger cannot know);
    - answered by the first tier, no escalation, status ok, not useless: ``1, 1``.

    Anything else is skipped: requests whose first tier is ``last_tier`` (no weak outcome to learn
    from), errors, spills, useless answers from the frontier. ``weak_cost_usd`` is the first
    attempt's cost; ``strong_cost_usd`` the cost of the attempt on ``last_tier`` when there was
    one, else the counterfactual at ``frontier_rates`` (None when the tier has no price). The
    ledger never stores prompts: ``prompt`` comes from ``prompts`` (request id → prompt), else
    None.

    Each row also says where its label came from (``label_source``: ``verify`` when the verify
    step rejected the first answer, ``check`` when a check did, ``escalation`` when a later
    answer was, ``feedback`` for a useless answer, ``answered`` for a kept one) and the
    verifier's ``verify_confidence`` in the first answer (None when not verified); with
    ``learning`` (request id → its learning columns): ``features`` (a list of numbers, or
    None), ``feature_version``, ``decided_tier``, ``propensity`` and ``explored``. A row with
    features and no prompt trains as it is.
    """
    rows: list[dict[str, Any]] = []
    for fact in facts:
        scores = _label(fact, last_tier)
        if scores is None:
            continue
        answers = [a for a in fact.attempts if not a.evidence]
        strong = next((a.cost_usd for a in answers if a.tier == last_tier), None)
        if strong is None and frontier_rates is not None:
            strong = fact.counterfactual(frontier_rates)
        kept = (learning or {}).get(fact.request_id)
        rows.append(
            {
                "id": fact.request_id,
                "task": fact.policy,
                "prompt": (prompts or {}).get(fact.request_id),
                "weak_score": scores[0],
                "strong_score": scores[1],
                "weak_cost_usd": float(answers[0].cost_usd + _evidence_cost(fact)),
                "strong_cost_usd": None if strong is None else float(strong),
                "weak_tier": answers[0].tier,
                "strong_tier": last_tier,
                "label_source": _source(fact, answers[0]),
                "verify_confidence": answers[0].verify_confidence,
                "features": None if kept is None or kept.features is None else list(kept.features),
                "feature_version": None if kept is None else kept.feature_version,
                "decided_tier": None if kept is None else kept.decided_tier,
                "propensity": None if kept is None else kept.propensity,
                "explored": False if kept is None else kept.explored,
            }
        )
    return rows


def _source(fact: RequestFacts, first: AttemptFacts) -> str:
    """Which outcome gave the row its label."""
    if first.outcome == "rejected":
        return "verify" if (first.reason or "").startswith("verify:") else "check"
    if fact.has_role("escalation"):
        return "escalation"  # a later answer was rejected (the first one failed and spilled)
    return "feedback" if fact.useless else "answered"


def _evidence_cost(fact: RequestFacts) -> Decimal:
    return sum((a.cost_usd for a in fact.attempts if a.evidence), Decimal(0))


def _label(fact: RequestFacts, last_tier: str) -> tuple[float, float] | None:
    answers = [a for a in fact.attempts if not a.evidence]
    if not answers or answers[0].tier == last_tier:
        return None
    if fact.has_role("escalation"):
        return (0.0, 1.0)
    if fact.status != "ok" or fact.has_role("spill"):
        return None
    if fact.useless:
        return (0.0, 1.0) if fact.final_tier != last_tier else None
    if fact.final_tier == answers[0].tier:
        return (1.0, 1.0)
    return None


def prompts_by_id(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{request_id: prompt}`` from rows with ``request_id`` (or ``id``) and ``prompt``."""
    return {
        str(row.get("request_id", row.get("id"))): row["prompt"]
        for row in rows
        if isinstance(row.get("prompt"), str)
    }
