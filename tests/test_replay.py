"""``cascade replay`` on a real ledger (SQLite and Postgres) written through the ledger's store.

The logged rows carry real scorer numbers (``prompt_features`` of real prompts, as the proxy
keeps them) and are read back by the streaming reader; the candidate's real ONNX model scores
them again. The figures are checked against sums done by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from cascade.core.decision import by_confidence
from cascade.errors import LedgerError
from cascade.ledger import AttemptRecord, Ledger, LedgerEntry, RequestRecord, create_engine
from cascade.ledger.migrate import upgrade_database
from cascade.ledger.off_policy import Z_95
from cascade.ledger.replay import choose_tiers, replay_policy
from cascade.model.features import PROMPT_FEATURES_VERSION, prompt_features
from cascade.model.scorer import OnnxScorer
from cascade.policy import parse_policy
from cascade.server.recording import features_text
from cascade.simulator.dataset import iter_rows
from tests.conftest import TWO_TIERS
from tests.test_proxy_ledger import postgres_database

LOGGED = TWO_TIERS + "learning:\n  explore: 0.2\n"
ALL_SMALL = TWO_TIERS.replace("threshold: 0.7", "threshold: 0.0")
ALL_BIG = TWO_TIERS.replace("threshold: 0.7", "threshold: 1.0")
TEXT_MODEL = TWO_TIERS + "scorer:\n  model: tfidf-lr-v1\n"
COPIES = 20  # each pattern logged 20 times: an effective sample size above 30


@dataclass(frozen=True)
class Logged:
    """One pattern of logged request: where it went and how it ended."""

    decided: str
    first: str
    propensity: float
    cost: str
    useful: int
    escalated: bool = False
    useless: bool = False
    explored: bool = False


# Logged under team-a (small's threshold 0.7) with exploration 0.2, each pattern COPIES times:
PATTERNS = (
    Logged("small", "small", 1.0, "0.001", 100),
    Logged("small", "small", 1.0, "0.012", 80, escalated=True),  # small rejected, big answered
    Logged("big", "small", 0.2, "0.001", 40, explored=True),
    Logged("big", "big", 0.8, "0.010", 100),
    Logged("big", "big", 0.8, "0.010", 0, useless=True),  # feedback: of no use
)
PROMPTS = [row.prompt for row in itertools.islice(iter_rows(), 200)]


def _entry(n: int, row: Logged, *, explore: bool = True, **overrides: object) -> LedgerEntry:
    first = row.first if explore else row.decided
    propensity = row.propensity if explore else 1.0
    cost = Decimal(row.cost)
    attempts = [
        AttemptRecord(
            seq=0,
            tier=first,
            model=first,
            role="primary",
            outcome="rejected" if row.escalated else "ok",
            cost_usd=cost / 2 if row.escalated else cost,
            completion_tokens=row.useful,
        )
    ]
    if row.escalated:
        attempts.append(
            AttemptRecord(seq=1, tier="big", model="big", role="escalation", outcome="ok",
                          cost_usd=cost / 2, completion_tokens=row.useful)
        )  # fmt: skip
    fields: dict[str, object] = {
        "request_id": f"r{n:05d}",
        "policy": "team-a",
        "policy_version": "v1",
        "workload": "interactive",
        "decision_reason": "thresholds",
        "status": "ok",
        "http_status": 200,
        "tenant": "acme",
        "first_tier": first,
        "final_tier": attempts[-1].tier,
        "cost_usd": cost,
        "useful_tokens": row.useful,
        "completion_tokens": row.useful,
        "features": features_text(_features(PROMPTS[n % len(PROMPTS)])),
        "feature_version": PROMPT_FEATURES_VERSION,
        "decided_tier": row.decided,
        "propensity": propensity,
        "explored": row.explored and explore,
    }
    fields.update(overrides)
    return LedgerEntry(RequestRecord(**fields), tuple(attempts))  # type: ignore[arg-type]


def _features(prompt: str) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(prompt_features(prompt), dtype=np.float32))


def patterned_entries(explore: bool = True) -> list[LedgerEntry]:
    """The patterns, plus requests replay must count and leave out, or never see."""
    entries = [
        _entry(n, PATTERNS[n % len(PATTERNS)], explore=explore)
        for n in range(COPIES * len(PATTERNS))
    ]
    n = len(entries)
    small = PATTERNS[0]
    return [
        *entries,
        _entry(n, small, features=None, feature_version=None),  # a text model's request
        _entry(n + 1, small, feature_version="prompt-features-v1"),
        _entry(n + 2, small, propensity=None, first_tier=None),  # refused before any call
        _entry(n + 3, small, policy="other"),  # another policy: not in the window
        _entry(n + 4, small, tenant="globex"),  # shown only without --tenant
        _entry(n + 5, small, created_at=datetime.now(UTC) - timedelta(days=30)),  # too old
        _entry(n + 6, small, tenant="initech", feature_version="prompt-features-v1"),
    ]


async def _store(url: str, entries: list[LedgerEntry]) -> None:
    engine = create_engine(url)
    ledger = Ledger(engine)
    try:
        await ledger.insert(entries)
        for entry, row in zip(entries, itertools.cycle(PATTERNS), strict=False):
            if row.useless:
                assert await ledger.mark_useless(entry.request.request_id)
    finally:
        await ledger.aclose()
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty, migrated ledger of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        upgrade_database(url)
        yield url
        return
    with postgres_database() as url:
        upgrade_database(url)
        yield url


def write_ledger(url: str, entries: list[LedgerEntry]) -> str:
    asyncio.run(_store(url, entries))
    return url


def _week() -> datetime:
    return datetime.now(UTC) - timedelta(days=7)


def test_all_small_is_estimated_from_the_explored_requests(database: str) -> None:
    """Sending everything to small counts the requests logged there, the explored one five
    times (1 / 0.2), on SQLite and Postgres alike; the rest are counted as left out."""
    url = write_ledger(database, patterned_entries())
    result = replay_policy(url, parse_policy(ALL_SMALL), since=_week(), tenant="acme")
    assert (result.requests, result.replayed) == (103, 100)
    assert result.left_out == {
        "no features kept (a text model's, or recorded before the ledger kept them)": 1,
        "features of another version (prompt-features-v1)": 1,
        "not decided by score (no tier called, or a model asked for by name)": 1,
        # the other policy's, the other tenant's and the old request are outside the window
    }
    assert result.tiers == {"small": 100}
    assert result.logged_tiers == {"small": 60, "big": 40}
    assert result.changed == 60  # the requests the thresholds sent to big
    est = result.estimate
    assert (est.matched, est.unsupported) == (60, 0)
    assert est.ess == pytest.approx((COPIES * 7) ** 2 / (COPIES * 27))  # weights 1, 1, 5
    candidate = est.candidate
    assert candidate is not None
    weight = COPIES * 7
    mean = 0.018 / 7  # (0.001 + 0.012 + 5 x 0.001) / 7
    spread = COPIES * ((0.001 - mean) ** 2 + (0.012 - mean) ** 2 + 25 * (0.001 - mean) ** 2)
    half = Z_95 * math.sqrt(spread) / weight
    cost = candidate.mean_cost_usd
    assert (cost.value, cost.low, cost.high) == pytest.approx((mean, mean - half, mean + half))
    assert candidate.escalation_rate.value == pytest.approx(1 / 7)
    assert candidate.good_rate.value == pytest.approx(1.0)
    assert candidate.cost_per_useful_token is not None
    assert candidate.cost_per_useful_token.value == pytest.approx(0.018 / 380)
    logged = est.logged
    assert logged is not None
    assert logged.mean_cost_usd.value == pytest.approx(0.034 / 5)
    assert logged.escalation_rate.value == pytest.approx(1 / 5)
    assert logged.good_rate.value == pytest.approx(4 / 5)
    assert logged.cost_per_useful_token is not None
    assert logged.cost_per_useful_token.value == pytest.approx(0.034 / 320)


def _as_logged(policy_text: str, count: int = 120) -> list[LedgerEntry]:
    """Requests on real prompts decided by ``policy_text``'s thresholds without exploration,
    as the proxy logs them: the real scorer's confidence, the tier it chose, propensity 1."""
    policy = parse_policy(policy_text)
    scorer = OnnxScorer(device="cpu")
    entries = []
    for n, prompt in enumerate(PROMPTS[:count]):
        tier, _ = by_confidence(policy.tiers, scorer.score(prompt))
        cost = ("0.0004", "0.0090")[tier.name == "big"]
        row = Logged(tier.name, tier.name, 1.0, cost, 10 + n % 7, escalated=n % 11 == 0)
        entries.append(_entry(n, row, explore=False, useless=n % 13 == 0))
    return entries


