"""The proxy starts while its Postgres is unreachable, and stops at start when misconfigured."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from cascade.errors import LedgerError
from cascade.ledger import create_engine, open_ledger
from cascade.ledger.models import Attempt, Request
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.ledger_databases import Outage, make_entry, postgres_url
from tests.servers import serving, wait_until
from tests.test_proxy_ledger import postgres_database, relay_loop
from tests.upstreams import ScriptedTier, closed_port

POLICY = """\
name: startup
tiers:
  - {{name: small, model: small-model, kind: self_hosted, endpoint: "{url}/v1",
      price: {{gpu_usd_per_hour: 2.0, tokens_per_second: 1000}}}}
"""


async def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            requests = await conn.scalar(select(func.count()).select_from(Request.__table__))
            attempts = await conn.scalar(select(func.count()).select_from(Attempt.__table__))
    except Exception:  # the tables do not exist until the proxy has migrated
        return 0, 0
    finally:
        await engine.dispose()
    return int(requests or 0), int(attempts or 0)


async def _ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return sorted((await conn.scalars(select(Request.request_id))).all())
    finally:
        await engine.dispose()


def test_proxy_starts_while_postgres_is_unreachable_and_catches_up(tmp_path: Path) -> None:
    """Started while connections to its database are refused, a proxy told it uses no virtual
    keys (which it could not read: with them, /v1 waits for the database, see test_keys) answers
    every request, says on /readyz (200) that the ledger is degraded and how many requests are
    spooled, then migrates and replays once the database can be reached: no row lost, none
    twice, spool empty."""
    with postgres_database() as url, relay_loop() as loop, serving(ScriptedTier("s").app()) as tier:
        outage = Outage(url)

        def run(coro: Coroutine[object, object, None]) -> None:
            asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        run(outage.start())
        run(outage.stop())  # the port is known, and nothing listens on it: connections refused
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(url=tier))
        spool = tmp_path / "spool"
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=outage.url,
            spool_path=str(spool),
            virtual_keys=False,
        )
        body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
        with serving(create_app(settings)) as proxy:
            answers = [httpx.post(f"{proxy}/v1/chat/completions", json=body) for _ in range(20)]
            assert [a.status_code for a in answers] == [200] * 20

            def ready() -> dict[str, object]:
                response = httpx.get(f"{proxy}/readyz")
                assert response.status_code == 200
                answer: dict[str, object] = response.json()
                return answer

            assert wait_until(lambda: "20 requests spooled" in str(ready().get("ledger")))
            state = ready()
            assert state["status"] == "degraded"
            assert str(state["ledger"]).startswith("database unreachable since ")
            assert asyncio.run(_counts(url)) == (0, 0)
            run(outage.start())  # the database can be reached again
            assert wait_until(lambda: asyncio.run(_counts(url)) == (20, 20), 30)
            assert wait_until(lambda: ready()["status"] == "ready")
            assert "ledger" not in ready()
        sent = sorted(a.headers["x-cascade-request-id"] for a in answers)
        assert asyncio.run(_ids(url)) == sent
        assert asyncio.run(_counts(url)) == (20, 20)
        assert spool.read_text() == ""
        run(outage.stop())


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("postgresql://no_such_role@{host}/test", 'role "no_such_role" does not exist'),
        ("postgresql://postgres@{host}/no_such_database", 'database "no_such_database"'),
    ],
)
def test_a_misconfigured_database_stops_the_start(where: str, says: str, tmp_path: Path) -> None:
    """A database that answers and refuses (unknown role, no such database) stops the start at
    once with its own message, instead of spooling forever."""
    host = postgres_url().split("@", 1)[1].split("/", 1)[0]

    async def start() -> None:
        async with open_ledger(where.format(host=host), spool_path=tmp_path / "spool"):
            pass

    with pytest.raises(LedgerError, match=says):
        asyncio.run(asyncio.wait_for(start(), 10))


def test_an_sqlite_file_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    """An SQLite ledger is a local file: one that cannot be opened is a mistake, not an outage."""

    async def start() -> None:
        url = f"sqlite:///{tmp_path / 'missing-folder' / 'ledger.db'}"
        async with open_ledger(url, spool_path=tmp_path / "spool"):
            pass

    with pytest.raises(LedgerError, match="missing-folder does not exist; create it first"):
        asyncio.run(start())


def test_an_unreachable_postgres_starts_the_ledger_spooling(tmp_path: Path) -> None:
    """Nothing listening at the database's address: the ledger opens anyway, says it is
    degraded, and keeps what it is given in the spool."""
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    spool = tmp_path / "spool"

    async def run() -> str | None:
        async with open_ledger(url, spool_path=spool) as ledger:
            ledger.submit(make_entry(1).request, make_entry(1).attempts)
            await ledger.flush()
            return ledger.degraded()

    degraded = asyncio.run(run())
    assert degraded is not None
    assert degraded.startswith("database unreachable since ")
    assert degraded.endswith(", 1 requests spooled")
    assert len(spool.read_text().splitlines()) == 1


def test_workers_start_while_postgres_is_unreachable(tmp_path: Path) -> None:
    """``cascade serve --workers 2 --no-keys`` with nothing listening at the database's address
    starts, answers, and says on /readyz that its ledger is degraded."""
    policy, port = tmp_path / "policy.yaml", closed_port()
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    with serving(ScriptedTier("s").app()) as tier, (tmp_path / "log").open("w") as log:
        policy.write_text(POLICY.format(url=tier))
        command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
        command += ["--port", str(port), "--workers", "2", "--database-url", url]
        command += ["--spool", str(tmp_path / "spool"), "--log-level", "warning", "--no-keys"]
        command += ["--drain-delay", "0"]  # no load balancer to wait for on SIGTERM
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}

            def answered() -> bool:
                assert server.poll() is None, (tmp_path / "log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                    return chat.status_code == 200
                return False

            assert wait_until(answered, 60)
            assert wait_until(
                lambda: (
                    "database unreachable since"
                    in httpx.get(f"http://127.0.0.1:{port}/readyz").text
                )
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    assert server.returncode == 0
