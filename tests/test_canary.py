"""Canary rollout: a candidate policy routes a stable share of the traffic through the real proxy
(scripted tiers on loopback, the ledger in SQLite), and ``cascade report`` compares the arms."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
from sqlalchemy import select

from cascade.cli import report as report_cli
from cascade.errors import PolicyError
from cascade.ledger import AttemptRecord, LedgerEntry, RequestRecord, create_engine
from cascade.ledger.models import Request
from cascade.policy import load_policy
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.ledger_databases import sqlite_ledger
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier

POLICY = """\
name: canarytest
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
    threshold: {threshold}
  - name: big
    model: frontier-x
    kind: self_hosted
    endpoint: {big}/v1
    price: {{input_usd_per_mtok: 2, output_usd_per_mtok: 10}}
"""
NOW = datetime.now(UTC)
CANARY = "learning:\n  canary: {{policy: candidate.yaml, share: {share}, by: {by}}}\n"


@dataclass
class Proxy:
    """A running proxy whose live policy sends everything to ``small`` (threshold 0) and whose
    canary candidate sends everything to ``big`` (threshold 1: no score clears it)."""

    client: httpx.Client
    folder: Path
    database: str
    tiers: dict[str, str]

    def send(self, tenant: str | None = None) -> httpx.Response:
        """One plain question, from ``tenant`` when given."""
        body = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}
        headers = {} if tenant is None else {"x-cascade-tenant": tenant}
        reply = self.client.post("/v1/chat/completions", json=body, headers=headers)
        reply.raise_for_status()
        return reply


def _policy(tiers: dict[str, str], threshold: float, canary: str = "") -> str:
    return POLICY.format(threshold=threshold, **tiers) + canary


@contextmanager
def _proxy(tmp_path: Path, *, share: float, by: str) -> Iterator[Proxy]:
    small, big = ScriptedTier("small"), ScriptedTier("big")
    with serving(small.app()) as small_url, serving(big.app()) as big_url:
        tiers = {"small": small_url, "big": big_url}
        (tmp_path / "candidate.yaml").write_text(_policy(tiers, 1.0))
        live = tmp_path / "live.yaml"
        live.write_text(_policy(tiers, 0.0, CANARY.format(share=share, by=by)))
        database = f"sqlite:///{tmp_path / 'ledger.db'}"
        settings = ServerSettings(
            policies=(str(live),),
            database_url=database,
            spool_path=str(tmp_path / "spool"),
            reload_interval_s=0.05,
        )
        with serving(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Proxy(client, tmp_path, database, tiers)


def _rows(database: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        engine = create_engine(database)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(select(Request.__table__))
                return [dict(row._mapping) for row in result]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_tenant_stays_in_one_arm_and_the_share_lands_near_its_setting(tmp_path: Path) -> None:
    """With ``by: tenant`` and share 0.3, each of 100 tenants' two requests take the same arm,
    about 30% of the tenants are in the canary, and each arm routes by its own thresholds and is
    recorded with its own policy version; requests without a tenant are drawn one by one."""
    with _proxy(tmp_path, share=0.3, by="tenant") as proxy:
        tenants = [f"team-{n}" for n in range(100)]
        for tenant in tenants * 2:
            proxy.send(tenant)
        headers = [proxy.send().headers for _ in range(30)]
        live = load_policy(proxy.folder / "live.yaml")
    assert live.learning.canary is not None
    versions = {"control": live.fingerprint, "canary": live.learning.canary.candidate.fingerprint}
    rows = _rows(proxy.database)
    arms: dict[str | None, set[str]] = defaultdict(set)
    for row in rows:
        arms[row["tenant"]].add(row["arm"])
        assert row["policy_version"] == versions[row["arm"]]
        assert row["first_tier"] == ("big" if row["arm"] == "canary" else "small")
    assert all(len(arms[tenant]) == 1 for tenant in tenants)
    in_canary = sum(1 for tenant in tenants if arms[tenant] == {"canary"})
    # Binomial(100, 0.3): mean 30, sd 4.6; the hash is fixed, so this count never changes.
    assert 15 <= in_canary <= 45
    assert arms[None] == {"canary", "control"}  # 30 tenant-less requests drawn by request
    assert {h["x-cascade-tier"] for h in headers} == {"small", "big"}


def test_by_request_each_request_is_drawn_on_its_own(tmp_path: Path) -> None:
    """With ``by: request`` and share 0.25, one tenant's 200 requests split near a quarter and
    three quarters between the arms, each answered by its arm's tier."""
    with _proxy(tmp_path, share=0.25, by="request") as proxy:
        for _ in range(200):
            proxy.send("one-team")
    rows = _rows(proxy.database)
    canary = [r for r in rows if r["arm"] == "canary"]
    assert len(rows) == 200
    assert 20 <= len(canary) <= 80  # Binomial(200, 0.25): 50, sd 6.1 (5 sd either side)
    assert {r["final_tier"] for r in canary} == {"big"}
    assert {r["final_tier"] for r in rows if r["arm"] == "control"} == {"small"}


