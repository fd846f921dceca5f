"""``cascade report`` shows each budgeted key's budget now beside its spend in the window, on a real
SQLite and a real Postgres ledger: keys made as ``cascade keys create`` does, budget leased and
settled with the functions the proxy's workers use, requests written by the ledger."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.cli import report as report_cli
from cascade.ledger import Ledger, LedgerEntry
from cascade.ledger.budgets import (
    Lease,
    add_self_hosted,
    nanos,
    period_end,
    period_start,
    settle,
    take,
)
from cascade.ledger.database import run_with_engine
from cascade.ledger.keys import Budget, KeyRecord
from cascade.ledger.records import AttemptRole
from tests.conftest import TWO_TIERS
from tests.ledger_databases import KINDS
from tests.test_keys import database_url, make_key
from tests.test_ledger_report import _attempt, _entry

D = Decimal


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    parser = argparse.ArgumentParser(prog="cascade")
    report_cli.register(parser.add_subparsers())
    ns = parser.parse_args(list(args))
    assert ns.command(ns) == 0
    return capsys.readouterr().out


async def _lease(engine: AsyncEngine, key: KeyRecord, need: Decimal) -> tuple[Lease, datetime]:
    """Lease at least ``need`` of the key's budget in its current period, as a worker does."""
    assert key.budget is not None
    start = period_start(key.budget.period, datetime.now(UTC))
    expires = datetime.fromtimestamp(period_end(key.budget.period, start), UTC)
    held, _ = await take(
        engine,
        key_id=key.key_id,
        start=start,
        limit=nanos(key.budget.usd),
        need=nanos(need),
        share=1000,
        worker="w1",
        expires_at=expires,
    )
    assert held is not None
    return held, expires


async def _lease_and_settle(engine: AsyncEngine, ci: KeyRecord, batch: KeyRecord) -> None:
    """ci ($50/day): $10 leased, $3.25 spent, $2 kept, $0.5 self-hosted; batch ($200/month):
    $1.5 spent and given back, then $4 leased and held."""
    held, expires = await _lease(engine, ci, D(10))
    await settle(engine, held, spent=nanos(D("3.25")), keep=nanos(D(2)), expires_at=expires)
    await add_self_hosted(engine, ci.key_id, held.period_start, nanos(D("0.5")), limit=0)
    held, expires = await _lease(engine, batch, D("1.5"))
    await settle(engine, held, spent=nanos(D("1.5")), keep=0, expires_at=expires)
    await _lease(engine, batch, D(4))


def _keyed(entry: LedgerEntry, key: KeyRecord) -> LedgerEntry:
    return LedgerEntry(replace(entry.request, key_id=key.key_id, tenant=key.tenant), entry.attempts)


def _ledger(url: str) -> tuple[KeyRecord, KeyRecord, KeyRecord, KeyRecord]:
    """Three keys with budgets (two of team-a's, one of team-b's), one without, and requests."""
    ci, _ = make_key(url, "team-a", name="ci-bot", budget=Budget(D(50), "day"))
    batch, _ = make_key(url, "team-a", name="batch", budget=Budget(D(200), "month"))
    idle, _ = make_key(url, "team-b", budget=Budget(D(1), "day"))
    free, _ = make_key(url, "team-c")
    run_with_engine(url, lambda engine: _lease_and_settle(engine, ci, batch))
    small: tuple[str, AttemptRole] = ("small", "primary")
    entries = [
        # ci: $0.0001 and $0.00025 for 100 + 300 useful tokens; big would have cost
        # 1000*2.5 + 100*10 = $0.0035 and 2000*2.5 + 300*10 = $0.008 (per M tokens).
        _keyed(_entry(1, (_attempt(0, *small, prompt_tokens=1000, completion_tokens=100,
                                   micro_usd=100),)), ci),
        _keyed(_entry(2, (_attempt(0, *small, prompt_tokens=2000, completion_tokens=300,
                                   micro_usd=250),)), ci),
        # ci, 10 days old: outside the 7-day window.
        _keyed(_entry(3, (_attempt(0, *small, prompt_tokens=10, completion_tokens=10,
                                   micro_usd=999),), hours_ago=240), ci),
        # batch: $0.00006 for 100 useful tokens; big: 400*2.5 + 100*10 = $0.002.
        _keyed(_entry(4, (_attempt(0, *small, prompt_tokens=400, completion_tokens=100,
                                   micro_usd=60),)), batch),
        _keyed(_entry(5, (_attempt(0, *small, prompt_tokens=50, completion_tokens=5,
                                   micro_usd=7),)), free),
        _entry(6, (_attempt(0, *small, prompt_tokens=50, completion_tokens=5, micro_usd=3),)),
    ]  # fmt: skip

    async def insert(engine: AsyncEngine) -> None:
        ledger = Ledger(engine)
        try:
            await ledger.insert(entries)
        finally:
            await ledger.aclose()

    run_with_engine(url, insert)
    return ci, batch, idle, free


