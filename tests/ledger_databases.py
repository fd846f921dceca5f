"""Real databases for the ledger tests: an SQLite file in tmp_path, or a fresh Postgres schema.

Postgres comes from ``CASCADE_TEST_POSTGRES_URL`` (``.ci/run`` sets it); each test gets its own
schema ``cascade_test_<random>``, reached through ``search_path``, so parallel runs never collide,
and the schema is dropped afterwards. Tests skip (saying why) only when the variable is unset.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger import AttemptRecord, Ledger, LedgerEntry, RequestRecord, create_engine
from cascade.ledger.migrate import upgrade

POSTGRES_ENV = "CASCADE_TEST_POSTGRES_URL"
KINDS = ["sqlite", "postgres"]


@dataclass(frozen=True)
class LedgerDatabase:
    """Where a test's ledger lives, and how to reach it."""

    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)

    def engine(self) -> AsyncEngine:
        """A new async engine on this database."""
        return create_engine(self.url, connect_args=self.connect_args)


def postgres_url() -> str:
    """The test Postgres URL; skips the test with a message when it is not configured."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no Postgres to test against (.ci/run sets it)")
    return url


@contextmanager
def open_database(kind: str, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """An empty database of the given kind (``sqlite`` or ``postgres``), removed afterwards."""
    if kind == "sqlite":
        yield LedgerDatabase(f"sqlite:///{tmp_path / 'ledger.db'}")
        return
    url = postgres_url()
    schema = f"cascade_test_{secrets.token_hex(6)}"
    asyncio.run(_execute(url, f'CREATE SCHEMA "{schema}"'))
    try:
        yield LedgerDatabase(url, {"server_settings": {"search_path": schema}})
    finally:
        asyncio.run(_execute(url, f'DROP SCHEMA "{schema}" CASCADE'))


def migrate(database: LedgerDatabase) -> None:
    """Bring the database to the newest revision."""

    async def run() -> None:
        engine = database.engine()
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def sqlite_ledger(tmp_path: Path, entries: Sequence[LedgerEntry]) -> str:
    """A migrated SQLite ledger in ``tmp_path`` holding ``entries``, written by the real store;
    its URL."""

    async def fill(url: str) -> None:
        ledger = Ledger(create_engine(url))
        try:
            await ledger.insert(list(entries))
        finally:
            await ledger.aclose()

    with open_database("sqlite", tmp_path) as db:
        migrate(db)
        asyncio.run(fill(db.url))
        return db.url


async def _execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


_BERLIN = timezone(timedelta(hours=1))


def make_entry(n: int, attempts: int = 2) -> LedgerEntry:
    """A realistic request with ``attempts`` attempts (an escalation when more than one)."""
    attempt_records = tuple(
        AttemptRecord(
            seq=seq,
            tier="small" if seq == 0 else f"big{seq}",
            model="distill-1.5b" if seq == 0 else "openai/gpt-4o",
            role="primary" if seq == 0 else "escalation",
            outcome="ok" if seq == attempts - 1 else "rejected",
            reason=None if seq == attempts - 1 else "length_cut",
            prompt_tokens=1000 + n,
            cached_tokens=512,
            completion_tokens=200 + seq,
            cost_usd=Decimal("0.0000123457") * (seq + 1) + Decimal(n) / Decimal(10**10),
            estimated=seq == 0,
            latency_ms=12.5 + seq,
        )
        for seq in range(attempts)
    )
    return LedgerEntry(
        RequestRecord(
            request_id=f"req-{n:06d}",
            created_at=datetime(2026, 11, 22, 10, 15, 30, 123456, tzinfo=_BERLIN)
            + timedelta(seconds=n),
            tenant="team-a" if n % 2 else None,
            policy="default",
            policy_version="3f2a9c1",
            workload="interactive",
            confidence=0.8125,
            decision_reason="threshold",
            first_tier=attempt_records[0].tier if attempt_records else None,
            final_tier=attempt_records[-1].tier if attempt_records else None,
            status="ok",
            http_status=200,
            latency_ms=250.25,
            prefix_hash="ab" * 16,
            prompt_tokens=sum(a.prompt_tokens for a in attempt_records),
            cached_tokens=sum(a.cached_tokens for a in attempt_records),
            completion_tokens=sum(a.completion_tokens for a in attempt_records),
            cost_usd=sum((a.cost_usd for a in attempt_records), Decimal(0)),
            useful_tokens=attempt_records[-1].completion_tokens if attempt_records else 0,
            estimated=any(a.estimated for a in attempt_records),
            stream=n % 3 == 0,
        ),
        attempt_records,
    )


def utc(value: datetime) -> datetime:
    """The same instant in UTC (how the ledger gives times back)."""
    return value.astimezone(UTC)


class Outage:
    """A TCP relay in front of Postgres that a test can cut and restore, like a DB restart.

    ``stop()`` closes the listener and resets every relayed connection; ``start()`` listens again
    on the same port, so an engine pointed at :attr:`url` sees the database go and come back.
    """

    def __init__(self, target_url: str) -> None:
        parsed = make_url(target_url)
        self._target = (parsed.host or "127.0.0.1", parsed.port or 5432)
        self._base = parsed
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The database URL through the relay."""
        return self._base.set(host="127.0.0.1", port=self.port).render_as_string(False)

    async def start(self) -> None:
        """Accept connections (on the same port as before, if started before)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass  # the other side was cut: the relay's whole purpose
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