def test_a_bad_candidate_is_refused_and_the_last_good_policies_stay(tmp_path: Path) -> None:
    """A candidate that stops validating is refused on reload with its file and problem named;
    the proxy keeps routing the canary with the last good candidate, and takes the next good
    one (a change to the candidate's file alone reloads it)."""
    with _proxy(tmp_path, share=1.0, by="request") as proxy:
        assert proxy.send().headers["x-cascade-tier"] == "big"
        candidate = proxy.folder / "candidate.yaml"
        with structlog.testing.capture_logs() as logs:
            candidate.write_text(_policy(proxy.tiers, 1.0).replace("threshold:", "threshhold:"))
            assert wait_until(lambda: any(e["event"] == "policy.reload_refused" for e in logs))
        refused = next(e for e in logs if e["event"] == "policy.reload_refused")
        assert f"the candidate {candidate} does not load" in refused["error"]
        assert "threshhold: unknown key; did you mean threshold?" in refused["error"]
        assert proxy.send().headers["x-cascade-tier"] == "big"
        candidate.write_text(_policy(proxy.tiers, 0.0))
        assert wait_until(lambda: proxy.send().headers["x-cascade-tier"] == "small")


def test_a_candidate_must_load_and_name_the_live_policy(tmp_path: Path) -> None:
    """Loading the live policy loads its candidate: a missing file, a candidate of another
    name, and one that runs a canary of its own are each refused at the live file's
    ``learning.canary.policy`` line, saying what is wrong."""
    tiers = {"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:10"}
    live = tmp_path / "live.yaml"
    live.write_text(_policy(tiers, 0.0, CANARY.format(share=0.1, by="tenant")))
    candidate = tmp_path / "candidate.yaml"
    with pytest.raises(PolicyError, match=rf"live\.yaml:\d+: learning\.canary\.policy: the "
                       rf"candidate {candidate} is not a file"):  # fmt: skip
        load_policy(live)
    candidate.write_text(_policy(tiers, 0.5).replace("name: canarytest", "name: other"))
    with pytest.raises(PolicyError, match="names policy 'other'; a canary must have the live "
                       "policy's name 'canarytest'"):  # fmt: skip
        load_policy(live)
    candidate.write_text(_policy(tiers, 0.5, CANARY.format(share=0.1, by="request")))
    with pytest.raises(PolicyError, match="has a canary of its own; a candidate may not"):
        load_policy(live)
    candidate.write_text(_policy(tiers, 0.5))
    assert load_policy(live).learning.canary is not None


def _entry(
    rid: str, arm: str | None, *, cost: str, useful: int, latency: float, escalated: bool,
    days_ago: float = 0.0,
) -> LedgerEntry:  # fmt: skip
    attempts = [AttemptRecord(seq=0, tier="small", model="m", role="primary", outcome="ok")]
    if escalated:
        attempts = [
            AttemptRecord(seq=0, tier="small", model="m", role="primary", outcome="rejected"),
            AttemptRecord(seq=1, tier="big", model="m", role="escalation", outcome="ok"),
        ]
    request = RequestRecord(
        request_id=rid,
        created_at=NOW - timedelta(days=days_ago, seconds=latency),
        policy="canarytest",
        policy_version={"canary": "cand-v", None: "live-v"}.get(arm, "live-v"),
        workload="interactive",
        decision_reason="threshold",
        status="ok",
        http_status=200,
        first_tier="small",
        final_tier=attempts[-1].tier,
        latency_ms=latency,
        cost_usd=Decimal(cost),
        completion_tokens=100,
        useful_tokens=useful,
        useless=useful == 0,
        arm=arm,
    )
    return LedgerEntry(request, tuple(attempts))


def _hand_made_ledger(tmp_path: Path) -> str:
    """Control: 100 requests, latency 1..100 ms; 20 escalated at $0.003, 80 at $0.001 of which
    10 marked useless (no useful token), 100 useful tokens each otherwise. Canary: 80 requests,
    latency 2..160 ms; 4 escalated at $0.002, 76 at $0.0005 of which 2 useless. Not counted: a
    request of the policy without an arm, and a control request from before the window."""
    entries = [
        _entry(f"c{i}", "control", cost="0.003" if i < 20 else "0.001", escalated=i < 20,
               useful=0 if 20 <= i < 30 else 100, latency=float(i + 1))
        for i in range(100)
    ] + [
        _entry(f"k{i}", "canary", cost="0.002" if i < 4 else "0.0005", escalated=i < 4,
               useful=0 if 4 <= i < 6 else 100, latency=2.0 * (i + 1))
        for i in range(80)
    ] + [
        _entry("unarmed", None, cost="9", useful=1, latency=1.0, escalated=False),
        _entry("old", "control", cost="9", useful=1, latency=1.0, escalated=False, days_ago=3),
    ]  # fmt: skip

    return sqlite_ledger(tmp_path, entries)


