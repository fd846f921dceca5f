"""Ledger reports on real SQLite and Postgres: exact costs, rates, savings and export labels."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cascade.core.pricing import Rates, tier_rates
from cascade.errors import LedgerError
from cascade.ledger import AttemptRecord, Ledger, LedgerEntry, RequestRecord
from cascade.ledger.labeled_traffic import label_requests
from cascade.ledger.queries import RequestFacts, fetch_requests
from cascade.ledger.records import AttemptOutcome, AttemptRole, RequestStatus
from cascade.ledger.reports import GroupBy, Report, build_report, parse_since, report_json
from cascade.policy import parse_policy
from tests.conftest import TWO_TIERS
from tests.ledger_databases import KINDS, LedgerDatabase, migrate, open_database

NOW = datetime.now(UTC).replace(microsecond=0)
BIG = tier_rates(parse_policy(TWO_TIERS).tiers[-1])
D = Decimal


def _attempt(
    seq: int,
    tier: str,
    role: AttemptRole,
    outcome: AttemptOutcome = "ok",
    *,
    prompt_tokens: int = 0,
    cached_tokens: int = 0,
    completion_tokens: int = 0,
    micro_usd: int = 0,
) -> AttemptRecord:
    return AttemptRecord(
        seq=seq,
        tier=tier,
        model=tier,
        role=role,
        outcome=outcome,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
        cost_usd=D(micro_usd) / 1_000_000,
    )


def _entry(
    n: int,
    attempts: tuple[AttemptRecord, ...],
    *,
    hours_ago: float = 1,
    tenant: str | None = "team-a",
    prefix: str | None = "p1",
    useless: bool = False,
    status: RequestStatus = "ok",
) -> LedgerEntry:
    delivered = attempts[-1] if attempts and status == "ok" else None
    return LedgerEntry(
        RequestRecord(
            request_id=f"r{n}",
            created_at=NOW - timedelta(hours=hours_ago),
            tenant=tenant,
            policy="team-a",
            policy_version="v1",
            workload="interactive",
            decision_reason="threshold",
            status=status,
            http_status=200 if status == "ok" else 502,
            first_tier=attempts[0].tier if attempts else None,
            final_tier=delivered.tier if delivered else None,
            prefix_hash=prefix,
            prompt_tokens=sum(a.prompt_tokens for a in attempts),
            cached_tokens=sum(a.cached_tokens for a in attempts),
            completion_tokens=sum(a.completion_tokens for a in attempts),
            cost_usd=sum((a.cost_usd for a in attempts), D(0)),
            useful_tokens=0 if useless or delivered is None else delivered.completion_tokens,
            useless=useless,
        ),
        attempts,
    )


def report_entries() -> list[LedgerEntry]:
    """Six requests with hand-checked costs (micro-USD); r5 is 10 days old."""
    return [
        # r1: answered by small.
        _entry(1, (_attempt(0, "small", "primary", prompt_tokens=1000, completion_tokens=100,
                            micro_usd=100),), hours_ago=5),
        # r2: small rejected, escalated to big (200 of its 1000 prompt tokens cached).
        _entry(2, (
            _attempt(0, "small", "primary", "rejected", prompt_tokens=1000,
                     completion_tokens=50, micro_usd=50),
            _attempt(1, "big", "escalation", prompt_tokens=1000, cached_tokens=200,
                     completion_tokens=200, micro_usd=3000),
        ), hours_ago=4),
        # r3: small saturated, spilled to big.
        _entry(3, (
            _attempt(0, "small", "primary", "error"),
            _attempt(1, "big", "spill", prompt_tokens=500, completion_tokens=100,
                     micro_usd=2250),
        ), hours_ago=3, tenant="team-b", prefix="p2"),
        # r4: answered by small, then marked useless.
        _entry(4, (_attempt(0, "small", "primary", prompt_tokens=400, completion_tokens=80,
                            micro_usd=40),), hours_ago=2, tenant=None, useless=True),
        # r5: old, outside a 7-day window.
        _entry(5, (_attempt(0, "small", "primary", prompt_tokens=100, completion_tokens=10,
                            micro_usd=10),), hours_ago=240, prefix="p3"),
        # r6: failed: no tier answered.
        _entry(6, (_attempt(0, "small", "primary", "error"),), hours_ago=1, prefix=None,
               status="error"),
    ]  # fmt: skip


# Hand-computed for the 7-day window (r1, r2, r3, r4, r6), at big's $2.5/$1.25/$10 per M tokens:
COST = D("0.00544")  # 100 + 50 + 3000 + 2250 + 40 micro-USD
USEFUL = 400  # 100 + 200 + 100 + 0 (useless) + 0 (failed)
# r1 1000*2.5 + 100*10; r2 800*2.5 + 200*1.25 + 200*10; r3 500*2.5 + 100*10; r4 400*2.5 + 80*10
COUNTERFACTUAL = D("0.0118")


@pytest.fixture(scope="module", params=KINDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LedgerDatabase]:
    """A migrated ledger holding :func:`report_entries`, shared by this module's read-only tests."""
    with open_database(request.param, tmp_path_factory.mktemp("report")) as db:
        migrate(db)

        async def insert() -> None:
            ledger = Ledger(db.engine())
            try:
                await ledger.insert(report_entries())
            finally:
                await ledger.aclose()

        asyncio.run(insert())
        yield db


