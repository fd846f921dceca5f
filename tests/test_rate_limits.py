"""Per-key rate limits shared through the ledger's database: never more than the limit per
minute however many workers admit requests at once, OpenAI's headers, and a new allowance each
minute. Each limiter stands for one worker process (each has its own engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from cascade.server.ratelimit import RateLimiter
from tests.ledger_databases import KINDS, LedgerDatabase, migrate, open_database
from tests.upstreams import closed_port

MINUTE = 1_800_000_000.0  # the start of a minute, as time.time() gives it


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    with open_database(request.param, tmp_path) as db:
        migrate(db)
        yield db


def test_a_key_gets_its_requests_per_minute_then_a_429_with_when_to_retry(
    database: LedgerDatabase,
) -> None:
    clock = Clock(MINUTE + 15)

    async def scenario() -> list[tuple[bool, dict[str, str], int]]:
        engine = database.engine()
        try:
            limiter = RateLimiter(engine, clock)
            seen = []
            for _ in range(6):
                admission = await limiter.admit("key1", rpm=5, tpm=None, tokens=100)
                seen.append((admission.allowed, admission.headers, admission.retry_after_s))
            clock.now = MINUTE + 61  # the next minute: a new allowance
            again = await limiter.admit("key1", rpm=5, tpm=None, tokens=100)
            seen.append((again.allowed, again.headers, again.retry_after_s))
            return seen
        finally:
            await engine.dispose()

    seen = asyncio.run(scenario())
    assert [allowed for allowed, _, _ in seen] == [True] * 5 + [False, True]
    refused_headers, retry_after = seen[5][1], seen[5][2]
    assert retry_after == 45
    assert refused_headers["x-ratelimit-limit-requests"] == "5"
    assert refused_headers["x-ratelimit-remaining-requests"] == "0"
    assert refused_headers["x-ratelimit-reset-requests"] == "45s"
    assert seen[0][1]["x-ratelimit-remaining-requests"] == "4"


def test_workers_together_never_pass_the_limit(database: LedgerDatabase) -> None:
    """Four workers admit 40 requests each at once against 25 per minute: exactly 25 pass."""
    clock = Clock(MINUTE + 1)

    async def worker() -> int:
        engine = database.engine()
        try:
            limiter = RateLimiter(engine, clock)
            results = await asyncio.gather(
                *(limiter.admit("shared", rpm=25, tpm=None, tokens=10) for _ in range(40))
            )
            return sum(a.allowed for a in results)
        finally:
            await engine.dispose()

    async def scenario() -> list[int]:
        return list(await asyncio.gather(*(worker() for _ in range(4))))

    admitted = asyncio.run(scenario())
    assert sum(admitted) <= 25
    assert sum(admitted) >= 25 - 4 * 2  # at most a block per worker left unspent (25/10 -> 3)


def test_tokens_per_minute_count_the_output_a_request_may_produce(
    database: LedgerDatabase,
) -> None:
    clock = Clock(MINUTE + 30)

    async def scenario() -> list[bool]:
        engine = database.engine()
        try:
            limiter = RateLimiter(engine, clock)
            allowed = []
            for tokens in (400, 400, 400, 5000):
                admission = await limiter.admit("tok", rpm=None, tpm=1000, tokens=tokens)
                allowed.append(admission.allowed)
            return allowed
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == [True, True, False, False]


def test_a_database_outage_admits_rather_than_refuses() -> None:
    """Rate limits protect capacity; a ledger outage must not refuse every keyed request."""
    missing = LedgerDatabase(f"postgresql://postgres@127.0.0.1:{closed_port()}/ledger")

    async def scenario() -> bool:
        engine = missing.engine()
        try:
            limiter = RateLimiter(engine, Clock(MINUTE))
            return (await limiter.admit("k", rpm=1, tpm=None, tokens=1)).allowed
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) is True


def test_a_key_over_its_limit_is_refused_without_asking_the_database(tmp_path: Path) -> None:
    """A client hammering past its limit must not turn every refusal into database work."""
    database = LedgerDatabase(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(database)

    async def scenario() -> tuple[int, int]:
        engine = database.engine()
        statements = 0

        def count(*_args: object) -> None:
            nonlocal statements
            statements += 1

        try:
            limiter = RateLimiter(engine, Clock(MINUTE + 5))
            for _ in range(3):
                await limiter.admit("k", rpm=3, tpm=None, tokens=1)
            event.listen(engine.sync_engine, "before_cursor_execute", count)
            refused = [await limiter.admit("k", rpm=3, tpm=None, tokens=1) for _ in range(50)]
            return sum(not a.allowed for a in refused), statements
        finally:
            await engine.dispose()

    refused, statements = asyncio.run(scenario())
    assert refused == 50
    assert statements <= 3  # one look at the window, then every refusal is local
