"""The ledger's tables: ``requests`` (one row per client request), ``attempts`` (one per call),
``api_keys`` (the proxy's virtual keys: a keyed hash of each secret, never the secret),
``budget_periods`` and ``budget_leases`` (each key's spend per period, and the blocks of it that
workers hold: see :mod:`cascade.ledger.budgets`), and the Batch API's ``batch_files``,
``batches`` and ``batch_requests`` (:mod:`cascade.ledger.batches`).

Money is exact: ``NUMERIC(18, 10)`` on Postgres. SQLite has no exact decimal type (a NUMERIC column
there stores a binary float), so on SQLite money is kept as the decimal's text and turned back into
a :class:`~decimal.Decimal` on read; SQLite's ``SUM()`` still adds such text as numbers. Timestamps
are stored in UTC and always read back timezone-aware, whatever the database.

The constraint naming convention makes every index and constraint name predictable, so migrations
can name what they drop and ``alembic check`` compares like with like.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MONEY_PRECISION = 18
MONEY_SCALE = 10


class Money(TypeDecorator[Decimal]):
    """US dollars as an exact decimal: ``NUMERIC(18, 10)``, or its text on SQLite."""

    impl = Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            # Quantize like NUMERIC(18, 10) would, so both databases give back the same amount.
            return str(value.quantize(Decimal(1).scaleb(-MONEY_SCALE)))
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return value
        # str from a stored row; int or float from an SQLite aggregate such as SUM().
        return Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp with time zone, stored in UTC and read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores timezone-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite keeps no zone: what it stored was UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables, with the naming convention on its metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Request(Base):
    """One client request (see :class:`cascade.ledger.records.RequestRecord` for each column)."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    tenant: Mapped[str | None] = mapped_column(String())
    policy: Mapped[str] = mapped_column(String())
    policy_version: Mapped[str] = mapped_column(String())
    workload: Mapped[str] = mapped_column(String())
    confidence: Mapped[float | None] = mapped_column(Float)
    decision_reason: Mapped[str] = mapped_column(String())
    first_tier: Mapped[str | None] = mapped_column(String())
    final_tier: Mapped[str | None] = mapped_column(String())
    status: Mapped[str] = mapped_column(String())
    http_status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    prefix_hash: Mapped[str | None] = mapped_column(String())
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(Money())
    useful_tokens: Mapped[int] = mapped_column(Integer)
    useless: Mapped[bool] = mapped_column(Boolean)
    estimated: Mapped[bool] = mapped_column(Boolean)
    stream: Mapped[bool] = mapped_column(Boolean)
    key_id: Mapped[str | None] = mapped_column(String())
    trimmed_messages: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    trimmed_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    """The public id of the virtual key the request came with (None: no key)."""
    features: Mapped[str | None] = mapped_column(String())
    feature_version: Mapped[str | None] = mapped_column(String())
    decided_tier: Mapped[str | None] = mapped_column(String())
    propensity: Mapped[float | None] = mapped_column(Float)
    explored: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    arm: Mapped[str | None] = mapped_column(String())
    shadow_policy: Mapped[str | None] = mapped_column(String())
    shadow_policy_version: Mapped[str | None] = mapped_column(String())
    shadow_tier: Mapped[str | None] = mapped_column(String())
    shadow_confidence: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_tenant_created_at", "tenant", "created_at"),
        Index("ix_requests_key_id_created_at", "key_id", "created_at"),
        Index("ix_requests_policy_created_at", "policy", "created_at"),
        Index("ix_requests_final_tier_created_at", "final_tier", "created_at"),
    )


