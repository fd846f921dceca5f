"""The proxy writes its ledger: one row per routed request, one per tier call, exact money."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select

from cascade.ledger import create_engine
from cascade.ledger.models import Attempt, Request
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.ledger_databases import Outage
from tests.servers import serving, wait_until
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty Postgres database for one test (dropped afterwards)."""
    base = os.environ.get("CASCADE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("CASCADE_TEST_POSTGRES_URL is not set: no Postgres to test against")
    name = f"cascade_test_{secrets.token_hex(6)}"
    admin = base.replace("postgresql://", "postgres://", 1)

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _rows(url: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            requests = [dict(r._mapping) for r in await conn.execute(select(Request.__table__))]
            attempts = [dict(r._mapping) for r in await conn.execute(select(Attempt.__table__))]
            total = await conn.scalar(select(func.count()).select_from(Attempt.__table__))
            assert total == len(attempts)
    finally:
        await engine.dispose()
    return requests, attempts


def _run_traffic(url: str, tmp_path: Path) -> dict[str, str]:
    """Three requests through a proxy with a ledger: answered, escalated, failed everywhere."""
    small, medium, big = ScriptedTier("small"), ScriptedTier("medium"), ScriptedTier("big")
    ids: dict[str, str] = {}
    with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "ledger.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b))
        settings = ServerSettings(
            policies=(str(policy),), database_url=url, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as proxy:
            body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
            tenant = {"x-cascade-tenant": "team-a"}
            for name, modes in (
                ("answered", ("ok", "ok", "ok")),
                ("escalated", ("length", "ok", "ok")),
                ("failed", ("503", "503", "503")),
            ):
                small.mode, medium.mode, big.mode = modes
                response = httpx.post(f"{proxy}/v1/chat/completions", json=body, headers=tenant)
                ids[name] = response.headers["x-cascade-request-id"]
            marked = httpx.post(f"{proxy}/v1/feedback", json={"request_id": ids["answered"]})
            assert marked.status_code == 200
            unknown = httpx.post(f"{proxy}/v1/feedback", json={"request_id": "req_nope"})
            assert unknown.status_code == 404
    return ids  # the proxy has shut down: its writer flushed everything


def _check(
    requests: list[dict[str, object]], attempts: list[dict[str, object]], ids: dict[str, str]
) -> None:
    by_id = {r["request_id"]: r for r in requests}
    assert set(by_id) == set(ids.values())
    answered, escalated, failed = (by_id[ids[k]] for k in ("answered", "escalated", "failed"))
    # One attempt for the answer, two for the escalation; the failure spills small -> big.
    per_request = {rid: sum(1 for a in attempts if a["request_id"] == rid) for rid in by_id}
    assert per_request == {ids["answered"]: 1, ids["escalated"]: 2, ids["failed"]: 2}
    # small: $0.001 per GPU-second; 60 uncached prompt tokens at 10,000 tok/s, 20 output at 1,000.
    assert answered["cost_usd"] == Decimal("0.000026")
    assert escalated["cost_usd"] == Decimal("0.000052")  # the rejected attempt is paid for too
    assert (answered["useless"], answered["useful_tokens"]) == (True, 0)
    assert (escalated["useless"], escalated["useful_tokens"]) == (False, 20)
    assert escalated["completion_tokens"] == 40
    assert (escalated["first_tier"], escalated["final_tier"]) == ("small", "medium")
    assert (failed["status"], failed["http_status"], failed["final_tier"]) == ("error", 503, None)
    assert {r["tenant"] for r in requests} == {"team-a"}
    roles = [
        a["role"]
        for a in sorted(attempts, key=lambda a: (a["request_id"], a["seq"]))
        if a["request_id"] == ids["escalated"]
    ]
    assert roles == ["primary", "escalation"]
    assert all(float(str(a["latency_ms"])) > 0 for a in attempts)  # failed calls are timed too


def test_proxy_ledger_on_sqlite(tmp_path: Path) -> None:
    """On SQLite, every routed request and tier call is recorded, with feedback applied."""
    url = f"sqlite:///{tmp_path / 'cascade.db'}"
    ids = _run_traffic(url, tmp_path)
    _check(*asyncio.run(_rows(url)), ids)


def test_proxy_ledger_on_postgres(tmp_path: Path) -> None:
    """On Postgres, the same traffic gives the same rows."""
    with postgres_database() as url:
        ids = _run_traffic(url, tmp_path)
        _check(*asyncio.run(_rows(url)), ids)


@contextmanager
def relay_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on its own thread, for a relay that must outlive any one request."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _wave(url: str, count: int) -> list[httpx.Response]:
    body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(count))
        )


def test_no_row_is_lost_when_postgres_goes_away_under_load(tmp_path: Path) -> None:
    """With the database cut mid-run and restored, the ledger ends with exactly one row per
    request sent and one per tier call: rows written during the outage wait in the spool."""
    with postgres_database() as url, relay_loop() as loop:
        outage = Outage(url)

        def run(coro: Coroutine[object, object, None]) -> None:
            asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        run(outage.start())
        small, medium, big = ScriptedTier("small"), ScriptedTier("medium"), ScriptedTier("big")
        spool = tmp_path / "spool"
        responses: list[httpx.Response] = []
        with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
            policy = tmp_path / "outage.yaml"
            policy.write_text(POLICY.format(small=s, medium=m, big=b))
            settings = ServerSettings(
                policies=(str(policy),), database_url=outage.url, spool_path=str(spool)
            )
            with serving(create_app(settings)) as proxy:
                responses += asyncio.run(_wave(proxy, 40))
                run(outage.stop())  # the database goes away ...
                small.mode = "length"  # ... while requests keep coming, some with two attempts
                responses += asyncio.run(_wave(proxy, 40))
                assert wait_until(spool.exists)  # the failed batches' rows reach it
                run(outage.start())  # ... and comes back
                small.mode = "ok"
                responses += asyncio.run(_wave(proxy, 40))
            # The proxy has shut down: its writer replayed the spool and flushed the rest.
        requests, attempts = asyncio.run(_rows(url))
    assert [r.status_code for r in responses] == [200] * 120
    sent = {r.headers["x-cascade-request-id"]: r.headers["x-cascade-attempts"] for r in responses}
    assert sorted(str(r["request_id"]) for r in requests) == sorted(sent)
    assert len(attempts) == sum(len(a.split(",")) for a in sent.values()) == 160
    assert not spool.exists() or spool.read_text() == ""
