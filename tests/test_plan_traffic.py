"""The ledger's traffic read back as cascade plan needs it: the visits the router meant (spills
undone), escalations, samples, and the shape of the day. Real SQLite ledgers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cascade.core.day_traffic import DayTraffic, Flow
from cascade.errors import PlanError
from cascade.ledger import AttemptRecord, Ledger, LedgerEntry, RequestRecord
from cascade.ledger.plan_traffic import day_traffic
from cascade.ledger.queries import read_requests
from cascade.ledger.records import AttemptOutcome, AttemptRole
from cascade.policy import Policy, load_policy
from tests.ledger_databases import migrate, open_database

DAY_ONE = datetime(2026, 11, 20, tzinfo=UTC)
# (tier, role, outcome, prompt, cached, completion)
Call = tuple[str, AttemptRole, AttemptOutcome, int, int, int]


def entry(
    request_id: str,
    at: datetime,
    confidence: float | None,
    calls: Sequence[Call],
    *,
    workload: str = "interactive",
    policy: str = "default",
    latency_ms: float = 0.0,
) -> LedgerEntry:
    """A recorded request with its calls, as the proxy writes them."""
    attempts = tuple(
        AttemptRecord(
            seq=i,
            tier=tier,
            model=tier,
            role=role,
            outcome=outcome,
            error_class="saturated" if outcome == "error" else None,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            cost_usd=Decimal("0.001"),
        )
        for i, (tier, role, outcome, prompt, cached, completion) in enumerate(calls)
    )
    return LedgerEntry(
        RequestRecord(
            request_id=request_id,
            policy=policy,
            policy_version="v1",
            workload=workload,
            decision_reason="test",
            status="ok",
            http_status=200,
            created_at=at,
            latency_ms=latency_ms,
            confidence=confidence,
            first_tier=calls[0][0] if calls else None,
            final_tier=calls[-1][0] if calls else None,
        ),
        attempts,
    )


def write_ledger(tmp_path: Path, entries: Sequence[LedgerEntry]) -> str:
    """An SQLite ledger holding ``entries``; its URL."""
    with open_database("sqlite", tmp_path) as db:
        migrate(db)

        async def insert() -> None:
            ledger = Ledger(db.engine())
            try:
                await ledger.insert(list(entries))
            finally:
                await ledger.aclose()

        asyncio.run(insert())
        return db.url


def _hour(day: int, hour: int, minute: int = 0) -> datetime:
    return DAY_ONE + timedelta(days=day, hours=hour, minutes=minute)


SMALL_OK: Call = ("small", "primary", "ok", 500, 100, 200)
TRAFFIC = [
    entry("served-1", _hour(0, 10), 0.9, [SMALL_OK]),
    entry("served-2", _hour(1, 10, 30), 0.9, [SMALL_OK]),
    # The decision found small full and spilled at once: the first call is the spill.
    entry("spilled-at-once", _hour(0, 10, 5), 0.9, [("frontier", "spill", "ok", 520, 0, 300)]),
    # small refused the call (saturated) and it spilled: small is where it meant to go.
    entry(
        "failed-then-spilled",
        _hour(1, 14),
        0.95,
        [("small", "primary", "error", 0, 0, 0), ("frontier", "spill", "ok", 480, 0, 280)],
    ),
    # medium's answer was rejected and escalated to the frontier.
    entry(
        "escalated",
        _hour(0, 14),
        0.6,
        [
            ("medium", "primary", "rejected", 600, 0, 150),
            ("frontier", "escalation", "ok", 600, 0, 250),
        ],
    ),
    entry("kept-on-medium", _hour(1, 14, 10), 0.6, [("medium", "primary", "ok", 600, 0, 150)]),
    # The verify step's two extra samples (one call, n=3), recorded before the answer.
    entry(
        "sampled",
        _hour(0, 11),
        0.9,
        [("small", "sample", "ok", 0, 0, 400), SMALL_OK],
    ),
    entry("other-policy", _hour(0, 12), 0.9, [SMALL_OK], policy="another"),
]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> DayTraffic:
    """The default policy's day, read from a ledger of TRAFFIC."""
    url = write_ledger(tmp_path_factory.mktemp("plan"), TRAFFIC)
    return day_traffic(read_requests(url, None), load_policy("default"))


