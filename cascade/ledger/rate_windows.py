"""Rate limits shared by every worker and replica: one row per key and minute in the ledger's
database, leased out in blocks.

A worker that needs to admit a request for a key with a requests-per-minute (``rpm``) or
tokens-per-minute (``tpm``) limit takes a *block* of the current minute's allowance with one
conditional ``UPDATE`` (the row's counters never pass the limits, whatever the number of workers
and replicas), then spends it locally: no database round trip per request while the block lasts.
A block unspent at the end of the minute is lost with the minute; the limit is never exceeded,
and what a worker holds unused is at most one block.

Why the database and not Redis: the proxy already has this database and one statement per block
costs it little (``benchmarks/bench_rate_limits.py``); a Redis would be one more service to run
and to lose. Fixed one-minute windows (UTC) are what OpenAI's ``x-ratelimit-*`` headers describe;
a client may spend a minute's allowance at its end and the next one's at its start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.models import RateWindow

__all__ = ["Lease", "lease_block"]


@dataclass(frozen=True, slots=True)
class Lease:
    """What a worker was granted of one key's minute: requests and tokens (0 when none left),
    and what the window had given out in all after this lease (for ``x-ratelimit-remaining``)."""

    requests: int
    tokens: int
    requests_used: int
    tokens_used: int


async def lease_block(
    engine: AsyncEngine,
    key_id: str,
    window: datetime,
    *,
    requests: int,
    tokens: int,
    rpm: int | None,
    tpm: int | None,
) -> Lease:
    """Take ``requests`` and ``tokens`` of ``key_id``'s allowance for the minute ``window``, or
    as much as is left when the whole block would pass a limit (zero when nothing is left)."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(RateWindow.requests, RateWindow.tokens).where(
                    RateWindow.key_id == key_id, RateWindow.window_start == window
                )
            )
        ).first()
        if row is None:
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        insert(RateWindow).values(
                            key_id=key_id, window_start=window, requests=0, tokens=0
                        )
                    )
            except IntegrityError:  # another worker created it first
                pass
        # The whole block if it fits, else what is left. Each UPDATE is conditional on the
        # limits, so workers racing for the last of a minute can never together pass them.
        want_requests, want_tokens = requests, tokens
        for _ in range(5):
            limits = []
            if rpm is not None:
                limits.append(RateWindow.requests + want_requests <= rpm)
            if tpm is not None:
                limits.append(RateWindow.tokens + want_tokens <= tpm)
            done = await conn.execute(
                update(RateWindow)
                .where(
                    and_(RateWindow.key_id == key_id, RateWindow.window_start == window, *limits)
                )
                .values(
                    requests=RateWindow.requests + want_requests,
                    tokens=RateWindow.tokens + want_tokens,
                )
            )
            current = (
                await conn.execute(
                    select(RateWindow.requests, RateWindow.tokens).where(
                        RateWindow.key_id == key_id, RateWindow.window_start == window
                    )
                )
            ).one()
            if done.rowcount == 1:
                return Lease(want_requests, want_tokens, current.requests, current.tokens)
            want_requests = _fit(requests, current.requests, rpm)
            want_tokens = _fit(tokens, current.tokens, tpm)
            if want_requests <= 0 or want_tokens <= 0:
                return Lease(0, 0, current.requests, current.tokens)
        return Lease(0, 0, current.requests, current.tokens)


def _fit(wanted: int, used: int, limit: int | None) -> int:
    if limit is None:
        return wanted
    return min(wanted, limit - used)
