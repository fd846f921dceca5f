"""Budgets in the proxy: a request reserves its worst case, settles what it cost, and a key's
budget is never overspent, by one worker or by many at once; when it is spent, the policy
refuses (429 ``insufficient_quota``) or serves from the self-hosted tiers only."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cascade.core.request import ChatRequest
from cascade.ledger import create_engine
from cascade.ledger.budgets import PeriodSpend, period_spend, period_start
from cascade.ledger.keys import Budget
from cascade.ledger.migrate import upgrade_database
from cascade.ledger.models import Request
from cascade.run.ceiling import prompt_token_ceiling
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until
from tests.test_keys import bearer, database_url, make_key
from tests.test_workers import _children, _ready, _shut_down
from tests.upstreams import ScriptedTier, closed_port

# $0.01 a token: the scripted tier's answer (100 prompt tokens, 20 output) costs $1.20; the
# request's worst case, for the prompt below capped at 20 output tokens, is a few times that.
ONE_TIER = """\
name: budgeted
escalation: {{max_attempts: 1}}
tiers:
  - {{name: small, model: s, kind: self_hosted, endpoint: "{small}/v1",
      price: {{input_usd_per_mtok: 10000, output_usd_per_mtok: 10000}}}}
"""
TWO_TIERS = """\
name: budgeted
budgets: {{on_spent: {on_spent}, max_output_tokens: 20}}
tiers:
  - {{name: small, model: s, kind: self_hosted, endpoint: "{small}/v1", threshold: 1.0,
      price: {{input_usd_per_mtok: 10000, output_usd_per_mtok: 10000}}}}
  - {{name: frontier, model: openai/frontier-x, kind: api, endpoint: "{frontier}/v1",
      api_key_env: CASCADE_TEST_FRONTIER_KEY,
      price: {{input_usd_per_mtok: 10000, output_usd_per_mtok: 10000}}}}
"""
TOKEN_USD = Decimal("0.01")
ANSWER_USD = 120 * TOKEN_USD
PROMPT = {"role": "user", "content": "Summarize this: " + "lorem ipsum " * 20}
ASK = {"model": "cascade", "messages": [PROMPT], "max_tokens": 20}


def _worst_case(attempts: int) -> Decimal:
    """What :data:`ASK` may cost: ``attempts`` calls of its prompt's ceiling and 20 tokens."""
    return attempts * (prompt_token_ceiling(ChatRequest.of(ASK)) + 20) * TOKEN_USD


def _spend(url: str, key_id: str) -> PeriodSpend | None:
    async def read() -> PeriodSpend | None:
        engine = create_engine(url)
        try:
            return await period_spend(engine, key_id, period_start("day", datetime.now(UTC)))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _ledger_cost(url: str, key_id: str) -> tuple[int, Decimal]:
    """How many of the key's requests the ledger holds, and what they cost in all."""

    async def read() -> list[Decimal]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(select(Request.cost_usd).where(Request.key_id == key_id))
                return [row.cost_usd for row in rows]
        finally:
            await engine.dispose()

    costs = asyncio.run(read())
    return len(costs), sum(costs, Decimal(0))


def _is_quota_refusal(response: httpx.Response) -> bool:
    error = response.json()["error"]
    return (
        response.status_code == 429
        and error["type"] == "insufficient_quota"
        and error["code"] == "insufficient_quota"
    )


@contextmanager
def _proxy(url: str, policy: str, tmp_path: Path, **tiers: ScriptedTier) -> Iterator[str]:
    """The proxy in this process, on ``url``'s ledger, before the scripted ``tiers``."""
    with ExitStack() as stack:
        urls = {name: stack.enter_context(serving(tier.app())) for name, tier in tiers.items()}
        path = tmp_path / "budgeted.yaml"
        path.write_text(policy.format(**urls))
        settings = ServerSettings(
            policies=(str(path),), database_url=url, spool_path=str(tmp_path / "spool")
        )
        yield stack.enter_context(serving(create_app(settings)))


