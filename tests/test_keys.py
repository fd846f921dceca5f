"""Virtual keys: ``cascade keys``, and what the proxy lets each key do.

The proxy runs for real (uvicorn on loopback, scripted tiers, an SQLite or Postgres ledger); keys
are made with the CLI or the ledger's functions, as an operator would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from cascade.cli import main
from cascade.ledger.database import run_with_engine
from cascade.ledger.keys import KeyRecord, create_key
from cascade.ledger.migrate import upgrade_database
from cascade.ledger.models import Request
from cascade.run.ids import new_request_id
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.ledger_databases import Outage
from tests.servers import serving, wait_until
from tests.test_proxy import POLICY
from tests.test_proxy_ledger import postgres_database, relay_loop
from tests.upstreams import ScriptedTier

HI = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}


def make_key(url: str, tenant: str, **limits: Any) -> tuple[KeyRecord, str]:
    """A key in the database at ``url`` (migrated first), made as ``cascade keys create`` does."""
    upgrade_database(url)
    return run_with_engine(url, lambda engine: create_key(engine, tenant, key=b"", **limits))


def bearer(key: str, **headers: str) -> dict[str, str]:
    """Headers that present ``key``."""
    return {"authorization": f"Bearer {key}", **headers}


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty SQLite file or Postgres database, by URL (removed afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        with postgres_database() as url:
            yield url


@dataclass
class Keyed:
    """A running proxy whose database holds keys, in front of three scripted tiers."""

    url: str
    database: str
    small: ScriptedTier
    medium: ScriptedTier
    big: ScriptedTier
    keys: dict[str, str]

    def ask(self, key: str | None, body: dict[str, Any] = HI, /, **headers: str) -> httpx.Response:
        sent = bearer(self.keys.get(key, key), **headers) if key else headers
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=sent, timeout=30)


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Keyed]:
    """Keys for team-a (small and medium only), team-b (policy 'other' only), an admin, a revoked
    and an expired one; the proxy started after them."""
    small, medium, big = ScriptedTier("small"), ScriptedTier("medium"), ScriptedTier("big")
    database = f"sqlite:///{tmp_path / 'keyed.db'}"
    keys = {
        "a": make_key(database, "team-a", tiers=["small", "medium"])[1],
        "a2": make_key(database, "team-a", name="second key of team-a")[1],
        "b": make_key(database, "team-b", policies=["other"])[1],
        "admin": make_key(database, "ops", admin=True)[1],
        "expired": make_key(database, "team-a", expires_at=datetime.now(UTC) - timedelta(1))[1],
    }
    revoked, keys["revoked"] = make_key(database, "team-a")
    assert main(["keys", "revoke", revoked.key_id, "--url", database]) == 0
    with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b))
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as url:
            yield Keyed(url, database, small, medium, big, keys)


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    message: str = error["message"]
    return message


def _tenant(database: str, request_id: str) -> str | None:
    """The tenant of a request in the ledger ("(not recorded)" while it is not there yet)."""

    async def read(engine: Any) -> str | None:
        async with engine.connect() as conn:
            query = select(Request.tenant).where(Request.request_id == request_id)
            row = (await conn.execute(query)).first()
        return "(not recorded)" if row is None else row[0]

    return run_with_engine(database, read)


def test_the_key_names_the_tenant_and_x_cascade_tenant_cannot_change_it(keyed: Keyed) -> None:
    """Once keys exist, a request without one is refused (401); with one, its ledger row carries
    the key's tenant; naming another tenant in x-cascade-tenant is refused (403), naming its own
    is allowed."""
    assert _error(keyed.ask(None), 401, "invalid_api_key").startswith("this proxy needs an API")
    assert keyed.ask(None, **{"x-cascade-tenant": "team-a"}).status_code == 401
    answer = keyed.ask("a")
    assert answer.status_code == 200, answer.text
    says = _error(keyed.ask("a", **{"x-cascade-tenant": "team-b"}), 403, "tenant_mismatch")
    assert "this key belongs to tenant 'team-a'" in says
    assert keyed.ask("a", **{"x-cascade-tenant": "team-a"}).status_code == 200
    request_id = answer.headers["x-cascade-request-id"]
    assert wait_until(lambda: _tenant(keyed.database, request_id) == "team-a")


def test_the_openai_sdk_takes_a_key_as_its_api_key(keyed: Keyed) -> None:
    """The README's client: the OpenAI SDK with a key as ``api_key`` is answered; a revoked key
    raises the SDK's AuthenticationError, a tier the key may not use its PermissionDeniedError."""
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=keyed.keys["a"], max_retries=0)
    answer = client.chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "answer from small"
    with pytest.raises(openai.PermissionDeniedError, match="may not use model 'frontier-x'"):
        client.chat.completions.create(
            model="frontier-x", messages=[{"role": "user", "content": "hi"}]
        )
    revoked = openai.OpenAI(
        base_url=f"{keyed.url}/v1", api_key=keyed.keys["revoked"], max_retries=0
    )
    with pytest.raises(openai.AuthenticationError, match="was revoked"):
        revoked.chat.completions.create(
            model="cascade", messages=[{"role": "user", "content": "hi"}]
        )


