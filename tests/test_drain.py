"""Graceful drain: ``cascade serve`` stopped with SIGTERM under load, as Kubernetes stops a pod.

Every request accepted before the signal ends with its whole answer (no reset, no cut stream),
``/readyz`` fails at once, connections are refused once the drain delay is over, the process
exits 0, and the ledger holds every request exactly once; a request that outlives the drain
timeout is cut, told so, and recorded as cut by the shutdown.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cascade.ledger import create_engine
from cascade.ledger.models import Attempt, Request
from tests.servers import running_tier, wait_until
from tests.test_proxy_ledger import postgres_database
from tests.upstreams import closed_port

POLICY = """\
name: drain
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{url}/v1", threshold: 0.0,
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}}}
escalation:
  streaming: passthrough
"""
PROMPT = "Write a long story about a dragon."  # the simulated 1.5B answers it in 46 tokens
CLIENTS = 20


@dataclass(frozen=True)
class Answer:
    """What one client got."""

    status: int
    request_id: str
    complete: bool
    """The whole answer: a JSON body with its message, or a stream ending in ``[DONE]``."""
    events: tuple[str, ...] = ()
    """A stream's ``data:`` payloads; a plain answer's body."""
    connection: str | None = None
    """The ``Connection`` header: ``close`` once the server drains."""


def _ask(url: str, *, stream: bool, client: httpx.Client | None = None) -> Answer:
    """One chat completion on a connection of its own (or on ``client``'s)."""
    body = {"model": "cascade", "messages": [{"role": "user", "content": PROMPT}]}
    with (
        httpx.Client(timeout=60) if client is None else nullcontext(client) as http,
        http.stream("POST", f"{url}/v1/chat/completions", json=body | {"stream": stream}) as r,
    ):
        request_id, connection = r.headers["x-cascade-request-id"], r.headers.get("connection")
        if not stream or r.status_code != 200:
            r.read()
            content = r.json().get("choices", [{}])[0].get("message", {}).get("content")
            return Answer(r.status_code, request_id, bool(content), (r.text,), connection)
        events = tuple(
            line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")
        )
    done = events[-1:] == ("[DONE]",) and not any('"error"' in event for event in events)
    return Answer(r.status_code, request_id, done, events, connection)


def _serve(
    policy: Path, port: int, database: str, log: Path, *, workers: int, delay: float, timeout: float
) -> subprocess.Popen[bytes]:
    """``cascade serve`` with the drain's delay and timeout, its log in ``log``."""
    command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
    command += ["--port", str(port), "--workers", str(workers), "--log-level", "info"]
    command += ["--database-url", database, "--spool", str(log.parent / "ledger.spool")]
    command += ["--drain-delay", str(delay), "--drain-timeout", str(timeout)]
    with log.open("wb") as stderr:
        return subprocess.Popen(command, stderr=stderr)


@contextmanager
def _proxy(
    tier: str, tmp_path: Path, database: str, *, workers: int = 1, delay: float, timeout: float
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``cascade serve`` in front of the simulated tier at ``tier``, ready; killed if a test
    left it running."""
    policy = tmp_path / "drain.yaml"
    policy.write_text(POLICY.format(url=tier))
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = _serve(policy, port, database, log, workers=workers, delay=delay, timeout=timeout)
    try:
        # Every worker (or the one process) has run its lifespan, and /readyz answers.
        assert wait_until(lambda: _started(log) == workers or server.poll() is not None, 60)
        assert server.poll() is None, log.read_text()
        assert wait_until(lambda: _readiness(url) is not None, 10)
        yield server, url, log
    finally:
        if server.poll() is None:  # the test failed: a second signal cuts what is left at once
            server.send_signal(signal.SIGTERM)
            server.send_signal(signal.SIGTERM)
            server.wait(60)


def _started(log: Path) -> int:
    """Server processes that have run the app's lifespan (uvicorn says so in its log)."""
    return log.read_text().count("Application startup complete")


def _readiness(url: str) -> str | None:
    """``/readyz``'s answer on a new connection (``"200 ready"``); None when refused."""
    try:
        answer = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.TransportError:
        return None
    return f"{answer.status_code} {answer.json()['status']}"


def _running(tier: str) -> int:
    """Requests the simulated tier is working on (running or queued)."""
    text = httpx.get(f"{tier}/metrics", timeout=5).text
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(names))


def _ledger(url: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Every request row and attempt row in the ledger's database."""

    async def read() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as db:
                requests = [dict(r._mapping) for r in await db.execute(select(Request.__table__))]
                attempts = [dict(r._mapping) for r in await db.execute(select(Attempt.__table__))]
        finally:
            await engine.dispose()
        return requests, attempts

    return asyncio.run(read())


def _logged(log: Path, event: str) -> list[dict[str, object]]:
    """The JSON log lines of ``event`` (one per worker)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


@contextmanager
def _database(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty ledger database: an SQLite file, or a Postgres database of its own."""
    if kind == "postgres":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 1), ("postgres", 2)])