def _report(url: str, policy: Path, *args: str) -> None:
    parser = argparse.ArgumentParser(prog="cascade")
    report_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["report", "--url", url, "--policy", str(policy), *args])
    assert ns.command(ns) == 0


def test_the_report_compares_the_arms_with_confidence_intervals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the hand-made ledger: cost per request $0.0014 [0.0012424, 0.0015576] against
    $0.000575 [0.0005029, 0.0006471], a difference of -$0.000825 [-0.0009983, -0.0006517];
    cost per useful token 0.14/9000 against 0.046/7800; escalation 20% [13.34%, 28.88%]
    (Wilson) against 5% [1.96%, 12.16%], -15% [-24.39%, -5.22%] (Newcombe); useless 10%
    against 2.5%; p95 latency 95 ms [90, 100] against 152 ms [144, 160] (order statistics),
    +57 ms [47.57, 66.43]."""
    url = _hand_made_ledger(tmp_path)
    policy = tmp_path / "canarytest.yaml"
    policy.write_text(_policy({"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:10"}, 0))
    _report(url, policy, "--json", "--since", "24h")
    (section,) = json.loads(capsys.readouterr().out)["canary"]
    control, canary, diff = (
        section["arms"]["control"],
        section["arms"]["canary"],
        section["difference"],
    )

    def interval(estimate: dict[str, float]) -> tuple[float, float, float]:
        return (estimate["value"], estimate["low"], estimate["high"])

    assert section["policy"] == "canarytest"
    assert (control["requests"], canary["requests"]) == (100, 80)
    assert (control["policy_versions"], canary["policy_versions"]) == (["live-v"], ["cand-v"])
    assert (Decimal(control["cost_usd"]), Decimal(canary["cost_usd"])) == (
        Decimal("0.14"),
        Decimal("0.046"),
    )
    close = pytest.approx
    assert interval(control["cost_per_request_usd"]) == close(
        (0.0014, 0.0012424, 0.0015576), rel=1e-4
    )
    assert interval(canary["cost_per_request_usd"]) == close(
        (0.000575, 0.0005029, 0.0006471), rel=1e-4
    )
    assert interval(diff["cost_per_request_usd"]) == close(
        (-0.000825, -0.0009983, -0.0006517), rel=1e-4
    )
    assert interval(control["cost_per_useful_token_usd"]) == close(
        (1.55556e-5, 1.36813e-5, 1.74299e-5), rel=1e-4
    )
    assert interval(canary["cost_per_useful_token_usd"]) == close(
        (5.89744e-6, 5.13669e-6, 6.65818e-6), rel=1e-4
    )
    assert interval(control["escalation_rate"]) == close((0.2, 0.133367, 0.288829), rel=1e-4)
    assert interval(canary["escalation_rate"]) == close((0.05, 0.0196136, 0.121623), rel=1e-4)
    assert interval(diff["escalation_rate"]) == close((-0.15, -0.243883, -0.0521747), rel=1e-4)
    assert interval(control["useless_rate"]) == close((0.1, 0.0552291, 0.174366), rel=1e-4)
    assert interval(canary["useless_rate"]) == close((0.025, 0.00688289, 0.0866443), rel=1e-4)
    assert interval(control["p95_latency_ms"]) == (95.0, 90.0, 100.0)
    assert interval(canary["p95_latency_ms"]) == (152.0, 144.0, 160.0)
    assert interval(diff["p95_latency_ms"]) == close((57.0, 47.566, 66.434), rel=1e-4)


def test_the_text_and_the_page_show_the_arms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The terminal report has a canary block per policy with both arms and their difference;
    the HTML page has the same table; an arm too small for an interval says n/a."""
    url = _hand_made_ledger(tmp_path)
    policy = tmp_path / "canarytest.yaml"
    policy.write_text(_policy({"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:10"}, 0))
    page = tmp_path / "report.html"
    _report(url, policy, "--since", "24h", "--html", str(page))
    text = capsys.readouterr().out
    assert "canary: policy canarytest, canary cand-v against control live-v" in text
    assert "escalation rate         20.00% [13.34%, 28.88%]" in text
    assert "5.00% [1.96%, 12.16%]" in text
    assert "-15.00% [-24.39%, -5.22%]" in text
    assert "95.0 [90.0, 100.0]" in text
    body = page.read_text(encoding="utf-8")
    assert "<h2>Canary</h2>" in body
    assert (
        "<td>p95 latency, ms</td><td>95.0 [90.0, 100.0]</td><td>152.0 [144.0, 160.0]</td>" in body
    )
