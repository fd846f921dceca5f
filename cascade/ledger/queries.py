"""What the reports read from the ledger: every query of ``cascade report`` and ``cascade export``.

Two queries read a window (one per table) into :class:`RequestFacts`; everything after is pure
Python over them (:mod:`cascade.ledger.reports`, :mod:`cascade.ledger.labeled_traffic`), so money
stays an exact :class:`~decimal.Decimal` on SQLite (where it is stored as text) as on Postgres.
Two more read the keys that have a budget and their budget in the current period
(:class:`KeyBudget`, for :mod:`cascade.ledger.budget_report`); never a key's hash.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.core.pricing import Rates
from cascade.ledger.budgets import PERIODS, PeriodSpend, period_start, usd
from cascade.ledger.database import run_with_engine
from cascade.ledger.models import ApiKey, Attempt, BudgetPeriod, Request

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """The parts of one attempt the reports use."""

    seq: int
    tier: str
    role: str
    outcome: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    reason: str | None = None
    """Why the answer was rejected, or how the call failed."""
    error_class: str | None = None
    verify_confidence: float | None = None
    """The verifier's confidence in this answer, when the verify step judged it."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's cache (a premium over plain input)."""

    @property
    def evidence(self) -> bool:
        """A witness or sample call of the verify step (not an answer the client could get)."""
        return self.role in ("witness", "sample")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """One ledger request with its attempts (in seq order), as the reports see it."""

    request_id: str
    created_at: datetime
    tenant: str | None
    policy: str
    first_tier: str | None
    final_tier: str | None
    status: str
    prefix_hash: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    useful_tokens: int
    useless: bool
    key_id: str | None
    """The public id of the request's virtual key (None: no key)."""
    attempts: tuple[AttemptFacts, ...]
    trimmed_messages: int = 0
    """Messages the workload's history cap dropped before the request was sent."""
    trimmed_tokens: int = 0
    """Estimated tokens of those messages."""
    workload: str = ""
    """The workload class the request was routed as."""
    confidence: float | None = None
    """The scorer's confidence (None: routing was skipped, a model asked for by name)."""
    latency_ms: float = 0.0
    """From the request's arrival to its answer: ``created_at`` is when it was recorded, at the
    end, so it arrived ``latency_ms`` earlier (:attr:`arrived_at`)."""

    @property
    def arrived_at(self) -> datetime:
        """When the proxy received the request."""
        return self.created_at - timedelta(milliseconds=self.latency_ms)

    def has_role(self, role: str) -> bool:
        """True when any attempt was made in this role (``escalation``, ``spill``)."""
        return any(a.role == role for a in self.attempts)

    def counterfactual(self, rates: Rates) -> Decimal:
        """What this request would have cost on a tier with these rates.

        The final attempt's prompt tokens (its cached tokens priced as cached, which understates
        savings rather than inflate them) plus the delivered completion tokens.
        """
        if not self.attempts:
            return _ZERO
        final = self.attempts[-1]
        delivered = final.completion_tokens if self.status == "ok" else 0
        cached = min(final.cached_tokens, final.prompt_tokens)
        return rates.cost(final.prompt_tokens, delivered, cached)


