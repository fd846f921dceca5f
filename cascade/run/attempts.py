"""What a run is made of: one :class:`Attempt` per tier call, and how the run ended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from cascade.core.decision import Decision
from cascade.errors import TierError
from cascade.tiers.base import Usage

Role = Literal["primary", "spill", "escalation"]
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


def total_cost(attempts: Sequence[Attempt]) -> Decimal:
    """All money spent on a request: every attempt, wasted ones too."""
    return sum((a.cost_usd for a in attempts), Decimal(0))


def describe_attempts(attempts: Sequence[Attempt]) -> str:
    """Attempts in one line: ``small:rejected(length),medium:error(timeout),big:ok``."""
    parts = []
    for attempt in attempts:
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
