"""The headers of the chat route: the few request headers the proxy reads, and what every answer
says about its routing (``x-cascade-*``)."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from starlette.types import Scope

from cascade.core.decision import Decision
from cascade.run.attempts import Completion, describe_attempts
from cascade.server.openai_format import BadRequestError

_WANTED = frozenset(
    {
        b"authorization",
        b"content-length",
        b"content-type",
        b"x-cascade-tenant",
        b"x-cascade-workload",
    }
)
_CENT_FRACTION = Decimal("1e-10")


def request_headers(scope: Scope) -> dict[str, str]:
    """The few request headers the proxy reads (ASGI servers send names in lower case); one
    of them sent twice is refused (400): which copy counts would be a guess an attacker picks."""
    raw: Iterable[tuple[bytes, bytes]] = scope["headers"]
    found = {name.decode(): value.decode("latin-1") for name, value in raw if name in _WANTED}
    if len(found) < sum(1 for name, _ in raw if name in _WANTED):
        seen = [name.decode() for name, _ in raw if name in _WANTED]
        twice = next(name for name in seen if seen.count(name) > 1)
        raise BadRequestError(
            400, f"{twice}: sent more than once; send it once", code="duplicate_header"
        )
    return found


def answer_headers(tier: str, model: str, decision: Decision, request_id: str) -> dict[str, str]:
    """What every answer says about its routing (a stream can say no more before it starts)."""
    headers = {
        "x-cascade-tier": tier,
        "x-cascade-model": model,
        "x-cascade-confidence": f"{decision.confidence:.4f}",
        "x-cascade-request-id": request_id,
    }
    if (trimmed := decision.history_trimmed) is not None:  # never silently
        headers["x-cascade-history-trimmed"] = trimmed
    return headers


def completion_headers(completion: Completion) -> dict[str, str]:
    headers = answer_headers(
        completion.tier, completion.model, completion.decision, completion.request_id
    )
    headers["x-cascade-cost-usd"] = f"{completion.cost_usd.quantize(_CENT_FRACTION):f}"
    headers["x-cascade-attempts"] = describe_attempts(completion.attempts)
    if (confidence := completion.verify_confidence) is not None:
        headers["x-cascade-verify-confidence"] = f"{confidence:.4f}"
    if any(a.evidence for a in completion.attempts):
        evidence = completion.evidence_cost_usd.quantize(_CENT_FRACTION)
        headers["x-cascade-evidence-cost-usd"] = f"{evidence:f}"
    if completion.decision.spilled_from is not None:
        headers["x-cascade-spilled-from"] = completion.decision.spilled_from
    return headers
