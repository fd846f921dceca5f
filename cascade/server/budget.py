"""Budgets on the hot path: each worker spends, in memory, blocks of a key's budget it leased.

Before a call the proxy *reserves* the request's worst-case cost (:mod:`cascade.run.ceiling`)
from the block this worker holds for the key; after the call it *settles* what the request
really cost, and the rest of the reservation is free again: a dict lookup and a few integer
operations, no database round trip (one row updated per request would serialize every worker
on its lock: ``benchmarks/bench_budgets.py``). Only when the block cannot cover a reservation
does the worker lease more (:func:`cascade.ledger.budgets.take`: a share of what is left, at
least the reservation); a refused lease is a refused request.

A block nobody reserved from for ``idle_s`` goes back (its spend settled, the rest returned for
other workers and replicas); a busy one is renewed before it expires. A worker that dies leaves
its block to expire, and the next worker to look counts it as spent, whole
(:func:`cascade.ledger.budgets.reclaim_expired`): a crash costs at most the unspent part of one
block per key, and never lets the budget be overspent. For the same reason a worker may spend
its block while the database is out of reach; a request the block cannot cover is then refused
(503 ``budget_unavailable``): a budget protects money.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.errors import BudgetExceededError, BudgetUnavailableError
from cascade.ledger.budgets import (
    Lease,
    LeaseLost,
    add_self_hosted,
    nanos,
    period_end,
    period_start,
    reclaim_expired,
    settle,
    take,
    usd,
)
from cascade.ledger.database import create_engine
from cascade.ledger.failures import first_line

__all__ = [
    "BudgetBook",
    "BudgetExceededError",
    "BudgetUnavailableError",
    "Reservation",
    "open_budgets",
]

log = structlog.get_logger("cascade.budgets")

_REFUSAL_S = 1.0
"""How long a refused lease is trusted: requests that need more than was left are refused from
memory meanwhile (refusing is always safe; blocks other workers give back count a second
later)."""


@dataclass
class _Held:
    """A lease as this worker spends it (nano-dollars)."""

    lease: Lease
    usable_until: float
    """Monotonic time after which reservations wait for the lease to be renewed."""
    renew_at: float
    last_used: float
    spent: int = 0
    """Settled here, not yet in the database."""
    reserved: int = 0
    closing: bool = False

    @property
    def free(self) -> int:
        return self.lease.amount - self.spent - self.reserved


@dataclass
class _Account:
    """One key's budget in one period, as this worker sees it."""

    key_id: str
    start: datetime
    ends: float
    """The period's end, as a Unix time."""
    limit: int
    held: _Held | None = None
    self_hosted: int = 0
    """Self-hosted spend beside the budget, not yet in the database."""
    left: int = 0
    """What the database had left at the last refused lease, until ``refused_until``: a spent
    budget refuses from memory, not with a database round trip per request."""
    refused_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(eq=False)
class Reservation:
    """A request's hold on its key's budget; settle or release it exactly once.

    One dropped unsettled (a request that crashed on a bug of ours) counts as wholly spent:
    what it spent is unknown, and counting too much is the side that never overspends.
    """

    account: _Account
    held: _Held | None
    amount: int
    done: bool = False

    def __del__(self) -> None:
        if not self.done and self.held is not None:
            self.done = True
            self.held.reserved -= self.amount
            self.held.spent += self.amount


