"""The run of a request through the real proxy: one loop for complete and streamed answers,
tier health that only counts the tier's own failures, and a record of every request that
reached a tier, whatever the client does."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from cascade.ledger import create_engine
from cascade.ledger.models import Attempt, Request
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier

HI = [{"role": "user", "content": "What is 2+2?"}]


@dataclass
class Run:
    """Scripted tiers behind a proxy that keeps a SQLite ledger."""

    url: str
    small: ScriptedTier
    big: ScriptedTier
    database: str

    def post(self, **body: object) -> httpx.Response:
        payload = {"model": "cascade", "messages": HI, **body}
        return httpx.post(f"{self.url}/v1/chat/completions", json=payload, timeout=30)

    def rows(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """Every requests row and attempts row in the ledger now."""

        async def read() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
            engine = create_engine(self.database)
            try:
                async with engine.connect() as conn:
                    requests = await conn.execute(select(Request.__table__))
                    attempts = await conn.execute(select(Attempt.__table__))
                    return [dict(r._mapping) for r in requests], [
                        dict(r._mapping) for r in attempts
                    ]
            finally:
                await engine.dispose()

        return asyncio.run(read())

    def metric(self, name: str) -> str:
        """The /metrics lines that start with ``name``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return "\n".join(line for line in text.splitlines() if line.startswith(name))


def _run(tmp_path: Path, extra: str = "") -> Iterator[Run]:
    small, big = ScriptedTier("small"), ScriptedTier("big")
    with serving(small.app()) as s, serving(big.app()) as b:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=b, big=b) + extra)
        database = f"sqlite:///{tmp_path / 'ledger.db'}"
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=database,
            spool_path=str(tmp_path / "ledger.spool"),
        )
        with serving(create_app(settings)) as url:
            yield Run(url, small, big, database)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """Small and big scripted tiers, a proxy and its ledger; the policy buffers streams."""
    yield from _run(tmp_path)


@pytest.fixture
def passthrough(tmp_path: Path) -> Iterator[Run]:
    """Like ``run``, under a policy that streams straight through."""
    yield from _run(tmp_path, "  streaming: passthrough\n")


def test_a_stream_the_client_abandons_is_recorded_and_its_tier_call_closed(
    passthrough: Run,
) -> None:
    """A client that stops reading a passthrough stream half-way still leaves one requests row
    (status 499) and its attempt, the tier's connection is closed, and its in-flight count
    returns to zero."""
    gate = threading.Event()
    passthrough.small.stream_gate = gate
    try:
        body = {"model": "cascade", "messages": HI, "stream": True}
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{passthrough.url}/v1/chat/completions", json=body) as reply,
        ):
            assert reply.status_code == 200
            lines = reply.iter_lines()  # kept: a dropped iterator would close the response
            assert next(lines).startswith("data: ")
            assert 'cascade_in_flight{tier="small"} 1' in passthrough.metric("cascade_in_flight")
        # The client hung up with the tier still mid-answer.
        assert wait_until(lambda: passthrough.small.streams_ended_early == 1)
        assert wait_until(lambda: len(passthrough.rows()[0]) == 1)
    finally:
        gate.set()
    requests, attempts = passthrough.rows()
    assert requests[0]["http_status"] == 499
    assert requests[0]["status"] == "error"
    assert requests[0]["final_tier"] == "small"
    assert [(a["tier"], a["outcome"], a["error_class"]) for a in attempts] == [
        ("small", "error", "client_gone")
    ]
    assert 'cascade_in_flight{tier="small"} 0' in passthrough.metric("cascade_in_flight")


