"""The values the request path hands to the ledger: one request and the attempts it made.

They are plain frozen dataclasses, cheap to build on the hot path and free of any database type,
so the router can fill them in without importing SQLAlchemy. Money is a :class:`~decimal.Decimal`
(never a float) and times are timezone-aware. Prompts are never part of a record: the ledger
keeps what a request cost and how it was routed, not what it said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from cascade.errors import LedgerError

AttemptRole = Literal["primary", "spill", "escalation"]
AttemptOutcome = Literal["ok", "rejected", "error"]
RequestStatus = Literal["ok", "error"]

_ZERO = Decimal(0)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call to one tier, in the order the request made them."""

    seq: int
    """Position of the attempt in its request, 0 for the first; with the request id, its key."""
    tier: str
    """Name of the tier called (as the policy names it)."""
    model: str
    """Model the tier was asked for (the concrete name sent upstream)."""
    role: AttemptRole
    """Why this tier was called: ``primary`` (the decision), ``spill`` or ``escalation``."""
    outcome: AttemptOutcome
    """``ok`` (answer kept), ``rejected`` (answered, verification escalated) or ``error``."""
    reason: str | None = None
    """Why the attempt was rejected or failed (``length_cut``, ``invalid_json``, …), else None."""
    error_class: str | None = None
    """For ``error``: the kind of failure (``timeout``, ``rate_limited``, …), else None."""
    prompt_tokens: int = 0
    """Input tokens billed, cached ones included."""
    cached_tokens: int = 0
    """Input tokens served from the prefix cache (a subset of ``prompt_tokens``)."""
    completion_tokens: int = 0
    """Output tokens billed."""
    cost_usd: Decimal = _ZERO
    """What the attempt cost, in US dollars (at most 10 decimal places are kept)."""
    estimated: bool = False
    """True when the usage was estimated with a tokenizer because the tier did not report it."""
    latency_ms: float = 0.0
    """Wall time of the call, in milliseconds."""

    def __post_init__(self) -> None:
        _check_money("AttemptRecord.cost_usd", self.cost_usd)
        if self.seq < 0:
            raise LedgerError(f"AttemptRecord.seq: must be 0 or more, got {self.seq}")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One client request: how it was routed, how it ended and what it cost in all."""

    request_id: str
    """Unique id of the request (``x-cascade-request-id``); writing it twice stores it once."""
    policy: str
    """Name of the policy that routed the request."""
    policy_version: str
    """Version (or content hash) of that policy, so a report can compare policy revisions."""
    workload: str
    """Workload class the request ran as (``interactive``, ``batch``, …)."""
    decision_reason: str
    """Why the first tier was chosen (threshold cleared, pass-through model, budget, …)."""
    status: RequestStatus
    """``ok`` when the client got an answer, ``error`` otherwise."""
    http_status: int
    """HTTP status returned to the client."""
    created_at: datetime = field(default_factory=_utc_now)
    """When the request arrived (timezone-aware; stored in UTC)."""
    tenant: str | None = None
    """Tenant the request is billed to, when the policy names tenants."""
    confidence: float | None = None
    """The scorer's confidence, 0..1; None when no score was needed (a concrete model asked)."""
    first_tier: str | None = None
    """Tier of the first attempt; None when the request failed before any tier was called."""
    final_tier: str | None = None
    """Tier whose answer went to the client; None when no tier answered."""
    latency_ms: float = 0.0
    """Wall time from arrival to the last byte sent, in milliseconds."""
    prefix_hash: str | None = None
    """Hash of the prompt's stable prefix (for prefix-cache reports); never the prompt itself."""
    prompt_tokens: int = 0
    """Input tokens over all attempts."""
    cached_tokens: int = 0
    """Cached input tokens over all attempts."""
    completion_tokens: int = 0
    """Output tokens over all attempts, wasted ones included."""
    cost_usd: Decimal = _ZERO
    """All money spent on the request (every attempt), in US dollars."""
    useful_tokens: int = 0
    """Output tokens delivered to the client and not marked useless (0 once marked)."""
    useless: bool = False
    """Set by feedback: the client said the answer was of no use."""
    estimated: bool = False
    """True when any attempt's usage was estimated."""
    stream: bool = False
    """True when the answer was streamed."""

    def __post_init__(self) -> None:
        _check_money("RequestRecord.cost_usd", self.cost_usd)
        if not self.request_id:
            raise LedgerError("RequestRecord.request_id: must not be empty")
        if self.created_at.tzinfo is None:
            raise LedgerError(
                f"RequestRecord.created_at: must be timezone-aware, got {self.created_at!r}"
            )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A request with its attempts: the unit the writer batches, spools and replays."""

    request: RequestRecord
    attempts: tuple[AttemptRecord, ...] = ()

    def __post_init__(self) -> None:
        seqs = [attempt.seq for attempt in self.attempts]
        if len(set(seqs)) != len(seqs):
            raise LedgerError(
                f"request {self.request.request_id!r}: attempt seq values repeat: {seqs}"
            )


def _check_money(name: str, value: object) -> None:
    # A float here would already have lost cents; refuse it instead of storing a rounded amount.
    if not isinstance(value, Decimal):
        raise LedgerError(f"{name}: must be a decimal.Decimal, got {type(value).__name__}")
    if not value.is_finite():
        raise LedgerError(f"{name}: must be a finite amount, got {value}")