def _stored_hashes(keys: tuple[KeyRecord, ...]) -> list[str]:
    return [key.hash for key in keys]


@pytest.mark.parametrize("kind", KINDS)
def test_report_shows_budget_left_beside_spend_per_key_and_tenant(
    kind: str,
    tmp_path: Path,
    write_policy: Callable[[str, str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each budgeted key shows limit, settled, leased (held by workers), left = limit - settled -
    leased and self-hosted spend for its current period, beside its window's cost, cost per useful
    token and savings; each tenant sums its keys; the same numbers are exact in --json; the HTML
    tenant view has a Budgets table; no hash appears anywhere."""
    policy = str(write_policy(TWO_TIERS, "policy.yaml"))
    with database_url(kind, tmp_path) as url:
        keys = _ledger(url)
        ci, batch, idle, free = keys
        page = tmp_path / "report.html"
        args = ("report", "--url", url, "--policy", policy)
        text = _run(capsys, *args, "--html", str(page))
        data = json.loads(_run(capsys, *args, "--json"))

    now = datetime.fromisoformat(data["budgets"]["now"])
    day, month = period_start("day", now), period_start("month", now)
    blocks = text.split("\n\n")
    assert (
        f"""== budget key {ci.key_id} (ci-bot), tenant team-a ==
  period                day from {day:%Y-%m-%d} 00:00 UTC
  limit                 50.0000000000 USD
  settled               3.2500000000 USD
  leased                2.0000000000 USD (held by workers)
  left                  44.7500000000 USD
  self-hosted           0.5000000000 USD (beside the budget)
  window                2 requests, cost 0.0003500000 USD, per useful token 8.750000E-7 USD, \
saved 0.0111500000 USD"""
        in blocks
    )
    assert (
        """== budget tenant team-a (2 keys) ==
  period                mixed
  limit                 250.0000000000 USD
  settled               4.7500000000 USD
  leased                6.0000000000 USD (held by workers)
  left                  239.2500000000 USD
  self-hosted           0.5000000000 USD (beside the budget)
  window                3 requests, cost 0.0004100000 USD, per useful token 8.200000E-7 USD, \
saved 0.0130900000 USD"""
        in blocks
    )
    assert f"== budget key {idle.key_id}, tenant team-b ==" in text
    assert free.key_id not in text.split("budgets now")[1]  # no budget: no row

    by_id = {row["key_id"]: row for row in data["budgets"]["keys"]}
    assert list(by_id) == [*sorted((ci.key_id, batch.key_id)), idle.key_id]  # by tenant, id
    assert by_id[batch.key_id] == {
        "key_id": batch.key_id,
        "name": "batch",
        "tenant": "team-a",
        "period": "month",
        "period_start": month.isoformat(),
        "limit_usd": "200.0000000000",
        "settled_usd": "1.500000000",
        "leased_usd": "4.000000000",
        "left_usd": "194.5000000000",
        "self_hosted_usd": "0.000000000",
        "window": {
            "requests": 1,
            "useful_tokens": 100,
            "cost_usd": "0.0000600000",
            "cost_per_useful_token_usd": "0.0000006000",
            "savings_usd": "0.0019400000",
        },
    }
    assert by_id[idle.key_id]["left_usd"] == "1.0000000000"
    assert by_id[idle.key_id]["window"]["cost_per_useful_token_usd"] is None
    tenants = {row["tenant"]: row for row in data["budgets"]["tenants"]}
    assert list(tenants) == ["team-a", "team-b"]
    assert (tenants["team-a"]["keys"], tenants["team-a"]["left_usd"]) == (2, "239.2500000000")
    assert D(tenants["team-a"]["window"]["cost_per_useful_token_usd"]) == D("0.00000082")
    assert tenants["team-b"]["period"] == "day"

    html = page.read_text(encoding="utf-8")
    assert '<h2 id="budgets">Budgets</h2>' in html
    row = re.search(rf"<tr><td>\W*{ci.key_id} \(ci-bot\)</td>(.*?)</tr>", html)
    assert row is not None
    assert "<td>$44.75</td>" in row.group(1)
    assert "<tr class=sum><td>team-a (2 keys)</td>" in html
    for output in (text, json.dumps(data), html):
        for stored in _stored_hashes(keys):
            assert stored not in output


def test_report_without_budgets_has_no_budget_block(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys without budgets add no block to the text or table to the page; --json says so with
    empty lists."""
    policy = str(write_policy(TWO_TIERS, "policy.yaml"))
    with database_url("sqlite", tmp_path) as url:
        make_key(url, "team-a")
        page = tmp_path / "report.html"
        text = _run(capsys, "report", "--url", url, "--policy", policy, "--html", str(page))
        data = json.loads(_run(capsys, "report", "--url", url, "--policy", policy, "--json"))
    assert "budget" not in text
    assert "Budgets" not in page.read_text(encoding="utf-8")
    assert (data["budgets"]["keys"], data["budgets"]["tenants"]) == ([], [])