def _facts(db: LedgerDatabase, since: datetime | None) -> list[RequestFacts]:
    async def run() -> list[RequestFacts]:
        engine = db.engine()
        try:
            return await fetch_requests(engine, since)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _report(
    db: LedgerDatabase, by: GroupBy = "tier", rates: Rates | None = BIG, since: str = "7d"
) -> Report:
    return build_report(
        _facts(db, parse_since(since, NOW)),
        by=by,
        policy="team-a",
        frontier_tier="big",
        frontier_rates=rates,
    )


def test_totals_are_exact(database: LedgerDatabase) -> None:
    """The window's total cost, cost per useful token and savings equal the hand-computed ones."""
    total = _report(database).total
    assert total.requests == 5
    assert (total.prompt_tokens, total.cached_tokens, total.completion_tokens) == (3900, 200, 530)
    assert total.cost_usd == COST
    assert total.useful_tokens == USEFUL
    assert total.cost_per_useful_token == D("0.0000136")
    assert total.cost_per_million_useful == D("13.6")
    assert total.counterfactual_usd == COUNTERFACTUAL
    assert total.savings_usd == D("0.00636")
    assert total.savings_pct == pytest.approx(6.36 / 11.8 * 100)


def test_rates_and_tier_shares(database: LedgerDatabase) -> None:
    """Shares of final tiers, escalation, spill, error and cache rates count the right requests."""
    total = _report(database).total
    assert total.tier_shares == {"(none)": 0.2, "big": 0.4, "small": 0.4}
    assert (total.escalation_rate, total.spill_rate, total.error_rate) == (0.2, 0.2, 0.2)
    assert total.cache_hit_rate == 200 / 3900
    assert total.prefix_repeat_rate == 0.4  # r2 and r4 reuse r1's prefix


def test_groups_by_final_tier(database: LedgerDatabase) -> None:
    """Grouping by tier splits cost, useful tokens and savings per final tier."""
    groups = {g.key: g for g in _report(database).groups}
    assert list(groups) == ["(none)", "big", "small"]
    big, small, failed = groups["big"], groups["small"], groups["(none)"]
    assert (big.requests, big.cost_usd, big.useful_tokens) == (2, D("0.0053"), 300)
    assert big.cost_per_useful_token == D("0.0053") / 300
    assert big.counterfactual_usd == D("0.0065")
    assert (small.cost_usd, small.useful_tokens) == (D("0.00014"), 100)
    assert small.cost_per_useful_token == D("0.0000014")
    assert small.savings_usd == D("0.0053") - D("0.00014")
    assert failed.cost_per_useful_token is None
    assert failed.savings_pct is None


