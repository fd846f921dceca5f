"""Budgets in the database: each key's spend per period, and the blocks of it leased to workers.

A key's budget is spent in *periods* (a UTC calendar day or month; a key without a period has
one period for its whole life). ``budget_periods`` holds one row per key and period: its limit,
what was spent (``settled``), and what is handed out to workers but not yet spent (``leased``).
The invariant is ``settled + leased <= limit``: the only statement that raises ``leased`` is a
conditional ``UPDATE … WHERE settled + leased + :grant <= limit``, run with the row locked
(``SELECT … FOR UPDATE`` on Postgres; on SQLite the transaction's first statement is a write, so
it holds the database's write lock). Settling moves money from ``leased`` to ``settled`` and
never raises their sum. So however many workers and replicas lease at once, what they may spend
never adds up to more than the limit.

Money here is an integer number of nano-dollars (``nusd``, 1e-9 USD): sums in SQL are then
exact on both databases (SQLite would add the ledger's decimal text as binary floats). Charges
are rounded up to the nano-dollar, so a budget counts at least what the ledger records.

A lease is a row in ``budget_leases`` that only its worker changes, until it expires. A lease
whose worker died (or lost the database for longer than the lease's life) is *reclaimed as
spent*: its whole amount moves to ``settled``, since nobody can know how much of it was used.
That loses at most one block of budget per crashed worker, and never lets the budget be
overspent: zero overshoot is worth more than a few cents of a block nobody used. A worker whose
lease was reclaimed finds its row gone (:class:`LeaseLost`) and leases anew.

These functions are the SQL; the worker's side (reservations, when to lease and give back) is
:mod:`cascade.server.budget`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import cast

from sqlalchemy import Insert, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cascade.ledger.models import BudgetLease, BudgetPeriod

__all__ = [
    "NANOS_PER_USD",
    "PERIODS",
    "Lease",
    "LeaseLost",
    "PeriodSpend",
    "add_self_hosted",
    "nanos",
    "period_end",
    "period_spend",
    "period_start",
    "reclaim_expired",
    "settle",
    "take",
    "usd",
]

NANOS_PER_USD = 10**9
PERIODS = ("day", "month")
"""Budget periods: UTC calendar days and months (None: one period for the key's whole life)."""
_LIFETIME = datetime(1970, 1, 1, tzinfo=UTC)
_PERIODS = cast("Table", BudgetPeriod.__table__)
_LEASES = cast("Table", BudgetLease.__table__)


def nanos(amount: Decimal) -> int:
    """US dollars as whole nano-dollars, rounded up (a charge is never counted short)."""
    return int((amount * NANOS_PER_USD).to_integral_value(ROUND_CEILING))


def usd(amount: int) -> Decimal:
    """Nano-dollars as US dollars."""
    return Decimal(amount).scaleb(-9)


def period_start(period: str | None, now: datetime) -> datetime:
    """When the budget period holding ``now`` began (UTC midnight, or the 1st of the month)."""
    now = now.astimezone(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if period is None:
        return _LIFETIME
    raise ValueError(f"budget period {period!r}; allowed: {', '.join(PERIODS)} (or none)")


def period_end(period: str | None, start: datetime) -> float:
    """When the period that began at ``start`` ends, as a Unix time (never, without one)."""
    if period == "day":
        return (start + timedelta(days=1)).timestamp()
    if period == "month":
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return start.replace(year=year, month=month).timestamp()
    return float("inf")


@dataclass(frozen=True)
class Lease:
    """A block of one key's budget held by one worker (amounts in nano-dollars)."""

    lease_id: str
    key_id: str
    period_start: datetime
    amount: int
    """Leased and not yet settled: what the worker may still spend under this lease."""
    expires_at: datetime


class LeaseLost(Exception):  # noqa: N818 - an event, not an error: the caller leases anew
    """The lease's row is gone: it expired and another worker reclaimed it as spent."""


@dataclass(frozen=True)
class PeriodSpend:
    """One key's budget in one period, in US dollars."""

    key_id: str
    period_start: datetime
    limit_usd: Decimal
    settled_usd: Decimal
    """Spent (and leases reclaimed from workers that died, counted as spent)."""
    leased_usd: Decimal
    """Handed out to workers and not yet spent or given back."""
    self_hosted_usd: Decimal
    """Self-hosted spend the budget does not cover (policies with ``budgets.on_spent:
    self_hosted``), reported beside it."""

    @property
    def left_usd(self) -> Decimal:
        """What no worker holds and nothing has spent."""
        return self.limit_usd - self.settled_usd - self.leased_usd


async def take(
    engine: AsyncEngine,
    *,
    key_id: str,
    start: datetime,
    limit: int,
    need: int,
    share: int,
    worker: str,
    expires_at: datetime,
    lease: Lease | None = None,
) -> tuple[Lease | None, int]:
    """Lease ``max(need, left // share)`` of what is left (all of it, if less): a new lease, or
    more on ``lease`` (which then also lives until ``expires_at``).

    ``limit`` is the key's budget now (a changed budget applies from its next lease). Returns
    the lease and what was left before it; ``(None, left)`` when less than ``need`` is left.
    Raises :class:`LeaseLost` when ``lease`` was reclaimed.
    """
    async with engine.begin() as conn:
        where = (_PERIODS.c.key_id == key_id, _PERIODS.c.period_start == start)
        await _ensure_period(conn, key_id, start, limit)
        held = (
            await conn.execute(
                select(_PERIODS.c.settled_nusd, _PERIODS.c.leased_nusd)
                .where(*where)
                .with_for_update()
            )
        ).one()
        left = limit - held.settled_nusd - held.leased_nusd
        grant = min(left, max(need, left // share))
        if grant < max(need, 1):
            return None, left
        granted = await conn.execute(
            update(_PERIODS)
            .where(*where, _PERIODS.c.settled_nusd + _PERIODS.c.leased_nusd + grant <= limit)
            .values(leased_nusd=_PERIODS.c.leased_nusd + grant, limit_nusd=limit)
        )
        if granted.rowcount != 1:  # cannot happen with the row locked; refuse rather than trust
            return None, left
        if lease is None:
            lease = Lease(f"lease_{secrets.token_hex(12)}", key_id, start, grant, expires_at)
            await conn.execute(
                _LEASES.insert().values(
                    lease_id=lease.lease_id,
                    key_id=key_id,
                    period_start=start,
                    worker=worker,
                    amount_nusd=grant,
                    expires_at=expires_at,
                )
            )
            return lease, left
        grown = await conn.execute(
            update(_LEASES)
            .where(_LEASES.c.lease_id == lease.lease_id, _LEASES.c.amount_nusd == lease.amount)
            .values(amount_nusd=_LEASES.c.amount_nusd + grant, expires_at=expires_at)
        )
        if grown.rowcount != 1:
            raise LeaseLost(lease.lease_id)  # rolls the grant back with the transaction
        return replace(lease, amount=lease.amount + grant, expires_at=expires_at), left


async def settle(
    engine: AsyncEngine, lease: Lease, *, spent: int, keep: int, expires_at: datetime
) -> Lease | None:
    """Count ``spent`` of the lease as settled, keep ``keep`` leased until ``expires_at``, give
    the rest back; the lease row goes when nothing is kept (returns None then).

    ``spent`` may exceed the lease (a tier billed more than its worst case): it is settled all
    the same, since it was spent. Raises :class:`LeaseLost` when the lease was reclaimed (its
    whole amount was then counted as spent already).
    """
    keep = max(0, min(keep, lease.amount - spent))
    mine = (_LEASES.c.lease_id == lease.lease_id, _LEASES.c.amount_nusd == lease.amount)
    async with engine.begin() as conn:
        if keep:
            changed = await conn.execute(
                update(_LEASES).where(*mine).values(amount_nusd=keep, expires_at=expires_at)
            )
        else:
            changed = await conn.execute(delete(_LEASES).where(*mine))
        if changed.rowcount != 1:
            raise LeaseLost(lease.lease_id)
        await conn.execute(
            update(_PERIODS)
            .where(_PERIODS.c.key_id == lease.key_id, _PERIODS.c.period_start == lease.period_start)
            .values(
                settled_nusd=_PERIODS.c.settled_nusd + spent,
                leased_nusd=_PERIODS.c.leased_nusd - (lease.amount - keep),
            )
        )
    return replace(lease, amount=keep, expires_at=expires_at) if keep else None


async def add_self_hosted(
    engine: AsyncEngine, key_id: str, start: datetime, amount: int, *, limit: int
) -> None:
    """Record self-hosted spend beside a budget (``limit``) that does not cover it."""
    async with engine.begin() as conn:
        await _ensure_period(conn, key_id, start, limit)
        await conn.execute(
            update(_PERIODS)
            .where(_PERIODS.c.key_id == key_id, _PERIODS.c.period_start == start)
            .values(self_hosted_nusd=_PERIODS.c.self_hosted_nusd + amount)
        )


async def reclaim_expired(engine: AsyncEngine, now: datetime) -> int:
    """Count every lease that expired before ``now`` as wholly spent; returns how many.

    Each row is deleted by exactly one reclaimer (the delete and the settling are one
    transaction), so a lease is never counted twice, and its worker, should it still be alive,
    finds it gone.
    """
    async with engine.begin() as conn:
        gone = (
            await conn.execute(
                delete(_LEASES)
                .where(_LEASES.c.expires_at < now)
                .returning(_LEASES.c.key_id, _LEASES.c.period_start, _LEASES.c.amount_nusd)
            )
        ).all()
        for row in gone:
            await conn.execute(
                update(_PERIODS)
                .where(_PERIODS.c.key_id == row.key_id, _PERIODS.c.period_start == row.period_start)
                .values(
                    settled_nusd=_PERIODS.c.settled_nusd + row.amount_nusd,
                    leased_nusd=_PERIODS.c.leased_nusd - row.amount_nusd,
                )
            )
    return len(gone)


async def period_spend(engine: AsyncEngine, key_id: str, start: datetime) -> PeriodSpend | None:
    """A key's budget in the period that began at ``start``; None before its first lease."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(_PERIODS).where(
                    _PERIODS.c.key_id == key_id, _PERIODS.c.period_start == start
                )
            )
        ).one_or_none()
    if row is None:
        return None
    return PeriodSpend(
        key_id,
        row.period_start,
        usd(row.limit_nusd),
        usd(row.settled_nusd),
        usd(row.leased_nusd),
        usd(row.self_hosted_nusd),
    )


def _insert(conn: AsyncConnection, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


async def _ensure_period(conn: AsyncConnection, key_id: str, start: datetime, limit: int) -> None:
    """The key's row for the period, created empty if it is not there (a race leaves one)."""
    await conn.execute(
        _insert(conn, _PERIODS).values(
            key_id=key_id,
            period_start=start,
            limit_nusd=limit,
            settled_nusd=0,
            leased_nusd=0,
            self_hosted_nusd=0,
        )
    )
