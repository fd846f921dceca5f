"""Per-key rate limits shared through the ledger's database: never more than the limit per
minute however many workers admit requests at once, OpenAI's headers, and a new allowance each
minute. Each limiter stands for one worker process (each has its own engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from cascade.server.app import create_app
from cascade.server.ratelimit import RateLimiter
from cascade.server.settings import ServerSettings
from tests.ledger_databases import KINDS, LedgerDatabase, migrate, open_database
from tests.servers import serving
from tests.test_keys import bearer, make_key
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier, closed_port

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


def test_the_proxy_enforces_a_keys_limits_with_openais_headers(tmp_path: Path) -> None:
    """Through the real proxy: a key with 2 requests a minute gets two answers carrying the
    x-ratelimit-* headers, then a 429 rate_limit_exceeded with Retry-After; another key and the
    tokens limit are counted apart."""
    database = f"sqlite:///{tmp_path / 'limited.db'}"
    _, limited = make_key(database, "team-a", rpm=2)
    _, thrifty = make_key(database, "team-b", tpm=300)
    tier = ScriptedTier("small")
    with serving(tier.app()) as upstream:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=upstream, medium=upstream, big=upstream))
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as url:

            def ask(key: str, **body: object) -> httpx.Response:
                sent = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
                return httpx.post(
                    f"{url}/v1/chat/completions",
                    json={**sent, **body},
                    headers=bearer(key),
                    timeout=30,
                )

            first, second, third = ask(limited), ask(limited), ask(limited)
            small = ask(thrifty, max_tokens=100)
            large = ask(thrifty, max_tokens=1000)  # more than the key's tokens per minute
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert third.status_code == 429
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert small.status_code == 200
    assert small.headers["x-ratelimit-limit-tokens"] == "300"
    assert large.status_code == 429
    assert "tokens" in large.json()["error"]["message"]