def test_groups_by_tenant_and_day(database: LedgerDatabase) -> None:
    """Tenants (None shown as '(none)') and UTC days each get their own group."""
    by_tenant = _report(database, by="tenant")
    tenants = {g.key: g.requests for g in by_tenant.groups}
    assert tenants == {"(none)": 1, "team-a": 3, "team-b": 1}
    assert [g.key for g in by_tenant.tiers] == ["(none)", "big", "small"]  # for the charts
    days = {g.key: g.requests for g in _report(database, by="day", since="all").groups}
    expected: dict[str, int] = {}
    for entry in report_entries():
        day = entry.request.created_at.date().isoformat()
        expected[day] = expected.get(day, 0) + 1
    assert days == expected


def test_since_all_includes_old_requests(database: LedgerDatabase) -> None:
    """Without a window the 10-day-old request counts too; a 7-day window leaves it out."""
    assert _report(database, since="all").total.requests == 6
    assert _report(database, since="all").total.cost_usd == COST + D("0.00001")
    assert _report(database, since="2h").total.requests == 2  # r4 (2 h ago) and r6


def test_savings_unknown_without_a_price(database: LedgerDatabase) -> None:
    """A frontier tier without a price gives no counterfactual rather than a wrong one."""
    report = _report(database, rates=None)
    assert not report.frontier_priced
    assert report.total.savings_usd is None
    assert report_json(report)["total"]["savings_usd"] is None


def test_json_keeps_money_exact(database: LedgerDatabase) -> None:
    """The JSON form carries money as exact decimal strings."""
    data = report_json(_report(database))
    assert D(data["total"]["cost_usd"]) == COST
    assert D(data["total"]["cost_per_million_useful_tokens_usd"]) == D("13.6")
    assert sum(D(p["cost_usd"]) for p in data["timeline"]) == COST


def test_export_labels(database: LedgerDatabase) -> None:
    """Escalated and useless requests teach 'weak fails', first-tier answers 'weak suffices'."""
    rows = label_requests(
        _facts(database, None), last_tier="big", frontier_rates=BIG, prompts={"r1": "hi"}
    )
    by_id = {row["id"]: row for row in rows}
    assert sorted(by_id) == ["r1", "r2", "r4", "r5"]  # r3 spilled, r6 failed: no label
    assert (by_id["r1"]["weak_score"], by_id["r1"]["strong_score"]) == (1.0, 1.0)
    assert (by_id["r2"]["weak_score"], by_id["r2"]["strong_score"]) == (0.0, 1.0)
    assert (by_id["r4"]["weak_score"], by_id["r4"]["strong_score"]) == (0.0, 1.0)
    assert by_id["r2"]["weak_cost_usd"] == 0.00005
    assert by_id["r2"]["strong_cost_usd"] == 0.003  # what the escalation to big cost
    assert by_id["r1"]["strong_cost_usd"] == 0.0035  # priced at big's rates
    assert by_id["r1"]["prompt"] == "hi"
    assert by_id["r2"]["prompt"] is None
    assert by_id["r1"]["task"] == "team-a"


def test_empty_window() -> None:
    """No requests: zero counts and 'n/a' ratios instead of a division by zero."""
    report = build_report([], by="tier", policy="p", frontier_tier="big", frontier_rates=BIG)
    assert report.groups == ()
    assert report.total.requests == 0
    assert report.total.cost_per_useful_token is None
    assert report.total.cache_hit_rate is None
    assert report.total.savings_pct is None


def test_parse_since() -> None:
    """Windows are days, hours or minutes back from now; anything else is refused clearly."""
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("all", NOW) is None
    with pytest.raises(LedgerError, match="7d, 24h, 30m"):
        parse_since("week", NOW)
