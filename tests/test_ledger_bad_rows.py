"""One bad row never stops the ledger: text is bounded and cleaned, refused rows are quarantined."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from cascade.ledger import Ledger, LedgerEntry, LedgerWriter, create_engine
from cascade.ledger.records import TEXT_LIMITS, bounded_text
from cascade.ledger.spool import Spool
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.ledger_databases import KINDS, LedgerDatabase, make_entry, migrate, open_database
from tests.servers import serving, wait_until
from tests.test_proxy_ledger import postgres_database

# Random letters do not compress: Postgres must index all 10,000 of them (a repeated letter
# would be compressed under the btree's 2,704-byte limit and hide the problem).
LONG_TENANT = "".join(random.Random(7).choices(string.ascii_letters, k=10_000))
# A database refuses this in an INTEGER column: Postgres (int4) and SQLite (int64) alike.
HUGE = 2**70


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """A migrated SQLite file or Postgres schema."""
    with open_database(request.param, tmp_path) as db:
        migrate(db)
        yield db


def _with_tenant(n: int, tenant: str) -> LedgerEntry:
    entry = make_entry(n)
    return LedgerEntry(dataclasses.replace(entry.request, tenant=tenant), entry.attempts)


def _with_reason(n: int, reason: str) -> LedgerEntry:
    entry = make_entry(n)
    first = dataclasses.replace(entry.attempts[0], reason=reason)
    return LedgerEntry(entry.request, (first, *entry.attempts[1:]))


def _refused(n: int) -> LedgerEntry:
    entry = make_entry(n)
    return LedgerEntry(dataclasses.replace(entry.request, prompt_tokens=HUGE), entry.attempts)


def test_text_is_bounded_and_cleaned_where_records_are_built() -> None:
    """Over-long text keeps its start and a digest (two long tenants stay apart); NUL, other
    control characters and lone surrogates are replaced; plain text is left as it is."""
    long_a = _with_tenant(1, LONG_TENANT).request.tenant
    long_b = _with_tenant(1, LONG_TENANT[:-1] + "!").request.tenant
    assert long_a is not None
    assert long_b is not None
    assert len(long_a) == len(long_b) == TEXT_LIMITS["tenant"] == 128
    assert long_a.startswith(LONG_TENANT[:100])
    assert long_a != long_b
    reason = _with_reason(1, "echo: a\x00b\nc\x1bd\ud800e" + "x" * 5000).attempts[0].reason
    assert reason is not None
    assert len(reason) == TEXT_LIMITS["reason"]
    assert reason.startswith("echo: a\ufffdb c\ufffdd\ufffde")
    assert reason.encode()  # valid UTF-8 now: the spool and Postgres take it
    plain = "length_cut"
    assert _with_reason(1, plain).attempts[0].reason is plain
    assert bounded_text("Zürich → 東京", 128) == "Zürich → 東京"


def test_bad_rows_never_stop_the_ledger(database: LedgerDatabase, tmp_path: Path) -> None:
    """A 10,000-character tenant and a NUL in a reason are stored bounded and cleaned, a row
    the database refuses is quarantined with its error, and every normal row after them lands."""
    spool = tmp_path / "spool.jsonl"
    bad = [_with_tenant(1, LONG_TENANT), _with_reason(2, "quoted: \x00"), _refused(3)]
    normal = [make_entry(n) for n in range(10, 30)]

    async def run() -> list[LedgerEntry | None]:
        ledger = Ledger(database.engine())
        with capture_logs() as logs:
            async with LedgerWriter(ledger, spool) as writer:
                for entry in [*bad, *normal]:
                    writer.submit(entry.request, entry.attempts)
                await asyncio.wait_for(writer.wait_until_drained(), 10)
                assert writer.stats.quarantined == 1
        stored = [await ledger.fetch(e.request.request_id) for e in [*bad, *normal]]
        await ledger.aclose()
        quarantined = [line for line in logs if line["event"] == "ledger.row_quarantined"]
        assert [(q["request_id"], q["error_class"]) for q in quarantined] == [
            (
                bad[2].request.request_id,
                "OverflowError" if "sqlite" in database.url else "DataError",
            )
        ]
        return stored

    stored = asyncio.run(run())
    assert stored[3:] == normal
    tenant, reason, refused = stored[:3]
    assert tenant is not None
    assert tenant.request.tenant == bad[0].request.tenant
    assert len(tenant.request.tenant or "") == 128
    assert reason is not None
    assert reason.attempts[0].reason == "quoted: \ufffd"
    assert refused is None
    lines = (tmp_path / "spool.jsonl.quarantine").read_text().splitlines()
    assert len(lines) == 1
    kept = json.loads(lines[0])
    assert kept["entry"]["request"]["request_id"] == bad[2].request.request_id
    assert kept["entry"]["request"]["prompt_tokens"] == HUGE
    assert kept["error_class"] in ("OverflowError", "DataError")
    assert kept["error"]
    assert not spool.exists() or spool.read_text() == ""


def test_a_spool_holding_a_refused_row_replays_the_rest(
    database: LedgerDatabase, tmp_path: Path
) -> None:
    """A spool (left by an outage or a crash) with a row the database refuses replays every
    other row and quarantines that one, instead of failing on it at every retry."""
    spool = tmp_path / "spool.jsonl"
    entries = [make_entry(1), _refused(2), make_entry(3)]
    Spool(spool).append(entries)

    async def run() -> list[bool]:
        ledger = Ledger(database.engine())
        async with LedgerWriter(ledger, spool) as writer:
            await asyncio.wait_for(writer.wait_until_drained(), 10)
        found = [await ledger.fetch(e.request.request_id) is not None for e in entries]
        await ledger.aclose()
        return found

    assert asyncio.run(run()) == [True, False, True]
    assert spool.read_text() == ""
    assert len((tmp_path / "spool.jsonl.quarantine").read_text().splitlines()) == 1


def _upstream() -> Starlette:
    """An OpenAI-compatible tier that reports a trillion prompt tokens when the prompt asks."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        huge = "huge" in body["messages"][-1]["content"]
        message = {"role": "assistant", "content": "fine"}
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2**40 if huge else 10, "completion_tokens": 2},
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


