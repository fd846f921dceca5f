"""The proxy facing upstream error answers of odd shapes: it spills, answers, and records them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cascade.ledger import create_engine
from cascade.ledger.models import Attempt
from cascade.ledger.models import Request as RequestRow
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier


def overloaded() -> Starlette:
    """A tier that answers every call 503 with a bare string as its error."""

    async def chat(request: Request) -> Response:
        await request.body()
        return Response(b'{"error": "model is overloaded"}', 503, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def _rows(url: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            requests = [dict(r._mapping) for r in await conn.execute(select(RequestRow.__table__))]
            attempts = [dict(r._mapping) for r in await conn.execute(select(Attempt.__table__))]
    finally:
        await engine.dispose()
    return requests, attempts


def test_a_503_with_a_string_error_spills_to_the_overflow_tier_and_is_recorded(
    tmp_path: Path,
) -> None:
    """A cheap tier answering 503 ``{"error": "model is overloaded"}`` does not break the proxy:
    the request spills to the overflow tier, which answers 200, and the ledger records the
    request with the failed attempt and its message."""
    medium, big = ScriptedTier("medium"), ScriptedTier("big")
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    with serving(overloaded()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "errors.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b))
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as url:
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "cascade", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "answer from big"
    assert response.headers["x-cascade-attempts"] == "small:error(unavailable),big:ok"
    requests, attempts = asyncio.run(_rows(database))  # the proxy has shut down and flushed
    assert [(r["status"], r["final_tier"]) for r in requests] == [("ok", "big")]
    failed = next(a for a in attempts if a["tier"] == "small")
    assert (failed["outcome"], failed["error_class"]) == ("error", "unavailable")
    assert "model is overloaded" in str(failed["reason"])
    assert sorted(str(a["tier"]) for a in attempts) == ["big", "small"]


API_FIRST = """\
name: apifirst
tiers:
  - name: frontier
    model: openai/gpt-4o
    kind: api
    endpoint: {frontier}/v1
    api_key_env: CASCADE_TEST_FRONTIER_KEY
    overflow: backup
    max_failures: 2
    cooldown_s: 60
  - name: backup
    model: distill-7b
    kind: self_hosted
    endpoint: {backup}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
"""


def test_fields_litellm_cannot_use_are_the_clients_mistake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``response_format`` or ``metadata`` that is not an object, sent to an API tier, is
    answered 400 every time (never a spill to another tier, never a 5xx), and the API tier stays
    in service however many such requests came: the next normal request goes to it."""
    monkeypatch.setenv("CASCADE_TEST_FRONTIER_KEY", "sk-test")
    frontier, backup = ScriptedTier("frontier"), ScriptedTier("backup")
    with serving(frontier.app()) as f, serving(backup.app()) as b:
        policy = tmp_path / "apifirst.yaml"
        policy.write_text(API_FIRST.format(frontier=f, backup=b))
        with serving(create_app(ServerSettings(policies=(str(policy),)))) as url:

            def ask(**extra: object) -> httpx.Response:
                body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
                return httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, timeout=60)

            refused = [ask(response_format="hot") for _ in range(3)]
            refused += [ask(metadata=[1]) for _ in range(3)]
            normal = ask()
    assert [r.status_code for r in refused] == [400] * 6, [r.text for r in refused]
    assert "response_format must be an object" in refused[0].json()["error"]["message"]
    assert "metadata must be an object" in refused[-1].json()["error"]["message"]
    assert normal.status_code == 200
    assert normal.headers["x-cascade-tier"] == "frontier"
    assert (frontier.calls, backup.calls) == (1, 0)