async def fetch_requests(engine: AsyncEngine, since: datetime | None) -> list[RequestFacts]:
    """The window's requests with their attempts, oldest first: one query per table."""
    requests = select(
        Request.request_id,
        Request.created_at,
        Request.tenant,
        Request.policy,
        Request.first_tier,
        Request.final_tier,
        Request.status,
        Request.prefix_hash,
        Request.prompt_tokens,
        Request.cached_tokens,
        Request.completion_tokens,
        Request.cost_usd,
        Request.useful_tokens,
        Request.useless,
        Request.key_id,
        Request.trimmed_messages,
        Request.trimmed_tokens,
        Request.workload,
        Request.confidence,
        Request.latency_ms,
    ).order_by(Request.created_at, Request.id)
    attempts = (
        select(
            Attempt.request_id,
            Attempt.seq,
            Attempt.tier,
            Attempt.role,
            Attempt.outcome,
            Attempt.prompt_tokens,
            Attempt.cached_tokens,
            Attempt.completion_tokens,
            Attempt.cost_usd,
            Attempt.cache_write_tokens,
            Attempt.reason,
            Attempt.error_class,
            Attempt.verify_confidence,
        )
        .join(Request, Request.request_id == Attempt.request_id)
        .order_by(Attempt.request_id, Attempt.seq)
    )
    if since is not None:
        requests = requests.where(Request.created_at >= since)
        attempts = attempts.where(Request.created_at >= since)
    async with engine.connect() as conn:
        request_rows = (await conn.execute(requests)).mappings().all()
        attempt_rows = (await conn.execute(attempts)).mappings().all()
    by_request: dict[str, list[AttemptFacts]] = defaultdict(list)
    for row in attempt_rows:
        by_request[row["request_id"]].append(
            AttemptFacts(**{k: v for k, v in row.items() if k != "request_id"})
        )
    return [
        RequestFacts(**dict(row), attempts=tuple(by_request.get(row["request_id"], ())))
        for row in request_rows
    ]


def read_requests(url: str | None, since: datetime | None) -> list[RequestFacts]:
    """:func:`fetch_requests` for a synchronous caller (the CLI), on an engine of its own.

    ``url`` None: ``$CASCADE_DATABASE_URL``, else ``./cascade.db``; errors name the database.
    """
    return run_with_engine(url, lambda engine: fetch_requests(engine, since), existing=True)


@dataclass(frozen=True, slots=True)
class KeyBudget:
    """A key that has a budget, and that budget in the period holding the report's ``now``."""

    key_id: str
    name: str | None
    tenant: str
    period: str
    """``day`` or ``month`` (UTC calendar periods)."""
    spend: PeriodSpend
    """The period's numbers; the limit is the key's budget now (a changed budget applies from
    the next lease), settled/leased/self-hosted are zero before the period's first lease."""


async def fetch_budgets(engine: AsyncEngine, now: datetime) -> list[KeyBudget]:
    """Every key with a budget (revoked and expired ones too: their spend still counts), by
    tenant then key id, with its budget in the current period: two queries."""
    keys = (
        select(ApiKey.key_id, ApiKey.name, ApiKey.tenant, ApiKey.budget_usd, ApiKey.budget_period)
        .where(ApiKey.budget_usd.is_not(None))
        .order_by(ApiKey.tenant, ApiKey.key_id)
    )
    starts = {period: period_start(period, now) for period in PERIODS}
    periods = select(
        BudgetPeriod.key_id,
        BudgetPeriod.period_start,
        BudgetPeriod.settled_nusd,
        BudgetPeriod.leased_nusd,
        BudgetPeriod.self_hosted_nusd,
    ).where(BudgetPeriod.period_start.in_(sorted(set(starts.values()))))
    async with engine.connect() as conn:
        key_rows = (await conn.execute(keys)).all()
        held = {(r.key_id, r.period_start): r for r in (await conn.execute(periods)).all()}
    budgets = []
    for key in key_rows:
        period = key.budget_period or "month"
        start = starts[period]
        row = held.get((key.key_id, start))
        settled, leased, hosted = (
            (0, 0, 0) if row is None else (row.settled_nusd, row.leased_nusd, row.self_hosted_nusd)
        )
        spend = PeriodSpend(
            key.key_id, start, key.budget_usd, usd(settled), usd(leased), usd(hosted)
        )
        budgets.append(KeyBudget(key.key_id, key.name, key.tenant, period, spend))
    return budgets


def read_budgets(url: str | None, now: datetime) -> list[KeyBudget]:
    """:func:`fetch_budgets` for a synchronous caller (the CLI), on an engine of its own."""
    return run_with_engine(url, lambda engine: fetch_budgets(engine, now), existing=True)