POLICY = """\
name: bad-rows
tiers:
  - {{name: small, model: small-model, kind: self_hosted, endpoint: "{url}/v1",
      price: {{gpu_usd_per_hour: 2.0, tokens_per_second: 1000}}}}
"""


@contextmanager
def _proxy_database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.mark.parametrize("kind", KINDS)
def test_proxy_keeps_recording_after_bad_requests(kind: str, tmp_path: Path) -> None:
    """Through the proxy: a 10,000-character tenant is stored bounded; a tier reporting a
    trillion tokens gets its request quarantined where the column cannot hold that (Postgres's
    INTEGER; SQLite's holds it), counted on /metrics; the normal requests after them are all
    recorded."""
    quarantined = 1 if kind == "postgres" else 0
    with _proxy_database(kind, tmp_path) as url, serving(_upstream()) as upstream:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(url=upstream))
        settings = ServerSettings(
            policies=(str(policy),), database_url=url, spool_path=str(tmp_path / "spool")
        )
        ids: dict[str, str] = {}
        with serving(create_app(settings)) as proxy:

            def ask(content: str, headers: dict[str, str] | None = None) -> str:
                body = {"model": "cascade", "messages": [{"role": "user", "content": content}]}
                answer = httpx.post(
                    f"{proxy}/v1/chat/completions", json=body, headers=headers, timeout=30
                )
                assert answer.status_code == 200
                return answer.headers["x-cascade-request-id"]

            ids["long"] = ask("hi", {"x-cascade-tenant": LONG_TENANT})
            ids["huge"] = ask("huge")
            normal = [ask(f"question {n}") for n in range(5)]
            series = f"cascade_ledger_rows_quarantined_total {quarantined}\n"
            # Polled: the writer counts a refusal once the request's batch is written.
            assert wait_until(lambda: series in httpx.get(f"{proxy}/metrics").text)

        async def stored(request_id: str) -> LedgerEntry | None:
            ledger = Ledger(create_engine(url))
            try:
                return await ledger.fetch(request_id)
            finally:
                await ledger.aclose()

        long = asyncio.run(stored(ids["long"]))
        assert long is not None
        assert (long.request.tenant or "").startswith(LONG_TENANT[:100])
        assert len(long.request.tenant or "") == 128
        assert (asyncio.run(stored(ids["huge"])) is None) == bool(quarantined)
        assert all(asyncio.run(stored(request_id)) is not None for request_id in normal)
        spool = tmp_path / "spool"
        assert not spool.exists() or spool.read_text() == ""
        if quarantined:
            assert ids["huge"] in (tmp_path / "spool.quarantine").read_text()
