"""What a run is made of: one :class:`Attempt` per tier call, and how the run ended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from cascade.core.decision import Decision
from cascade.errors import TierError
from cascade.tiers.base import Usage

Role = Literal["primary", "spill", "escalation", "witness", "sample"]
"""Why a tier was called: ``primary`` (the decision), ``spill`` (a failure or saturation sent the
request on), ``escalation`` (a weaker tier's answer was rejected), or, for the verify step's
evidence, ``witness`` (another tier's answer to the same request) and ``sample`` (the extra
samples of an ``n``-sample call)."""

EVIDENCE_ROLES: frozenset[str] = frozenset(("witness", "sample"))
"""Roles of calls made for evidence, not for an answer the client could get."""
Outcome = Literal["ok", "rejected", "error"]

CLIENT_GONE = "client_gone"
"""``Attempt.error_class`` of a call the client stopped waiting for: it went away before the
tier answered, or before a relayed stream ended."""


@dataclass(frozen=True)
class Attempt:
    """One call to one tier."""

    tier: str
    model: str
    role: Role
    outcome: Outcome
    reason: str | None
    """Why the answer was rejected, or how the call failed."""
    error_class: str | None
    usage: Usage | None
    cost_usd: Decimal
    latency_s: float
    verify_confidence: float | None = None
    """The verifier's P(this answer is good enough), when the verify step judged it."""

    @property
    def evidence(self) -> bool:
        """True for a witness or sample call: evidence for the verify step."""
        return self.role in EVIDENCE_ROLES


def total_cost(attempts: Sequence[Attempt]) -> Decimal:
    """All money spent on a request: every attempt, wasted ones too."""
    return sum((a.cost_usd for a in attempts), Decimal(0))


def describe_attempts(attempts: Sequence[Attempt]) -> str:
    """Attempts in one line: ``small:rejected(length),medium:error(timeout),big:ok``; evidence
    calls by their role: ``small:rejected(verify),small:sample,medium:witness,big:ok``."""
    parts = []
    for attempt in attempts:
        if attempt.evidence:
            why = attempt.error_class
            parts.append(f"{attempt.tier}:{attempt.role}" + (f"({why})" if why else ""))
            continue
        why = attempt.error_class or (attempt.reason or "").split(":", 1)[0]
        parts.append(f"{attempt.tier}:{attempt.outcome}" + (f"({why})" if why else ""))
    return ",".join(parts)


@dataclass(frozen=True)
class Completion:
    """A finished request: the answer the client gets, and everything it took."""

    request_id: str
    decision: Decision
    body: dict[str, Any]
    tier: str
    model: str
    attempts: tuple[Attempt, ...]

    @property
    def cost_usd(self) -> Decimal:
        """All money spent on the request: every attempt, wasted ones too."""
        return total_cost(self.attempts)

    @property
    def evidence_cost_usd(self) -> Decimal:
        """What the verify step's witnesses and samples cost."""
        return total_cost([a for a in self.attempts if a.evidence])

    @property
    def verify_confidence(self) -> float | None:
        """The verifier's confidence in the last answer it judged (None: nothing was judged)."""
        judged = [a.verify_confidence for a in self.attempts if a.verify_confidence is not None]
        return judged[-1] if judged else None


class UpstreamError(TierError):
    """No tier produced an answer; ``attempts`` says what was tried."""

    def __init__(self, last: TierError, attempts: Sequence[Attempt]) -> None:
        super().__init__(
            last.tier,
            last.kind,
            str(last).split(": ", 2)[-1],
            last.status,
            retry_after_s=last.retry_after_s,
        )
        self.attempts = tuple(attempts)