def test_a_request_its_budget_cannot_cover_is_refused_in_openais_shape(tmp_path: Path) -> None:
    """A budget of the request's worst case and $1.80 more serves two requests of $1.20 each
    (the second fits once the first settled), then answers 429 ``insufficient_quota`` saying
    what the request may cost and what is left; the budget table and the ledger agree."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    worst = _worst_case(1)
    budget = worst + Decimal("1.80")
    record, key = make_key(url, "team-a", budget=Budget(budget, "day"))
    with _proxy(url, ONE_TIER, tmp_path, small=ScriptedTier("small")) as proxy:
        answers = [
            httpx.post(f"{proxy}/v1/chat/completions", json=ASK, headers=bearer(key), timeout=30)
            for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert _is_quota_refusal(answers[2])
    message = answers[2].json()["error"]["message"]
    assert f"key {record.key_id}" in message
    assert f"may cost up to ${worst:.6f}" in message
    assert f"${budget - 2 * ANSWER_USD:.6f} of the budget is left" in message
    spend = _spend(url, record.key_id)
    assert spend is not None
    assert (spend.settled_usd, spend.leased_usd) == (2 * ANSWER_USD, Decimal(0))
    assert _ledger_cost(url, record.key_id) == (2, 2 * ANSWER_USD)


def test_streams_settle_what_they_cost_whether_they_finish_or_are_abandoned(
    tmp_path: Path,
) -> None:
    """A passthrough stream that runs to its end is charged its usage; one whose client hangs
    up after the first chunk is charged what the ledger records for it; neither leaves
    anything reserved (a leaked reservation would stay leased after the proxy stops)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    record, key = make_key(url, "team-a", budget=Budget(Decimal(100), "day"))
    small = ScriptedTier("small")
    policy = ONE_TIER.replace("{{max_attempts: 1}}", "{{max_attempts: 1, streaming: passthrough}}")
    body = {**ASK, "stream": True}
    with _proxy(url, policy, tmp_path, small=small) as proxy, httpx.Client(timeout=30) as http:
        finished = http.post(f"{proxy}/v1/chat/completions", json=body, headers=bearer(key))
        assert finished.text.endswith("data: [DONE]\n\n")
        gate = threading.Event()
        small.stream_gate = gate
        try:
            with http.stream(
                "POST", f"{proxy}/v1/chat/completions", json=body, headers=bearer(key)
            ) as reply:
                lines = reply.iter_lines()  # kept: a dropped iterator would close the response
                assert next(lines).startswith("data: ")
            assert wait_until(lambda: small.streams_ended_early == 1)
            assert wait_until(lambda: _ledger_cost(url, record.key_id)[0] == 2)
        finally:
            gate.set()
    spend = _spend(url, record.key_id)
    assert spend is not None
    _, cost = _ledger_cost(url, record.key_id)
    assert (spend.settled_usd, spend.leased_usd) == (cost, Decimal(0))
    assert cost >= 103 * TOKEN_USD  # the finished stream's usage: 100 prompt and 3 output tokens


