"""The values the request path hands to the ledger: one request and the attempts it made.

They are plain frozen dataclasses, cheap to build on the hot path and free of any database type,
so the router can fill them in without importing SQLAlchemy. Money is a :class:`~decimal.Decimal`
(never a float) and times are timezone-aware. Prompts are never part of a record: the ledger
keeps what a request cost and how it was routed, not what it said.

Text is bounded where a record is built, so every path to the database (the writer, the spool,
a replay) stores the same safe value: each text field has a length limit (:data:`TEXT_LIMITS`,
short enough that an index row stays far under Postgres's 2,704-byte btree limit), control
characters become a space (tab, newline, carriage return) or U+FFFD (NUL and the others, which
Postgres refuses in text), and lone surrogates (undecodable bytes) become U+FFFD. Text over its
limit keeps its beginning and ends in ``…`` and 12 hex digits of its SHA-256, so two long values
that share a beginning stay apart (two long tenants are never merged into one).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from cascade.errors import LedgerError

AttemptRole = Literal["primary", "spill", "escalation", "witness", "sample"]
AttemptOutcome = Literal["ok", "rejected", "error"]
RequestStatus = Literal["ok", "error"]

_ZERO = Decimal(0)

TEXT_LIMITS: dict[str, int] = {
    # RequestRecord
    "request_id": 128,
    "policy": 128,
    "policy_version": 64,
    "workload": 64,
    "decision_reason": 256,
    "status": 32,
    "tenant": 128,
    "key_id": 64,
    "first_tier": 128,
    "final_tier": 128,
    "prefix_hash": 128,
    "feature_version": 64,
    "decided_tier": 128,
    "arm": 32,
    "shadow_policy": 128,
    "shadow_policy_version": 64,
    "shadow_tier": 128,
    # AttemptRecord
    "tier": 128,
    "model": 256,
    "role": 32,
    "outcome": 32,
    "reason": 1000,
    "error_class": 128,
}
"""The most characters each text field of a record keeps (see the module's docstring)."""

_SPACE = re.compile("[\t\n\r]")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DIGEST_CHARS = 12


def bounded_text(value: str, limit: int) -> str:
    """``value`` as the ledger stores it: safe characters only, at most ``limit`` characters."""
    if len(value) <= limit and value.isprintable():
        return value  # the usual case: short, plain text
    text = _UNSAFE.sub("\ufffd", _SPACE.sub(" ", value))
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]
    return text[: limit - _DIGEST_CHARS - 1] + "…" + digest


def _bound_text_fields(record: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(record, name)
        if value is not None:
            bounded = bounded_text(value, TEXT_LIMITS[name])
            if bounded is not value:
                object.__setattr__(record, name, bounded)  # frozen: set once, while building


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
    """Why this tier was called: ``primary`` (the decision), ``spill`` or ``escalation``; or,
    for the verify step's evidence, ``witness`` (another tier's answer) or ``sample`` (the extra
    samples of an ``n``-sample call)."""
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
    cache_write_tokens: int = 0
    """Input tokens written to a marker-based provider's cache (a subset of ``prompt_tokens``,
    billed at the cache-write price)."""
    completion_tokens: int = 0
    """Output tokens billed."""
    cost_usd: Decimal = _ZERO
    """What the attempt cost, in US dollars (at most 10 decimal places are kept)."""
    estimated: bool = False
    """True when the usage was estimated with a tokenizer because the tier did not report it."""
    latency_ms: float = 0.0
    """Wall time of the call, in milliseconds."""
    verify_confidence: float | None = None
    """The verifier's P(this answer is good enough), when the verify step judged it."""

    def __post_init__(self) -> None:
        _check_money("AttemptRecord.cost_usd", self.cost_usd)
        if self.seq < 0:
            raise LedgerError(f"AttemptRecord.seq: must be 0 or more, got {self.seq}")
        _bound_text_fields(self, _ATTEMPT_TEXT)


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
    cache_write_tokens: int = 0
    """Input tokens written to a provider's cache, over all attempts."""
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
    key_id: str | None = None
    """Public id of the virtual key the request came with (never the key); None without one."""
    trimmed_messages: int = 0
    """Messages the workload's history cap took out of the conversation before it was sent."""
    trimmed_tokens: int = 0
    """Estimated tokens of those messages."""
    features: str | None = None
    """The numbers the scorer saw, as a JSON array (never the prompt); None for a text model or
    when nothing was scored (:mod:`cascade.model.features`)."""
    feature_version: str | None = None
    """The version of the function that made ``features`` (a model of the same one can replay)."""
    decided_tier: str | None = None
    """The tier the policy's thresholds chose, before exploration (and before any spill)."""
    propensity: float | None = None
    """Probability that the first tier was the one chosen, given the request: 1 without
    exploration; the exploration share for an explored request; 1 - share for one that could
    have been explored and was not. None when nothing was decided by score."""
    explored: bool = False
    """Exploration sent the request to a cheaper tier than its thresholds chose."""
    arm: str | None = None
    """``control`` or ``canary`` when the policy ran a canary (None: no canary)."""
    shadow_policy: str | None = None
    """A shadow policy that also decided this request (``cascade serve --shadow``): not acted on."""
    shadow_policy_version: str | None = None
    shadow_tier: str | None = None
    """The tier the shadow policy chose."""
    shadow_confidence: float | None = None
    """The shadow policy's scorer's confidence."""

    def __post_init__(self) -> None:
        _check_money("RequestRecord.cost_usd", self.cost_usd)
        if not self.request_id:
            raise LedgerError("RequestRecord.request_id: must not be empty")
        if self.created_at.tzinfo is None:
            raise LedgerError(
                f"RequestRecord.created_at: must be timezone-aware, got {self.created_at!r}"
            )
        _bound_text_fields(self, _REQUEST_TEXT)


_ATTEMPT_TEXT = ("tier", "model", "role", "outcome", "reason", "error_class")
_REQUEST_TEXT = (
    "request_id",
    "policy",
    "policy_version",
    "workload",
    "decision_reason",
    "status",
    "tenant",
    "first_tier",
    "final_tier",
    "prefix_hash",
    "key_id",
    "feature_version",
    "decided_tier",
    "arm",
    "shadow_policy",
    "shadow_policy_version",
    "shadow_tier",
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