def test_revoked_expired_and_unknown_keys_are_refused(keyed: Keyed) -> None:
    """A revoked or expired key gets 401 saying so; an unknown id and a wrong secret get the
    same 401, which tells nothing about which part was wrong."""
    assert "was revoked" in _error(keyed.ask("revoked"), 401, "invalid_api_key")
    assert "expired at" in _error(keyed.ask("expired"), 401, "invalid_api_key")
    good = keyed.keys["a"]
    wrong_secret = good[:-1] + ("A" if good[-1] != "A" else "B")
    unknown_id = "csk_" + "a" * 12 + good[16:]
    answers = {_error(keyed.ask(k), 401, "invalid_api_key") for k in (wrong_secret, unknown_id)}
    assert answers == {"unknown or wrong API key"}


def test_a_key_uses_only_its_tiers_and_policies(keyed: Keyed) -> None:
    """A key limited to small and medium is refused the big tier's model by name (403, naming
    what it may use), and its routed requests never reach big, even when small and medium fail;
    a key limited to another policy is refused this one; /v1/models lists what each may use."""
    by_name = {**HI, "model": "frontier-x"}
    says = _error(keyed.ask("a", by_name), 403, "model_not_allowed")
    assert "may not use model 'frontier-x' (tier 'big')" in says
    assert "tiers medium, small" in says
    assert keyed.ask("a2", by_name).status_code == 200  # team-a's other key has no such limit
    keyed.small.mode = keyed.medium.mode = "503"
    keyed.big.calls = 0
    failed = keyed.ask("a")
    assert failed.status_code == 503, failed.text
    assert keyed.big.calls == 0
    assert keyed.ask("a2").status_code == 200  # the unlimited key spills to big
    assert keyed.big.calls == 1

    says = _error(keyed.ask("b"), 403, "model_not_allowed")
    assert says == "this key may not use policy 'proxytest'; it may use: cascade/other"

    def models(key: str) -> list[str]:
        answer = httpx.get(f"{keyed.url}/v1/models", headers=bearer(keyed.keys[key]))
        return [model["id"] for model in answer.json()["data"]]

    assert models("a") == ["cascade", "cascade/proxytest", "distill-1.5b", "distill-7b"]
    assert "frontier-x" in models("a2")
    assert models("b") == []
    assert httpx.get(f"{keyed.url}/v1/models").status_code == 401


def test_feedback_reaches_only_the_callers_own_requests(keyed: Keyed) -> None:
    """Feedback on another tenant's request id is answered exactly like an unknown id (404),
    and changes nothing; the request's own tenant, with any of its keys, can mark it."""
    request_id = keyed.ask("a").headers["x-cascade-request-id"]

    def feedback(key: str, rid: str) -> httpx.Response:
        body = {"request_id": rid}
        return httpx.post(f"{keyed.url}/v1/feedback", json=body, headers=bearer(keyed.keys[key]))

    other = feedback("admin", request_id)
    unknown_id = "req_" + "0" * 24
    unknown = feedback("admin", unknown_id)
    assert other.status_code == unknown.status_code == 404
    assert other.text == unknown.text.replace(unknown_id, request_id)
    assert feedback("a2", request_id).status_code == 200
    assert (
        httpx.post(f"{keyed.url}/v1/feedback", json={"request_id": request_id}).status_code == 401
    )


def test_metrics_need_an_admin_key_once_keys_exist(keyed: Keyed) -> None:
    """/metrics answers an admin key; without a key it is 401, with a tenant's key 403;
    /healthz and /readyz stay open for load balancers."""
    metrics = f"{keyed.url}/metrics"
    assert _error(httpx.get(metrics), 401, "invalid_api_key")
    says = _error(httpx.get(metrics, headers=bearer(keyed.keys["a"])), 403, "admin_key_required")
    assert "cascade keys create --admin" in says
    answer = httpx.get(metrics, headers=bearer(keyed.keys["admin"]))
    assert answer.status_code == 200
    assert "cascade_requests_total" in answer.text
    assert httpx.get(f"{keyed.url}/healthz").status_code == 200
    assert httpx.get(f"{keyed.url}/readyz").status_code == 200


