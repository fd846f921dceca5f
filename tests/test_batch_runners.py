"""Batch jobs shared by several runners, and surviving a killed one: every request runs once
(Postgres row locks) and is recorded once in the ledger and in the output file."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import openai
from sqlalchemy import func, select

from cascade.ledger import create_engine
from cascade.ledger.batch_lines import BatchLine
from cascade.ledger.batches import BatchStore
from cascade.ledger.migrate import upgrade_database
from cascade.ledger.models import Attempt, BatchRequest, Request
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import running_tier, serving, wait_until
from tests.test_batches import QUESTIONS, chat_line, jsonl, policy_file, wait_for_end
from tests.test_proxy_ledger import postgres_database
from tests.upstreams import closed_port


def _lines(count: int) -> list[BatchLine]:
    body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
    return [BatchLine(n, f"r{n}", body) for n in range(1, count + 1)]


def test_concurrent_claims_on_postgres_never_share_a_request() -> None:
    """Two stores on their own engines claim at once, 40 times: every request is handed out
    exactly once (FOR UPDATE SKIP LOCKED)."""
    with postgres_database() as url:
        upgrade_database(url)

        async def run() -> list[str]:
            stores = [BatchStore(create_engine(url)), BatchStore(create_engine(url))]
            try:
                await stores[0].create_batch(
                    _lines(200),
                    input_file_id="file-x",
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    window=timedelta(hours=24),
                    metadata=None,
                    tenant=None,
                    key_id=None,
                    only_tiers=None,
                )
                lease = timedelta(minutes=5)
                claims = [stores[n % 2].claim(f"w{n % 2}", 7, lease) for n in range(40)]
                taken = await asyncio.gather(*claims)
                return [claimed.id for batch in taken for claimed in batch]
            finally:
                for store in stores:
                    await store.aclose()

        ids = asyncio.run(run())
    assert len(ids) == 200
    assert len(set(ids)) == 200


def _tier_calls(tiers: list[str]) -> int:
    """Requests the simulated tiers have finished (each call of every runner)."""
    total = 0
    for url in tiers:
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:request_success_total"):
                total += int(float(line.split()[-1]))
    return total


async def _ledger_counts(url: str) -> tuple[int, int, int]:
    """Requests rows, distinct request ids, attempt rows."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(Request))).scalar_one()
            ids = (
                await conn.execute(select(func.count(func.distinct(Request.request_id))))
            ).scalar_one()
            attempts = (await conn.execute(select(func.count()).select_from(Attempt))).scalar_one()
            runners = (
                await conn.execute(select(func.count(func.distinct(BatchRequest.claimed_by))))
            ).scalar_one()
    finally:
        await engine.dispose()
    assert runners == 2  # both proxies took part of the job
    return rows, ids, attempts


def test_two_proxies_on_postgres_run_each_request_once(tmp_path: Path) -> None:
    """Two proxies share one job on one database: 60 requests, 60 ledger rows, and as many
    tier calls as recorded attempts (no request ran twice)."""
    with (
        postgres_database() as url,
        running_tier("1.5b", time_scale=0.02) as small,
        running_tier("7b", time_scale=0.02) as medium,
    ):
        policy = str(policy_file(tmp_path, small, medium))
        apps = [
            create_app(
                ServerSettings(
                    policies=(policy,),
                    database_url=url,
                    spool_path=str(tmp_path / f"spool{n}"),
                    batch_poll_s=0.02,
                )
            )
            for n in range(2)
        ]
        with serving(apps[0]) as first, serving(apps[1]) as second:
            lines = [chat_line(f"q{n}", QUESTIONS[n % 3]) for n in range(60)]
            with (
                openai.OpenAI(base_url=f"{first}/v1", api_key="-", max_retries=0) as a,
                openai.OpenAI(base_url=f"{second}/v1", api_key="-", max_retries=0) as b,
            ):
                uploaded = a.files.create(file=("q.jsonl", jsonl(lines)), purpose="batch")
                batch = a.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
                ended = wait_for_end(b, batch.id)
                assert ended.status == "completed"
                assert ended.output_file_id is not None
                output = b.files.content(ended.output_file_id).text.splitlines()
        rows, ids, attempts = asyncio.run(_ledger_counts(url))
        calls = _tier_calls([small, medium])
    assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(
        f"q{n}" for n in range(60)
    )
    assert (rows, ids) == (60, 60)
    assert calls == attempts


@contextmanager
def _cascade_serve(
    policy: Path, database: Path, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``cascade serve`` with a 2-second batch lease, ready; killed if still running after."""
    port = closed_port()
    command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
    command += ["--port", str(port), "--database-url", f"sqlite:///{database}"]
    command += ["--spool", str(log.with_suffix(".spool")), "--batch-lease", "2"]
    command += ["--batch-concurrency", "2", "--log-level", "info"]
    with log.open("wb") as stderr:
        server = subprocess.Popen(command, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _ready(url) or server.poll() is not None, 60), log.read_text()
        assert server.poll() is None, log.read_text()
        yield server, url
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_a_killed_proxy_leaves_no_request_lost_or_run_twice(tmp_path: Path) -> None:
    """SIGKILL the proxy mid-job; another takes over once the leases lapse: every request of the
    job is in the ledger once and in the output file once."""
    database = tmp_path / "ledger.db"
    with (
        running_tier("1.5b", time_scale=0.3) as small,
        running_tier("7b", time_scale=0.3) as medium,
    ):
        policy = policy_file(tmp_path, small, medium)
        lines = [chat_line(f"k{n}", QUESTIONS[n % 3]) for n in range(16)]
        with _cascade_serve(policy, database, tmp_path / "first.log") as (server, url):
            with openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as client:
                uploaded = client.files.create(file=("k.jsonl", jsonl(lines)), purpose="batch")
                batch = client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )

                def some_done() -> bool:
                    counts = client.batches.retrieve(batch.id).request_counts
                    return counts is not None and counts.completed >= 3

                assert wait_until(some_done, 60)
            server.send_signal(signal.SIGKILL)
            server.wait(30)
        with sqlite3.connect(database) as conn:
            left = conn.execute(
                "SELECT count(*) FROM batch_requests WHERE status != 'done'"
            ).fetchone()[0]
        assert left > 0  # the kill came mid-job
        with (
            _cascade_serve(policy, database, tmp_path / "second.log") as (_, url),
            openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as client,
        ):
            ended = wait_for_end(client, batch.id)
            assert ended.status == "completed"
            assert ended.output_file_id is not None
            output = [
                json.loads(line)
                for line in client.files.content(ended.output_file_id).text.splitlines()
            ]
    assert sorted(r["custom_id"] for r in output) == sorted(f"k{n}" for n in range(16))
    with sqlite3.connect(database) as conn:
        recorded = [row[0] for row in conn.execute("SELECT request_id FROM requests")]
    assert sorted(recorded) == sorted(r["response"]["request_id"] for r in output)