@pytest.mark.parametrize("on_spent", ["refuse", "self_hosted"])
def test_a_spent_budget_refuses_or_keeps_serving_from_the_self_hosted_tiers(
    on_spent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scorer sends every request to the API tier. A budget of its worst case (three
    attempts there) and 60 cents answers the first request there; then the API worst case no
    longer fits, and ``refuse`` answers 429 where
    ``self_hosted`` answers from the self-hosted tier, charging its spend beside the budget
    (which then covers API spend only) and refusing a request that names the API tier."""
    monkeypatch.setenv("CASCADE_TEST_FRONTIER_KEY", "sk-test")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    budget = _worst_case(3) + Decimal("0.60")
    record, key = make_key(url, "team-a", budget=Budget(budget, "day"))
    small, frontier = ScriptedTier("small"), ScriptedTier("frontier")
    ask = {"model": "cascade", "messages": [PROMPT]}  # no max_tokens: the policy caps it at 20
    policy = TWO_TIERS.replace("{on_spent}", on_spent)
    with _proxy(url, policy, tmp_path, small=small, frontier=frontier) as proxy:

        def post(body: dict[str, Any]) -> httpx.Response:
            return httpx.post(
                f"{proxy}/v1/chat/completions", json=body, headers=bearer(key), timeout=60
            )

        first = post(ask)
        assert first.status_code == 200, first.text
        assert first.headers["x-cascade-tier"] == "frontier"
        assert frontier.requests[0]["max_tokens"] == 20
        later = [post(ask) for _ in range(3)]
        named = post({**ask, "model": "openai/frontier-x"})
    if on_spent == "refuse":
        assert all(_is_quota_refusal(answer) for answer in later)
        assert small.calls == 0
    else:
        assert [a.headers.get("x-cascade-tier") for a in later] == ["small"] * 3
        assert small.requests[0]["max_tokens"] == 20
    assert _is_quota_refusal(named)
    spend = _spend(url, record.key_id)
    assert spend is not None
    assert spend.settled_usd == ANSWER_USD  # the one API answer
    assert spend.self_hosted_usd == (3 * ANSWER_USD if on_spent == "self_hosted" else 0)


@contextmanager
def _two_workers(
    policy: Path, url: str, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``cascade serve --workers 2`` on ``url``'s ledger, both workers ready."""
    port = closed_port()
    command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
    command += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    command += ["--drain-delay", "0"]  # no load balancer to wait for on SIGTERM
    command += ["--database-url", url, "--spool", str(tmp_path / "ledger.spool")]
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_KEY_PEPPER"}
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(command, stderr=stderr, stdout=stderr, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_until(lambda: len(_children(server.pid)) == 2 and _ready(base), 90)
        assert ready, log.read_text()
        yield base, server
    finally:
        _shut_down(server)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_64_concurrent_requests_on_two_workers_never_overspend_the_budget(
    kind: str, tmp_path: Path
) -> None:
    """64 clients at once, on two worker processes, each asking again after every answer until
    it is refused, against $60 (fifty answers at most): every request is answered or refused
    with 429 ``insufficient_quota``, and what was spent — in the budget table and in the
    ledger's cost of the key's requests — is never more than $60."""
    with database_url(kind, tmp_path) as url, serving(ScriptedTier("small").app()) as tier:
        policy = tmp_path / "budgeted.yaml"
        policy.write_text(ONE_TIER.format(small=tier))
        upgrade_database(url)
        record, key = make_key(url, "team-a", budget=Budget(Decimal(60), "day"))
        statuses: list[int] = []
        with _two_workers(policy, url, tmp_path) as (base, server):

            def client(_: int) -> list[int]:
                seen = []
                with httpx.Client(timeout=60) as http:  # a connection of its own
                    for _ in range(10):
                        answer = http.post(
                            f"{base}/v1/chat/completions", json=ASK, headers=bearer(key)
                        )
                        assert answer.status_code == 200 or _is_quota_refusal(answer), answer.text
                        seen.append(answer.status_code)
                        if answer.status_code == 429:
                            break
                return seen

            with ThreadPoolExecutor(64) as pool:
                for seen in pool.map(client, range(64)):
                    statuses += seen
            server.send_signal(signal.SIGTERM)  # the workers settle their blocks as they stop
            assert server.wait(60) == 0
        spend = _spend(url, record.key_id)
        served = statuses.count(200)
        recorded, ledger_usd = _ledger_cost(url, record.key_id)
    assert set(statuses) == {200, 429}
    assert spend is not None
    assert spend.leased_usd == 0
    assert spend.settled_usd == served * ANSWER_USD == ledger_usd
    assert recorded == served
    assert spend.settled_usd <= Decimal(60)
    print(f"{kind}: {served} served, {statuses.count(429)} refused, ${spend.settled_usd} of $60")