def test_the_logged_policy_replayed_is_its_measured_figures(database: str) -> None:
    """The logged policy as its own candidate decides every request as it was decided, and its
    estimate is the measured figures exactly, with the sample's interval around them."""
    url = write_ledger(database, _as_logged(TWO_TIERS))
    result = replay_policy(url, parse_policy(TWO_TIERS))
    assert result.changed == 0
    assert result.tiers == result.logged_tiers
    assert set(result.tiers) == {"small", "big"}
    est = result.estimate
    assert (est.rows, est.matched, est.unsupported, est.ess) == (120, 120, 0, 120)
    assert est.candidate is not None
    assert est.candidate == est.logged
    cost = est.candidate.mean_cost_usd
    assert cost.low < cost.value < cost.high
    assert cost.half_width < cost.value / 2


def test_a_cheaper_candidate_without_exploration_is_not_supported(database: str) -> None:
    """Logged without exploration, the traffic shows nothing of small on the requests sent to
    big: replay says it cannot estimate, and why, instead of giving a number."""
    url = write_ledger(database, patterned_entries(explore=False))
    result = replay_policy(url, parse_policy(ALL_SMALL), since=_week(), tenant="acme")
    est = result.estimate
    assert (est.rows, est.unsupported) == (100, 60)
    assert est.candidate is None
    assert est.reasons[0].startswith("60 of 100 requests (60.0%, more than 5%) go to a tier")
    assert result.tiers == {"small": 100}  # the tier mix is exact all the same


