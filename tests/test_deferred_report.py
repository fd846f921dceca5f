"""``cascade report``'s deferred-work section against a real SQLite ledger, by hand-computed
numbers: the Batch API's jobs and their deadlines, their cost against running them at once, and
the fleet's utilization with and without them."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from cascade.cli import report as report_cli
from cascade.ledger import AttemptRecord, Ledger, LedgerEntry, RequestRecord
from cascade.ledger.database import create_engine
from cascade.ledger.models import Batch, BatchRequest
from tests.ledger_databases import migrate, open_database

D = Decimal
NOW = datetime.now(UTC).replace(microsecond=0)

# One GPU at $2.30 an hour decoding 2,000 tok/s and prefilling 20,000; an API tier above it.
POLICY = """\
name: deferred
tiers:
  - name: small
    model: distill-7b
    kind: self_hosted
    replicas: [http://127.0.0.1:8001/v1]
    price: {gpu_usd_per_hour: 2.30, tokens_per_second: 2000, prefill_tokens_per_second: 20000}
    overflow: big
  - name: big
    model: openai/gpt-4o
    kind: api
    price: {input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}
"""


def _entry(
    rid: str, tier: str, *, hours_ago: float, prompt: int, completion: int, usd: str
) -> LedgerEntry:
    attempt = AttemptRecord(
        seq=0,
        tier=tier,
        model=tier,
        role="primary",
        outcome="ok",
        prompt_tokens=prompt,
        cached_tokens=0,
        completion_tokens=completion,
        cost_usd=D(usd),
    )
    request = RequestRecord(
        request_id=rid,
        created_at=NOW - timedelta(hours=hours_ago),
        tenant=None,
        policy="deferred",
        policy_version="v1",
        workload="batch" if rid.startswith("breq") else "interactive",
        decision_reason="threshold",
        status="ok",
        http_status=200,
        first_tier=tier,
        final_tier=tier,
        prefix_hash=None,
        prompt_tokens=prompt,
        cached_tokens=0,
        completion_tokens=completion,
        cost_usd=D(usd),
        useful_tokens=completion,
    )
    return LedgerEntry(request, (attempt,))


# Interactive: 18M prompt tokens (900 s of prefill) and 3.6M completion (1,800 s): 0.75 GPU-hours,
# $1.725. Job A's two requests on the fleet: 6M prompt (300 s) + 1.2M completion (600 s) each,
# 0.25 GPU-hours, $0.575; at once on big each is 6 x $2.5 + 1.2 x $10 = $27. Job B's one answer
# went to big at a flex price ($1.25 for 1M prompt + 0.1M completion; $3.50 at once).
ENTRIES = [
    _entry("r0", "small", hours_ago=10, prompt=18_000_000, completion=3_600_000, usd="1.725"),
    _entry("breq_a0", "small", hours_ago=4, prompt=6_000_000, completion=1_200_000, usd="0.575"),
    _entry("breq_a1", "small", hours_ago=3, prompt=6_000_000, completion=1_200_000, usd="0.575"),
    _entry("breq_b0", "big", hours_ago=2, prompt=1_000_000, completion=100_000, usd="1.25"),
]


def _batch(
    bid: str, status: str, *, created: float, expires: float, ended: float | None, total: int
) -> dict[str, Any]:
    stamp = {"completed": "completed_at", "expired": "expired_at"}.get(status)
    row: dict[str, Any] = {
        "id": bid,
        "tenant": None,
        "key_id": None,
        "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "status": status,
        "total": total,
        "created_at": NOW - timedelta(hours=created),
        "expires_at": NOW - timedelta(hours=expires),
        "completed_at": None,
        "expired_at": None,
    }
    if stamp is not None and ended is not None:
        row[stamp] = NOW - timedelta(hours=ended)
    return row


BATCHES = [
    # A: done 3 h ago, its deadline 1 h ago: met.
    _batch("batch_a", "completed", created=6, expires=1, ended=3, total=2),
    # B: one answer, one request expired with the window 1.5 h ago: missed.
    _batch("batch_b", "expired", created=8, expires=1.5, ended=1.4, total=2),
    # C: still running, its deadline in 5 h: open.
    _batch("batch_c", "in_progress", created=1, expires=-5, ended=None, total=1),
    # D: over two days ago, before the window.
    _batch("batch_d", "completed", created=72, expires=50, ended=60, total=1),
]
REQUESTS = [
    ("breq_a0", "batch_a", "done"),
    ("breq_a1", "batch_a", "done"),
    ("breq_b0", "batch_b", "done"),
    ("breq_b1", "batch_b", "expired"),
    ("breq_c0", "batch_c", "queued"),
    ("breq_d0", "batch_d", "done"),
]


def _ledger(tmp_path: Path, entries: Sequence[LedgerEntry]) -> str:
    async def fill(url: str) -> None:
        engine = create_engine(url)
        ledger = Ledger(create_engine(url))
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(Batch), BATCHES)
                await conn.execute(
                    insert(BatchRequest),
                    [
                        {
                            "id": rid,
                            "batch_id": bid,
                            "line": n,
                            "custom_id": f"c{n}",
                            "body": "{}",
                            "status": status,
                            "attempts": 1,
                        }
                        for n, (rid, bid, status) in enumerate(REQUESTS)
                    ],
                )
            await ledger.insert(list(entries))
        finally:
            await ledger.aclose()
            await engine.dispose()

    with open_database("sqlite", tmp_path) as db:
        migrate(db)
        asyncio.run(fill(db.url))
        return db.url


def _run(url: str, policy: Path, *args: str) -> None:
    parser = argparse.ArgumentParser(prog="cascade")
    report_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["report", "--url", url, "--policy", str(policy), *args])
    assert ns.command(ns) == 0


def test_jobs_deadlines_cost_and_fleet_with_and_without_the_deferred_work(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Job A met its deadline, B missed it, C is open and D is outside the window; the three
    deferred answers cost $2.40 against $57.50 at once on big; the GPU was busy 1.25 h of 24
    with them (5.21%) and 0.75 h without (3.125%)."""
    url, policy = _ledger(tmp_path, ENTRIES), write_policy(POLICY, "deferred.yaml")
    _run(url, policy, "--json", "--since", "24h")
    section = json.loads(capsys.readouterr().out)["deferred"]
    jobs = {job["batch_id"]: job for job in section["jobs"]}
    assert sorted(jobs) == ["batch_a", "batch_b", "batch_c"]
    assert [jobs[b]["deadline"] for b in ("batch_a", "batch_b", "batch_c")] == [
        "met",
        "missed",
        "open",
    ]
    assert (jobs["batch_b"]["completed"], jobs["batch_b"]["failed"]) == (1, 1)
    assert D(jobs["batch_a"]["cost_usd"]) == D("1.15")
    assert D(jobs["batch_a"]["at_once_usd"]) == D(54)
    assert D(jobs["batch_b"]["at_once_usd"]) == D("3.5")
    assert jobs["batch_c"]["ledger_requests"] == 0
    assert section["deadlines_met"] == 1
    assert section["requests"] == 3
    assert section["at_once_tier"] == "big"
    assert (D(section["cost_usd"]), D(section["at_once_usd"])) == (D("2.40"), D("57.5"))
    (small,) = section["fleet"]
    assert (small["tier"], small["deferred_calls"]) == ("small", 2)
    assert float(small["utilization_with_deferred"]) == pytest.approx(1.25 / 24)
    assert float(small["utilization_without_deferred"]) == pytest.approx(0.75 / 24)


def test_the_text_and_the_page_show_the_section(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The terminal report says how many jobs met their deadline and what deferring saved; the
    HTML page has the jobs' table."""
    url, policy = _ledger(tmp_path, ENTRIES), write_policy(POLICY, "deferred.yaml")
    page = tmp_path / "report.html"
    _run(url, policy, "--since", "24h", "--html", str(page))
    text = capsys.readouterr().out
    assert "deferred work (Batch API): 3 jobs, 1 finished before their deadline" in text
    assert "at once on big: 57.5000000000 USD (95.8% less deferred)" in text
    assert "utilization 5.208% with the deferred work, 3.125% without" in text
    body = page.read_text(encoding="utf-8")
    assert "<h2>Deferred work</h2>" in body
    assert "<td>batch_b</td><td>expired</td>" in body
    assert "<td>missed</td>" in body
