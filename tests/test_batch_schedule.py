"""Deferred work on spare self-hosted capacity: a batch waits while interactive traffic fills the
tier, yields its slots to waiting requests, goes to the API near its deadline, and retries an
upstream 503; every request is recorded once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from cascade.ledger import create_engine
from cascade.ledger.batch_lines import BatchLine
from cascade.ledger.batches import BatchStore
from cascade.server.batch_runner import BatchRunner
from cascade.server.metrics import Metrics
from cascade.server.proxy import Proxy
from cascade.server.settings import ServerSettings
from tests.servers import serving
from tests.upstreams import ScriptedTier

POLICY = """\
name: deferred
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, max_concurrency: 4,
      overflow: x}}
  - {{name: x, model: openai/gpt-4o, kind: api, endpoint: "{x}/v1",
      api_key_env: CASCADE_TEST_X_KEY}}
"""


@dataclass
class Parts:
    proxy: Proxy
    store: BatchStore
    runner: BatchRunner
    database: Path
    small: ScriptedTier
    x: ScriptedTier

    async def settle(self) -> None:
        """One runner step, then wait for what it started to end."""
        await self.runner.step()
        await asyncio.gather(*self.runner._running.values())

    async def queue(self, count: int, window: timedelta = timedelta(hours=24)) -> str:
        body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
        batch = await self.store.create_batch(
            [BatchLine(n, f"r{n}", body) for n in range(1, count + 1)],
            input_file_id="file-x",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            window=window,
            metadata=None,
            tenant=None,
            key_id=None,
            only_tiers=None,
        )
        return str(batch.row.id)

    def rows(self, query: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.database) as conn:
            return list(conn.execute(query))


@contextmanager
def _tiers() -> Iterator[tuple[ScriptedTier, str, ScriptedTier, str]]:
    small, x = ScriptedTier("small"), ScriptedTier("x")
    with ExitStack() as stack:
        yield (
            small,
            stack.enter_context(serving(small.app())),
            x,
            stack.enter_context(serving(x.app())),
        )


@asynccontextmanager
async def _parts(
    tmp_path: Path,
    *,
    headroom: float = 0.25,
    deadline_margin_s: float = 1800.0,
    retry_backoff_s: float = 1.0,
) -> AsyncIterator[Parts]:
    with _tiers() as (small, small_url, x, x_url):
        policy = tmp_path / "deferred.yaml"
        policy.write_text(POLICY.format(small=small_url, x=x_url))
        database = tmp_path / "ledger.db"
        url = f"sqlite:///{database}"
        spool = str(tmp_path / "spool")
        proxy = Proxy(ServerSettings(policies=(str(policy),), database_url=url, spool_path=spool))
        await proxy.start()
        store = BatchStore(create_engine(url))
        runner = BatchRunner(
            proxy,
            store,
            Metrics(),
            concurrency=4,
            lease_s=60,
            poll_s=0.01,
            headroom=headroom,
            deadline_margin_s=deadline_margin_s,
            retry_backoff_s=retry_backoff_s,
        )
        try:
            yield Parts(proxy, store, runner, database, small, x)
        finally:
            await runner.aclose()
            await store.aclose()
            await proxy.close()


@pytest.fixture(autouse=True)
def _x_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_TEST_X_KEY", "sk-test")


async def _until(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll until ``done()``, failing after ``timeout_s`` rather than waiting forever."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the runner never got there"
        await asyncio.sleep(0.01)


def test_a_batch_waits_while_interactive_work_fills_the_tier(tmp_path: Path) -> None:
    """With half of small's 4 slots kept free and 2 interactive calls in flight, nothing of the
    batch runs; once they end, all of it runs on small and never on the API tier."""

    async def run() -> None:
        async with _parts(tmp_path, headroom=0.5) as parts:
            await parts.queue(3)
            busy = ExitStack()
            for _ in range(2):
                busy.enter_context(parts.proxy.capacity.track("small"))
            assert parts.runner.free_slots() == 0
            await parts.settle()
            assert parts.rows("SELECT count(*) FROM requests") == [(0,)]
            assert parts.small.calls == 0
            busy.close()
            while parts.rows("SELECT count(*) FROM batch_requests WHERE status='done'") != [(3,)]:
                await parts.settle()
            assert parts.rows("SELECT DISTINCT tier FROM attempts") == [("small",)]
            assert parts.x.calls == 0

    asyncio.run(run())


def test_deferred_calls_give_their_slots_to_waiting_interactive_requests(tmp_path: Path) -> None:
    """Deferred calls fill small's spare slots; an interactive request that then has to wait for
    a slot gets one at the runner's next step (a deferred call is cut and re-queued, unrun)."""

    async def run() -> None:
        async with _parts(tmp_path, headroom=0.0) as parts:
            parts.small.hold = threading.Event()
            await parts.queue(4)
            await parts.runner.step()
            await _until(lambda: parts.proxy.capacity.in_flight("small") >= 4)
            tier = parts.proxy.routers["deferred"].policy.tier("small")
            interactive = asyncio.create_task(parts.proxy.capacity.admit(tier))
            await _until(lambda: parts.proxy.capacity.waiting("small") >= 1)
            await parts.runner.step()
            await interactive  # a deferred call gave its slot up
            assert parts.runner.free_slots() == 0  # and no more deferred work is taken
            parts.small.hold.set()
            parts.proxy.capacity.release("small")
            while parts.rows("SELECT count(*) FROM batch_requests WHERE status='done'") != [(4,)]:
                await parts.settle()
            assert parts.rows("SELECT count(*) FROM requests") == [(4,)]
            assert parts.rows("SELECT max(attempts) FROM batch_requests") == [(1,)]

    asyncio.run(run())


def test_a_batch_near_its_deadline_goes_to_the_api_tier(tmp_path: Path) -> None:
    """Within batch_deadline_margin_s of its deadline, with small full of interactive calls, the
    batch runs on the API tier x and the ledger's reason says why."""

    async def run() -> None:
        async with _parts(tmp_path, deadline_margin_s=7200) as parts:
            await parts.queue(2, window=timedelta(hours=1))
            with ExitStack() as busy:
                for _ in range(4):
                    busy.enter_context(parts.proxy.capacity.track("small"))
                await parts.settle()
            assert parts.rows("SELECT DISTINCT tier FROM attempts") == [("x",)]
            reasons = [str(r[0]) for r in parts.rows("SELECT decision_reason FROM requests")]
            assert len(reasons) == 2
            assert all("deadline" in reason for reason in reasons)

    asyncio.run(run())


def test_a_503_requeues_the_request_and_it_succeeds_later(tmp_path: Path) -> None:
    """small answers 503: the request goes back to the queue (not into the error file) and runs
    once small answers; it is recorded once."""

    async def run() -> None:
        async with _parts(tmp_path, retry_backoff_s=0.01) as parts:
            parts.small.mode = "503"
            await parts.queue(1)
            await parts.settle()
            assert parts.rows("SELECT status, attempts FROM batch_requests") == [("queued", 1)]
            parts.small.mode = "ok"
            while parts.rows("SELECT status FROM batch_requests") != [("done",)]:
                await parts.settle()
            assert parts.rows("SELECT count(*) FROM requests") == [(1,)]
            assert parts.x.calls == 0

    asyncio.run(run())