class BudgetBook:
    """This worker's blocks of every key's budget (share one per process)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        worker: str | None = None,
        share: int = 20,
        lease_s: float = 60.0,
        idle_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.share = share
        """A lease takes ``1/share`` of what is left of the budget (at least the reservation)."""
        self.lease_s = lease_s
        self.idle_s = idle_s
        self.transactions = 0
        """Database transactions so far (leases, settlements, reclaims)."""
        self._accounts: dict[tuple[str, datetime], _Account] = {}
        self._current: dict[str, tuple[_Account, Decimal]] = {}
        """Each key's account in the current period, and the budget it was opened with."""
        self._reclaim_at = 0.0

    async def reserve(
        self, key_id: str, limit_usd: Decimal, period: str | None, amount_usd: Decimal
    ) -> Reservation:
        """Hold ``amount_usd`` of the key's budget (``limit_usd`` per ``period``); raises
        :class:`BudgetExceededError` when it cannot, :class:`BudgetUnavailableError` when the
        database cannot say."""
        current = self._current.get(key_id)
        if current is not None and current[1] == limit_usd and time.time() < current[0].ends:
            account = current[0]
        else:
            account = self._account(key_id, limit_usd, period)
        need = nanos(amount_usd)
        held = account.held
        if need == 0:
            return Reservation(account, None, 0)
        if (
            held is not None
            and held.free >= need
            and not held.closing
            and time.monotonic() < held.usable_until
        ):
            return _hold(account, held, need)
        async with account.lock:
            return await self._reserve_leasing(account, need)

    def settle(
        self, reservation: Reservation, spent_usd: Decimal, self_hosted_usd: Decimal
    ) -> None:
        """The request is over: it spent ``spent_usd`` of its budget (and ``self_hosted_usd``
        beside it); the rest of its reservation is free again."""
        if reservation.done:
            return
        reservation.done = True
        account, held, spent = reservation.account, reservation.held, nanos(spent_usd)
        account.self_hosted += nanos(self_hosted_usd)
        if held is None:
            if spent:
                log.error("budget.unreserved_spend", key_id=account.key_id, usd=str(spent_usd))
            return
        held.reserved -= reservation.amount
        held.spent += spent
        held.last_used = time.monotonic()
        if spent > reservation.amount:  # a tier billed beyond its worst case: counted all the same
            log.warning(
                "budget.overrun",
                key_id=account.key_id,
                reserved_usd=str(usd(reservation.amount)),
                spent_usd=str(spent_usd),
            )

    def release(self, reservation: Reservation) -> None:
        """The request spent nothing (it failed before any call, or was refused)."""
        self.settle(reservation, Decimal(0), Decimal(0))

    async def tick(self) -> None:
        """Give back idle blocks, renew busy ones before they expire, record self-hosted spend,
        and now and then count other workers' expired leases as spent."""
        now = time.monotonic()
        for key, account in list(self._accounts.items()):
            held = account.held
            if held is not None and not held.reserved and now - held.last_used >= self.idle_s:
                await self._give_back(account)
            elif held is not None and now >= held.renew_at:
                async with account.lock:
                    await self._renew(account)
            await self._record_self_hosted(account)
            if account.held is None and not account.self_hosted and time.time() >= account.ends:
                del self._accounts[key]  # a past period, all settled
        if now >= self._reclaim_at:
            self._reclaim_at = now + self.lease_s
            await reclaim_expired(self.engine, datetime.now(UTC))
            self.transactions += 1

    async def run(self, interval_s: float = 1.0) -> None:
        """Call :meth:`tick` every ``interval_s`` until cancelled (database errors are logged)."""
        failing = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.tick()
            except (SQLAlchemyError, OSError) as exc:
                if not failing:
                    log.warning("budget.store_unavailable", error=first_line(exc))
                failing = True
            else:
                if failing:
                    log.info("budget.store_available")
                failing = False

    async def aclose(self) -> None:
        """Settle every block's spend and give back what no request holds (at shutdown)."""
        for account in list(self._accounts.values()):
            async with account.lock:
                if account.held is not None:
                    await self._renew(account, keep_free=False)
            await self._record_self_hosted(account)

    async def _record_self_hosted(self, account: _Account) -> None:
        amount, account.self_hosted = account.self_hosted, 0
        if not amount:
            return
        try:
            self.transactions += 1
            await add_self_hosted(
                self.engine, account.key_id, account.start, amount, limit=account.limit
            )
        except BaseException:
            account.self_hosted += amount  # recorded with the next tick
            raise

    def _account(self, key_id: str, limit_usd: Decimal, period: str | None) -> _Account:
        start = period_start(period, datetime.now(UTC))
        account = self._accounts.get((key_id, start))
        if account is None:
            account = _Account(key_id, start, period_end(period, start), nanos(limit_usd))
            self._accounts[(key_id, start)] = account
        account.limit = nanos(limit_usd)  # a changed budget applies from the next lease
        self._current[key_id] = (account, limit_usd)
        return account

    async def _reserve_leasing(self, account: _Account, need: int) -> Reservation:
        """The slow path, under the account's lock: renew or grow the block, or lease one."""
        held = account.held
        if held is not None and time.monotonic() >= held.usable_until:
            try:
                await self._renew(account)
            except (SQLAlchemyError, OSError) as exc:
                # The block is still this worker's to spend: were it reclaimed meanwhile, it
                # was counted as spent whole. Try the database again a second later.
                log.warning(
                    "budget.store_unavailable", key_id=account.key_id, error=first_line(exc)
                )
                held.usable_until = time.monotonic() + _REFUSAL_S
            held = account.held
        free = max(held.free, 0) if held is not None and not held.closing else 0
        if held is not None and free >= need:
            return _hold(account, held, need)
        if time.monotonic() < account.refused_until and need > account.left + free:
            raise BudgetExceededError(account.key_id, usd(need), usd(account.left + free))
        more = need - free
        expires = datetime.now(UTC) + timedelta(seconds=self.lease_s)
        clock = time.monotonic()
        try:
            try:
                lease, left = await self._take(account, more, expires, held)
            except LeaseLost:  # reclaimed while this worker was away: its spend was counted
                account.held = held = None
                lease, left = await self._take(account, need, expires, None)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("budget.store_unavailable", key_id=account.key_id, error=first_line(exc))
            raise BudgetUnavailableError(
                f"the budget of key {account.key_id} cannot be read now; retry shortly"
            ) from exc
        if lease is None:
            account.left, account.refused_until = left, time.monotonic() + _REFUSAL_S
            raise BudgetExceededError(account.key_id, usd(need), usd(left + free))
        if held is None:
            held = _Held(lease, *self._deadlines(clock), last_used=clock)
            account.held = held
        else:
            held.lease = lease
            held.usable_until, held.renew_at = self._deadlines(clock)
        return _hold(account, held, need)

    async def _take(
        self, account: _Account, need: int, expires: datetime, held: _Held | None
    ) -> tuple[Lease | None, int]:
        self.transactions += 1
        return await take(
            self.engine,
            key_id=account.key_id,
            start=account.start,
            limit=account.limit,
            need=need,
            share=self.share,
            worker=self.worker,
            expires_at=expires,
            lease=None if held is None else held.lease,
        )

    async def _renew(self, account: _Account, *, keep_free: bool = True) -> None:
        """Settle the block's spend and move its expiry (``keep_free``: keep its unspent part;
        else only what requests hold now, and give the rest back). Under the account's lock."""
        held = account.held
        if held is None:
            return
        spent = held.spent
        keep = held.lease.amount - spent if keep_free else held.reserved
        clock = time.monotonic()
        expires = datetime.now(UTC) + timedelta(seconds=self.lease_s)
        held.closing = not keep_free  # no reservation may take what is being given back
        try:
            self.transactions += 1
            lease = await settle(
                self.engine, held.lease, spent=spent, keep=keep, expires_at=expires
            )
        except LeaseLost:
            account.held = None  # counted as spent by whoever reclaimed it
            return
        finally:
            held.closing = False
        held.spent -= spent
        if lease is None:
            account.held = None
            return
        held.lease = lease
        held.usable_until, held.renew_at = self._deadlines(clock)

    async def _give_back(self, account: _Account) -> None:
        """Return an idle block whole: its spend settled, the rest back to the budget."""
        async with account.lock:
            held = account.held
            idle = held is not None and time.monotonic() - held.last_used >= self.idle_s
            if held is not None and idle and not held.reserved:
                await self._renew(account, keep_free=False)

    def _deadlines(self, leased_at: float) -> tuple[float, float]:
        """When a block leased at ``leased_at`` stops taking reservations, and when it is
        renewed: well before it expires, so that clocks a little apart never matter."""
        return leased_at + self.lease_s * 0.75, leased_at + self.lease_s * 0.5


def _hold(account: _Account, held: _Held, need: int) -> Reservation:
    held.reserved += need
    held.last_used = time.monotonic()
    return Reservation(account, held, need)


@asynccontextmanager
async def open_budgets(
    url: str, *, share: int = 20, lease_s: float = 60.0, idle_s: float = 5.0
) -> AsyncIterator[BudgetBook]:
    """A :class:`BudgetBook` on the ledger's database at ``url``, ticking in the background;
    leaving the block settles every block's spend and gives back what no request holds."""
    engine = create_engine(url)
    book = BudgetBook(engine, share=share, lease_s=lease_s, idle_s=idle_s)
    ticker = asyncio.create_task(book.run())
    try:
        yield book
    finally:
        ticker.cancel()
        try:
            await book.aclose()
        except (SQLAlchemyError, OSError) as exc:  # the blocks expire and are counted as spent
            log.warning("budget.close_failed", error=first_line(exc))
        await engine.dispose()