def test_keys_created_rotated_and_revoked_while_running_take_effect(
    keyed: Keyed, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key created while the proxy runs is accepted, a rotated key's old secret refused and
    its new one accepted, and a revoked key refused, each within a second or so (polled)."""
    record, fresh = make_key(keyed.database, "team-c")
    assert wait_until(lambda: keyed.ask(fresh).status_code == 200, 5)
    assert main(["keys", "rotate", record.key_id, "--url", keyed.database]) == 0
    [rotated] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("csk_")]
    assert wait_until(lambda: keyed.ask(fresh).status_code == 401, 5)
    assert keyed.ask(rotated).status_code == 200
    assert main(["keys", "revoke", record.key_id, "--url", keyed.database]) == 0
    assert wait_until(lambda: keyed.ask(rotated).status_code == 401, 5)


def test_without_keys_the_tenant_header_names_the_tenant_and_metrics_are_open(
    tmp_path: Path,
) -> None:
    """Local development: with no key in the database, requests need none, x-cascade-tenant names
    the tenant and /metrics is open; the first key created closes the door within a second."""
    tier = ScriptedTier("small")
    database = f"sqlite:///{tmp_path / 'dev.db'}"
    with serving(tier.app()) as s:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=s, big=s))
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as url:
            chat = f"{url}/v1/chat/completions"
            answer = httpx.post(chat, json=HI, headers={"x-cascade-tenant": "laptop"})
            assert answer.status_code == 200
            assert httpx.get(f"{url}/metrics").status_code == 200
            request_id = answer.headers["x-cascade-request-id"]
            assert wait_until(lambda: _tenant(database, request_id) == "laptop")
            make_key(database, "team-a")
            assert wait_until(lambda: httpx.post(chat, json=HI).status_code == 401, 5)
            assert httpx.get(f"{url}/metrics").status_code == 401


def test_the_shared_key_has_no_tenant_once_virtual_keys_exist(tmp_path: Path) -> None:
    """``--api-key-env``'s shared key keeps working beside virtual keys, with no tenant: its
    requests are recorded without one, and naming one in x-cascade-tenant is refused."""
    tier = ScriptedTier("small")
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    make_key(database, "team-a")
    with serving(tier.app()) as s:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=s, big=s))
        settings = ServerSettings(
            policies=(str(policy),),
            api_keys=frozenset({"sk-shared"}),
            database_url=database,
            spool_path=str(tmp_path / "spool"),
        )
        with serving(create_app(settings)) as url:
            chat = f"{url}/v1/chat/completions"
            answer = httpx.post(chat, json=HI, headers=bearer("sk-shared"))
            assert answer.status_code == 200
            named = httpx.post(
                chat, json=HI, headers=bearer("sk-shared", **{"x-cascade-tenant": "x"})
            )
            _error(named, 403, "tenant_mismatch")
            assert httpx.post(chat, json=HI, headers=bearer("sk-wrong")).status_code == 401
            request_id = answer.headers["x-cascade-request-id"]
            assert wait_until(lambda: _tenant(database, request_id) is None)
            # Not an admin: /metrics needs an admin virtual key.
            assert httpx.get(f"{url}/metrics", headers=bearer("sk-shared")).status_code == 403


def test_keys_unreadable_at_start_hold_v1_requests_back(tmp_path: Path) -> None:
    """Started while its Postgres cannot be reached, the proxy cannot tell whom to let in: /v1
    requests get 503 (keys_unavailable) while /healthz answers; once the database is back (and
    migrated by the ledger) the keys are read and requests are let in as they say."""
    with postgres_database() as url, relay_loop() as loop, serving(ScriptedTier("s").app()) as s:
        outage = Outage(url)

        def run(coro: Coroutine[object, object, None]) -> None:
            asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        run(outage.start())
        run(outage.stop())
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=s, big=s))
        settings = ServerSettings(
            policies=(str(policy),), database_url=outage.url, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as proxy:
            chat = f"{proxy}/v1/chat/completions"
            _error(httpx.post(chat, json=HI), 503, "keys_unavailable")
            assert httpx.get(f"{proxy}/healthz").status_code == 200
            run(outage.start())
            assert wait_until(lambda: httpx.post(chat, json=HI).status_code == 200, 30)
        run(outage.stop())


def test_request_ids_are_unguessable() -> None:
    """Request ids carry 96 random bits: 10,000 of them are all different and spread over every
    hex digit in every position."""
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 4 + 24 and i.startswith("req_") for i in ids)
    for position in range(4, 28):
        assert len({i[position] for i in ids}) == 16