class Attempt(Base):
    """One call to one tier (see :class:`cascade.ledger.records.AttemptRecord`)."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        String(), ForeignKey("requests.request_id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    tier: Mapped[str] = mapped_column(String())
    model: Mapped[str] = mapped_column(String())
    role: Mapped[str] = mapped_column(String())
    outcome: Mapped[str] = mapped_column(String())
    reason: Mapped[str | None] = mapped_column(String())
    error_class: Mapped[str | None] = mapped_column(String())
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(Money())
    estimated: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    verify_confidence: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("request_id", "seq"),
        Index("ix_attempts_tier", "tier"),
    )


class ApiKey(Base):
    """One virtual key: its public id, the keyed hash of its secret, its tenant and its limits.

    ``updated_at`` changes with every change to the row (create, revoke, rotate): the proxy polls
    the rows changed since the newest it has seen, so a revoked key stops working within a second
    on every worker. ``tiers`` and ``policies`` are comma-separated names; ``None`` allows all.
    """

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(), primary_key=True)
    hash: Mapped[str] = mapped_column(String())
    tenant: Mapped[str] = mapped_column(String())
    name: Mapped[str | None] = mapped_column(String())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    budget_usd: Mapped[Decimal | None] = mapped_column(Money())
    budget_period: Mapped[str | None] = mapped_column(String())
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    tiers: Mapped[str | None] = mapped_column(String())
    policies: Mapped[str | None] = mapped_column(String())
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_api_keys_updated_at", "updated_at"),)


class BudgetPeriod(Base):
    """One key's budget in one period (a UTC day or month), in nano-dollars (whole numbers, so
    that sums in SQL are exact on SQLite too). ``settled + leased <= limit`` always holds."""

    __tablename__ = "budget_periods"

    key_id: Mapped[str] = mapped_column(String(), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    limit_nusd: Mapped[int] = mapped_column(BigInteger)
    settled_nusd: Mapped[int] = mapped_column(BigInteger)
    leased_nusd: Mapped[int] = mapped_column(BigInteger)
    self_hosted_nusd: Mapped[int] = mapped_column(BigInteger)


class BudgetLease(Base):
    """A block of one key's budget that one worker may spend until ``expires_at``."""

    __tablename__ = "budget_leases"

    lease_id: Mapped[str] = mapped_column(String(), primary_key=True)
    key_id: Mapped[str] = mapped_column(String())
    period_start: Mapped[datetime] = mapped_column(UtcDateTime())
    worker: Mapped[str] = mapped_column(String())
    amount_nusd: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (Index("ix_budget_leases_expires_at", "expires_at"),)


class RateWindow(Base):
    """One key's use of one minute (UTC): requests and tokens leased out to workers so far
    (:mod:`cascade.ledger.rate_windows`); never more than the key's ``rpm`` and ``tpm``."""

    __tablename__ = "rate_windows"

    key_id: Mapped[str] = mapped_column(String(), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)


class BatchFile(Base):
    """A file of the Batch API: an uploaded JSONL of requests, or a batch's output or errors.

    The content lives in the database, so every replica serves it and it outlives any of them.
    """

    __tablename__ = "batch_files"

    id: Mapped[str] = mapped_column(String(), primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String())
    key_id: Mapped[str | None] = mapped_column(String())
    purpose: Mapped[str] = mapped_column(String())
    filename: Mapped[str] = mapped_column(String())
    size: Mapped[int] = mapped_column("bytes", Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    content: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_batch_files_tenant_created_at", "tenant", "created_at"),)


class Batch(Base):
    """One batch job, in OpenAI's lifecycle (``status``: in_progress, finalizing, completed,
    failed, expired, cancelling, cancelled). ``metadata_json`` and ``only_tiers`` are JSON text
    and comma-separated tier names (the creating key's tiers; None: all)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(), primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String())
    key_id: Mapped[str | None] = mapped_column(String())
    input_file_id: Mapped[str] = mapped_column(String())
    endpoint: Mapped[str] = mapped_column(String())
    completion_window: Mapped[str] = mapped_column(String())
    status: Mapped[str] = mapped_column(String())
    metadata_json: Mapped[str | None] = mapped_column(String())
    only_tiers: Mapped[str | None] = mapped_column(String())
    total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    in_progress_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finalizing_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancelling_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    output_file_id: Mapped[str | None] = mapped_column(String())
    error_file_id: Mapped[str | None] = mapped_column(String())

    __table_args__ = (
        Index("ix_batches_tenant_created_at", "tenant", "created_at"),
        Index("ix_batches_status", "status"),
    )


class BatchRequest(Base):
    """One line of a batch: queued, claimed (by ``claimed_by`` until ``claimed_until``, a
    lease), done or failed. ``id`` is also its ``request_id`` in the ledger."""

    __tablename__ = "batch_requests"

    id: Mapped[str] = mapped_column(String(), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(), ForeignKey("batches.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String())
    body: Mapped[str] = mapped_column(String())
    status: Mapped[str] = mapped_column(String())
    claimed_by: Mapped[str | None] = mapped_column(String())
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(String())

    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id"),
        Index("ix_batch_requests_status_claimed_until", "status", "claimed_until"),
        Index("ix_batch_requests_batch_id_line", "batch_id", "line"),
    )


metadata = Base.metadata
"""The ledger's :class:`~sqlalchemy.MetaData`: what the migrations must produce."""