def test_choose_tiers_is_by_confidence_for_every_workload() -> None:
    """The vectorized choice is by_confidence's, over each workload's allowed tiers; a
    workload the policy does not have gets no tier."""
    policy = parse_policy(
        TWO_TIERS + "workloads:\n  interactive: {}\n  cheap:\n    tiers: [small]\n"
    )
    confidence = np.random.default_rng(5).random(400)
    confidence[:3] = (0.7, np.nextafter(0.7, 0), 1.0)
    workloads = ["interactive"] * 200 + ["cheap"] * 199 + ["nope"]
    chosen = choose_tiers(policy, workloads, confidence)
    expected = [
        by_confidence(
            [t for t in policy.tiers if w == "interactive" or t.name == "small"], float(c)
        )[0].name
        for w, c in zip(workloads[:-1], confidence, strict=False)
    ]
    assert chosen[:-1] == expected
    assert chosen[:3] == ["small", "big", "small"]
    assert set(chosen[200:399]) == {"small"}
    assert chosen[-1] is None


def test_features_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    """Rows claiming the model's feature version with another number of values: an error that
    says so, not a model fed garbage."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade_database(url)
    write_ledger(url, [_entry(0, PATTERNS[0], features="[0.5,1,2]")])
    with pytest.raises(LedgerError, match=r"not rows of 28 numbers .* but of 3"):
        replay_policy(url, parse_policy(TWO_TIERS))