@pytest.mark.parametrize(
    ("proxy", "stream"),
    [("run", False), ("run", True), ("passthrough", True)],
    ids=["plain", "buffered-stream", "passthrough-before-its-first-chunk"],
)
def test_a_client_gone_before_its_answer_frees_the_tiers_call_and_is_recorded(
    request: pytest.FixtureRequest, proxy: str, stream: bool
) -> None:
    """A client that hangs up while the tier still works on its answer (not streamed,
    buffered, or a passthrough stream that has not started): the proxy closes the tier's
    connection at once, the in-flight count returns to zero, and the request is recorded with
    status 499 and its call as ``client_gone``."""
    run: Run = request.getfixturevalue(proxy)
    hold = threading.Event()
    run.small.hold = hold
    body = json.dumps({"model": "cascade", "messages": HI, "stream": stream}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\n"
    head += b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    host, port = run.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(head + body)
            assert wait_until(lambda: run.small.calls == 1)
            assert 'cascade_in_flight{tier="small"} 1' in run.metric("cascade_in_flight")
        # The client hung up; the tier has not answered.
        assert wait_until(lambda: run.small.calls_abandoned == 1)
        assert wait_until(lambda: 'cascade_in_flight{tier="small"} 0' in run.metric("cascade_"))
        assert wait_until(lambda: len(run.rows()[0]) == 1)
    finally:
        hold.set()
    requests, attempts = run.rows()
    assert (requests[0]["http_status"], requests[0]["status"]) == (499, "error")
    assert [(a["tier"], a["outcome"], a["error_class"]) for a in attempts] == [
        ("small", "error", "client_gone")
    ]


def test_a_finished_passthrough_stream_is_recorded_once_with_its_usage(passthrough: Run) -> None:
    """A stream that runs to its end leaves exactly one row, priced from the tier's usage."""
    reply = passthrough.post(stream=True)
    assert reply.status_code == 200
    assert reply.text.endswith("data: [DONE]\n\n")
    assert wait_until(lambda: len(passthrough.rows()[0]) == 1)
    requests, attempts = passthrough.rows()
    assert requests[0]["http_status"] == 200
    assert (requests[0]["prompt_tokens"], requests[0]["completion_tokens"]) == (100, 3)
    assert [(a["tier"], a["outcome"]) for a in attempts] == [("small", "ok")]


def test_a_tiers_retry_after_keeps_traffic_off_it_for_that_long(run: Run) -> None:
    """A 429 with Retry-After skips the tier for that long, though one failure is below its
    max_failures; the spill answers meanwhile."""
    run.small.mode, run.small.retry_after = "429", "120"
    first = run.post()
    assert first.headers["x-cascade-attempts"] == "small:error(rate_limited),big:ok"
    run.small.mode = "ok"  # it would answer now, but it asked for two minutes
    second = run.post()
    assert second.status_code == 200
    assert second.headers["x-cascade-tier"] == "big"
    assert run.small.calls == 1


def test_when_every_tier_asks_to_wait_the_client_is_told_how_long(run: Run) -> None:
    """An upstream Retry-After reaches the client on the 503 when no tier could answer."""
    for tier in (run.small, run.big):
        tier.mode, tier.retry_after = "503", "30"
    reply = run.post()
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "30"


def test_client_errors_never_move_a_tiers_traffic(run: Run) -> None:
    """A tier's 400 is the client's mistake: it is answered as a 400, and any number of them
    leave the cheap tier in service (max_failures is 2 in this policy)."""
    run.small.mode = "400"
    for _ in range(4):
        reply = run.post()
        assert reply.status_code == 400
        assert "temperature" in reply.json()["error"]["message"]
    run.small.mode = "ok"
    assert run.post().headers["x-cascade-tier"] == "small"
    assert run.big.calls == 0


def test_a_buffered_stream_is_verified_before_its_first_byte(run: Run) -> None:
    """With ``buffer`` streaming, an answer cut at max_tokens is escalated before anything is
    streamed, and the client's stream comes from the stronger tier."""
    run.small.mode = "length"
    reply = run.post(stream=True)
    assert reply.status_code == 200
    assert reply.headers["x-cascade-attempts"] == "small:rejected(length),medium:ok"
    events = [line for line in reply.text.splitlines() if line.startswith("data: {")]
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == "answer from big"  # medium is served by the "big" scripted tier here


@pytest.mark.parametrize("log_prompts", [True, False])
def test_prompts_are_logged_only_when_the_policy_asks(tmp_path: Path, log_prompts: bool) -> None:
    """``prompt.log_prompts`` puts the request's messages on its log line; off, no line
    carries them."""
    extra = f"prompt:\n  log_prompts: {str(log_prompts).lower()}\n"
    secret = "my passport number is X1234567"
    with capture_logs() as logs:
        for run in _run(tmp_path, extra):
            messages = [{"role": "user", "content": secret}]
            assert run.post(messages=messages).status_code == 200
            run.small.mode = "503"
            run.big.mode = "503"
            assert run.post(messages=messages).status_code == 503
    lines = [e for e in logs if e["event"] in ("request.completed", "request.failed")]
    assert [e["event"] for e in lines] == ["request.completed", "request.failed"]
    for line in lines:
        if log_prompts:
            assert secret in str(line["prompt"])
        else:
            assert "prompt" not in line
            assert secret not in json.dumps(line, default=str)


def test_a_python_service_runs_requests_through_cascade_router(tmp_path: Path) -> None:
    """``cascade.Router.open`` gives a library caller the proxy's whole way: a rejected cheap
    answer is escalated, a failing tier spilled, and a stream relayed with its attempt."""
    import cascade  # noqa: PLC0415 - the public API, as a service imports it

    small, big = ScriptedTier("small"), ScriptedTier("big")
    with serving(small.app()) as s, serving(big.app()) as b:
        policy = tmp_path / "library.yaml"
        policy.write_text(POLICY.format(small=s, medium=b, big=b))

        async def use() -> tuple[cascade.Completion, cascade.Completion, list[str], str]:
            async with cascade.Router.open(policy) as router:
                small.mode = "length"
                escalated = await router.complete({"messages": HI})
                small.mode = "503"
                spilled = await router.complete({"messages": HI})
                small.mode = "ok"
                request = cascade.ChatRequest.of({"messages": HI, "stream": True})
                run = await router.stream(request, await router.plan(request))
                texts = [
                    c["choices"][0]["delta"].get("content", "")
                    async for c in run.chunks()
                    if c.get("choices")
                ]
                return escalated, spilled, texts, cascade.describe_attempts(run.attempts)

        escalated, spilled, texts, streamed = asyncio.run(use())
    assert [(a.tier, a.outcome) for a in escalated.attempts] == [
        ("small", "rejected"),
        ("medium", "ok"),
    ]
    assert escalated.body["choices"][0]["message"]["content"] == "answer from big"
    assert escalated.cost_usd > 0
    assert [(a.tier, a.role, a.error_class) for a in spilled.attempts] == [
        ("small", "primary", "unavailable"),
        ("big", "spill", None),
    ]
    assert "".join(texts) == "answer from small"
    assert streamed == "small:ok"