def test_sigterm_under_load_finishes_every_accepted_request(
    kind: str, workers: int, tmp_path: Path
) -> None:
    """Twenty clients (half streaming) are mid-answer when SIGTERM comes: /readyz turns 503 at
    once, a kept-alive connection is still served during the drain delay, new connections are
    refused after it, every answer arrives whole, the process exits 0, and the ledger holds
    each request exactly once."""
    # 46 tokens take ~10 ms of simulated time: ~5 s each here, well past the 2 s delay.
    with (
        running_tier("1.5b", time_scale=500) as tier,
        _database(kind, tmp_path) as database,
        _proxy(tier, tmp_path, database, workers=workers, delay=2.0, timeout=30) as proxy,
        ThreadPoolExecutor(CLIENTS) as pool,
        httpx.Client(timeout=60) as kept,
    ):
        server, url, log = proxy
        assert kept.get(f"{url}/readyz").status_code == 200  # its connection stays open
        answers = [pool.submit(_ask, url, stream=n % 2 == 1) for n in range(CLIENTS)]
        assert wait_until(lambda: _running(tier) == CLIENTS, 30), log.read_text()
        server.send_signal(signal.SIGTERM)

        assert wait_until(lambda: _readiness(url) == "503 draining", 10)
        during_delay = _ask(url, stream=False, client=kept)  # on the kept-alive connection
        refused = wait_until(lambda: _readiness(url) is None, 20)
        still_draining = server.poll() is None  # answers were in flight when it stopped accepting
        assert server.wait(45) == 0, log.read_text()
        requests, _ = _ledger(database)

    assert refused
    assert still_draining
    got = [answer.result(60) for answer in answers]
    assert [(a.status, a.complete) for a in got] == [(200, True)] * CLIENTS
    assert (during_delay.status, during_delay.complete) == (200, True)
    assert during_delay.connection == "close"  # the client reconnects, to another replica
    ids = sorted(str(row["request_id"]) for row in requests)
    assert ids == sorted([a.request_id for a in got] + [during_delay.request_id])
    assert {row["http_status"] for row in requests} == {200}
    drained = _logged(log, "server.drained")
    assert len(drained) == workers
    assert sum(int(str(line["requests_cut"])) for line in drained) == 0


@pytest.mark.parametrize(("how", "workers"), [("drain timeout", 1), ("second signal", 2)])
def test_what_outlives_the_drain_is_cut_told_so_and_recorded_as_cut(
    how: str, workers: int, tmp_path: Path
) -> None:
    """A stream and a plain request still running when the drain timeout ends (or when a
    second signal comes) are cut: the stream ends with an error event (code ``shutdown``)
    instead of a reset, the plain request gets a 503 saying why, the process still exits 0,
    and the ledger records both as cut by the shutdown."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    # A second signal comes once the workers drain: with no delay, while they wait for answers.
    delay, timeout = (0.2, 1.0) if how == "drain timeout" else (0.0, 60.0)
    with (
        running_tier("1.5b", time_scale=500) as tier,  # ~5 s per answer: past the drain's 1.2 s
        _proxy(tier, tmp_path, database, workers=workers, delay=delay, timeout=timeout) as proxy,
        ThreadPoolExecutor(2) as pool,
    ):
        server, url, log = proxy
        stream = pool.submit(_ask, url, stream=True)
        plain = pool.submit(_ask, url, stream=False)
        assert wait_until(lambda: _running(tier) == 2, 30), log.read_text()
        server.send_signal(signal.SIGTERM)
        if how == "second signal":  # once every worker drains: a second signal cuts at once
            assert wait_until(lambda: len(_logged(log, "server.draining")) == workers, 10)
            server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, log.read_text()
        cut_stream, cut_plain = stream.result(30), plain.result(30)

    assert cut_stream.status == 200  # its headers and first chunks went out before
    assert not cut_stream.complete
    assert len(cut_stream.events) > 1
    assert json.loads(cut_stream.events[-1])["error"]["code"] == "shutdown"
    assert cut_plain.status == 503
    assert json.loads(cut_plain.events[0])["error"]["code"] == "shutdown"
    requests, attempts = _ledger(database)
    by_id = {row["request_id"]: row for row in requests}
    assert set(by_id) == {cut_stream.request_id, cut_plain.request_id}
    assert {(row["http_status"], row["status"]) for row in requests} == {(503, "error")}
    assert by_id[cut_stream.request_id]["stream"] is True
    assert [a["error_class"] for a in attempts] == ["shutdown", "shutdown"]
    drained = _logged(log, "server.drained")
    assert sum(int(str(line["requests_cut"])) for line in drained) == 2