def _flow(traffic: DayTraffic, tier: str) -> Flow:
    (flow,) = [f for f in traffic.flows if f.tier == tier and f.workload == "interactive"]
    return flow


def test_spilled_requests_enter_the_tier_they_meant_to(traffic: DayTraffic) -> None:
    """Spilled at once (confidence 0.9 clears small's 0.825) or after small refused it, a
    request counts as entering small; its tokens do not blur small's own mix."""
    small = _flow(traffic, "small")
    # hour 10: three requests over the two days it occurs in; hour 14: one over two.
    assert small.entering[10] == pytest.approx(1.5)
    assert small.entering[14] == pytest.approx(0.5)
    assert small.mix.prompt_tokens == 500  # the served visits only, not the spills' 520/480
    assert small.mix.cached_tokens == 100
    assert traffic.requests == 7  # the other policy's request is not this plan's


def test_escalations_follow_the_answers_served(traffic: DayTraffic) -> None:
    """One of medium's two served answers escalated to the frontier; the escalation does not
    count as a request entering the frontier."""
    medium = _flow(traffic, "medium")
    assert medium.escalations == (("frontier", 0.5),)
    frontier = _flow(traffic, "frontier")
    assert frontier.per_day == 0
    assert frontier.mix.completion_tokens == 250  # the escalated answer's tokens


def test_samples_are_sequences_of_the_same_visit(traffic: DayTraffic) -> None:
    """Three served small visits, one with 400 more tokens of samples: 1,000 decoded over
    600 answered, and the sampled visit's 3 sequences share one prefill."""
    small = _flow(traffic, "small")
    assert small.mix.completion_tokens == 200
    assert small.mix.decode_tokens == pytest.approx(200 + 400 / 3)
    assert small.mix.prefill_tokens == 400


def test_the_day_averages_each_hour_over_the_days_it_occurs(traffic: DayTraffic) -> None:
    """From day one 10:00 to day two 14:10: hours 10-14 occur twice, the rest once."""
    small = _flow(traffic, "small")
    assert small.entering[11] == pytest.approx(0.5)  # one request in two 11 o'clocks
    assert traffic.days == pytest.approx(28.17 / 24, abs=0.01)


def test_a_ledger_recorded_faster_than_real_time(tmp_path: Path) -> None:
    """With a day of 240 s, a request every 10 s for 240 s fills each 'hour' once."""
    entries = [
        entry(f"r{i}", DAY_ONE + timedelta(seconds=10 * i + 1), 0.9, [SMALL_OK]) for i in range(24)
    ]
    facts = read_requests(write_ledger(tmp_path, entries), None)
    traffic = day_traffic(facts, load_policy("default"), day=timedelta(seconds=240))
    assert _flow(traffic, "small").entering == (1.0,) * 24


def test_a_request_counts_in_the_hour_it_arrived(tmp_path: Path) -> None:
    """The ledger records a request when it is answered: with a day of 240 s, requests sent
    every 10 s, every other one answered 12 s later (in the next 'hour'; the last in the next
    'day'), still fill each 'hour' once."""
    entries = []
    for i in range(24):
        latency = 12.0 if i % 2 else 0.5
        at = DAY_ONE + timedelta(seconds=10 * i + 1 + latency)
        entries.append(entry(f"r{i}", at, 0.9, [SMALL_OK], latency_ms=latency * 1000))
    facts = read_requests(write_ledger(tmp_path, entries), None)
    traffic = day_traffic(facts, load_policy("default"), day=timedelta(seconds=240))
    assert _flow(traffic, "small").entering == (1.0,) * 24


def test_a_window_without_the_policys_requests_names_those_it_has(tmp_path: Path) -> None:
    """Planning policy 'default' on a ledger of another policy's traffic says what is there."""
    facts = read_requests(write_ledger(tmp_path, TRAFFIC[-1:]), None)
    policy: Policy = load_policy("default")
    with pytest.raises(PlanError, match=r"no request of policy 'default'.*policies there: another"):
        day_traffic(facts, policy)
