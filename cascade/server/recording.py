"""What the proxy writes to the ledger for each routed request: the request and its attempts.

Requests refused before routing (malformed JSON, unknown model, over the size limit) reach no
tier and cost nothing; they are answered and logged, but not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from cascade.core.decision import Decision
from cascade.ledger import AttemptRecord, RequestRecord
from cascade.run.attempts import Attempt
from cascade.server.shadow import ShadowDecision


def attempt_records(attempts: Sequence[Attempt]) -> tuple[AttemptRecord, ...]:
    """One ledger row per tier call, in call order."""
    return tuple(
        AttemptRecord(
            seq=seq,
            tier=a.tier,
            model=a.model,
            role=a.role,
            outcome=a.outcome,
            reason=a.reason,
            error_class=a.error_class,
            prompt_tokens=a.usage.prompt_tokens if a.usage else 0,
            cached_tokens=a.usage.cached_tokens if a.usage else 0,
            cache_write_tokens=a.usage.cache_write_tokens if a.usage else 0,
            completion_tokens=a.usage.completion_tokens if a.usage else 0,
            cost_usd=a.cost_usd,
            estimated=bool(a.usage and a.usage.estimated),
            latency_ms=round(a.latency_s * 1000, 3),
            verify_confidence=a.verify_confidence,
        )
        for seq, a in enumerate(attempts)
    )


def request_record(
    *,
    request_id: str,
    decision: Decision,
    attempts: Sequence[Attempt],
    final_tier: str | None,
    http_status: int,
    latency_ms: float,
    tenant: str | None,
    stream: bool,
    key_id: str | None = None,
    arm: str | None = None,
    shadow: ShadowDecision | None = None,
) -> RequestRecord:
    """The request's row: totals over every attempt; useful tokens from the delivered answer;
    ``arm``: the canary arm the request took, when its policy runs a canary;
    ``shadow``: what a shadow policy decided for it, beside the live decision."""
    delivered = attempts[-1] if attempts and attempts[-1].outcome == "ok" else None
    if http_status == 200 and delivered is None and attempts:
        delivered = attempts[-1]  # out of attempts: the last rejected answer was delivered
    prompt = cached = written = completion = 0
    cost = Decimal(0)
    estimated = False
    for attempt in attempts:  # one loop, not a sum() per column: this runs for every request
        cost += attempt.cost_usd
        if (usage := attempt.usage) is not None:
            prompt += usage.prompt_tokens
            cached += usage.cached_tokens
            written += usage.cache_write_tokens
            completion += usage.completion_tokens
            estimated = estimated or usage.estimated
    return RequestRecord(
        request_id=request_id,
        tenant=tenant,
        policy=decision.policy,
        policy_version=decision.policy_version,
        workload=decision.workload,
        confidence=decision.confidence,
        decision_reason=decision.reason,
        first_tier=decision.tier,
        final_tier=final_tier,
        status="ok" if http_status == 200 else "error",
        http_status=http_status,
        latency_ms=round(latency_ms, 3),
        prefix_hash=decision.prefix_hash,
        prompt_tokens=prompt,
        cached_tokens=cached,
        cache_write_tokens=written,
        completion_tokens=completion,
        cost_usd=cost,
        useful_tokens=delivered.usage.completion_tokens if delivered and delivered.usage else 0,
        estimated=estimated,
        stream=stream,
        key_id=key_id,
        trimmed_messages=decision.trimmed_messages,
        trimmed_tokens=decision.trimmed_tokens,
        features=None if decision.features is None else features_text(decision.features),
        feature_version=decision.feature_version,
        decided_tier=decision.decided_tier,
        propensity=decision.propensity,
        explored=decision.explored,
        arm=arm,
        shadow_policy=None if shadow is None else shadow.policy,
        shadow_policy_version=None if shadow is None else shadow.policy_version,
        shadow_tier=None if shadow is None else shadow.tier,
        shadow_confidence=None if shadow is None else shadow.confidence,
    )


def features_text(row: tuple[float, ...]) -> str:
    """The scorer's numbers as the ledger keeps them: a JSON array, each float32 value in the
    nine significant digits that read back to the same float32."""
    return "[" + ",".join(format(v, ".9g") for v in row) + "]"
