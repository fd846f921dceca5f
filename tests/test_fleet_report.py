"""``cascade report``'s self-hosted fleet section against a real SQLite ledger, by hand-computed
bills: what the GPUs cost over the window against what they served."""

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

from cascade.cli import report as report_cli
from cascade.ledger import AttemptRecord, Ledger, LedgerEntry, RequestRecord
from tests.ledger_databases import migrate, open_database

D = Decimal
NOW = datetime.now(UTC).replace(microsecond=0)

# A self-hosted tier on two replicas (two GPUs billed by default), $2.30 an hour each, decoding
# 2,000 tok/s and prefilling 20,000, with $300 a month of operations; an API tier above it.
FLEET_POLICY = """\
name: fleet
tiers:
  - name: small
    model: distill-7b
    kind: self_hosted
    replicas: [http://127.0.0.1:8001/v1, http://127.0.0.1:8002/v1]
    price: {gpu_usd_per_hour: 2.30, tokens_per_second: 2000, prefill_tokens_per_second: 20000,
            ops_usd_per_month: 300}
    overflow: big
  - name: big
    model: openai/gpt-4o
    kind: api
    price: {input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}
"""


def _entry(
    n: int,
    tier: str,
    *,
    hours_ago: float,
    prompt: int,
    cached: int = 0,
    completion: int,
    usd: str,
) -> LedgerEntry:
    attempt = AttemptRecord(
        seq=0,
        tier=tier,
        model=tier,
        role="primary",
        outcome="ok",
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        cost_usd=D(usd),
    )
    request = RequestRecord(
        request_id=f"r{n}",
        created_at=NOW - timedelta(hours=hours_ago),
        tenant=None,
        policy="fleet",
        policy_version="v1",
        workload="interactive",
        decision_reason="threshold",
        status="ok",
        http_status=200,
        first_tier=tier,
        final_tier=tier,
        prefix_hash=None,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        cost_usd=D(usd),
        useful_tokens=completion,
    )
    return LedgerEntry(request, (attempt,))


def _ledger(tmp_path: Path, entries: Sequence[LedgerEntry]) -> str:
    async def insert(ledger: Ledger) -> None:
        try:
            await ledger.insert(list(entries))
        finally:
            await ledger.aclose()

    with open_database("sqlite", tmp_path) as db:
        migrate(db)
        asyncio.run(insert(Ledger(db.engine())))
        return db.url


def _report(url: str, policy: Path, *args: str) -> None:
    parser = argparse.ArgumentParser(prog="cascade")
    report_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["report", "--url", url, "--policy", str(policy), *args])
    assert ns.command(ns) == 0


def _json(url: str, policy: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    _report(url, policy, "--json", *args)
    return json.loads(capsys.readouterr().out)["fleet"]


# The worked example: eight requests in the last day, each 5.2M prompt tokens (0.7M of them from
# the engine's prefix cache) and 1.8M completion tokens: 4.5M / 20,000 + 1.8M / 2,000 = 1,125 s,
# charged 0.3125 GPU-hours x $2.30 = $0.71875 each by the ledger.
WORKED = [
    _entry(n, "small", hours_ago=n + 1, prompt=5_200_000, cached=700_000, completion=1_800_000,
           usd="0.71875")
    for n in range(8)
]  # fmt: skip


def test_the_worked_example_bills_two_gpus_and_operations_over_the_window(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Over 24 h two GPUs at $2.30 bill $110.40 and a $300 month of operations $10: $120.40 for
    56M tokens served is $2.15 per million, against the ledger's nominal $5.75 (2.5 busy
    GPU-hours of 48: utilization 5.21%), 20.94x the nominal."""
    url, policy = _ledger(tmp_path, WORKED), write_policy(FLEET_POLICY, "fleet.yaml")
    fleet = _json(url, policy, capsys, "--since", "24h")
    assert fleet["window"] == "since"
    assert D(fleet["hours"]) == 24
    small, = fleet["tiers"]  # fmt: skip
    assert small["tier"] == "small"
    assert small["priced_by"] == "gpu"
    assert small["gpus"] == 2
    assert (small["calls"], small["served_tokens"], small["cached_tokens"]) == (
        8,
        56_000_000,
        5_600_000,
    )
    assert D(small["billed_usd"]) == D("120.40")
    assert D(small["charged_usd"]) == D("5.75")
    assert D(small["busy_gpu_hours"]) == D("2.5")
    assert D(small["utilization"]) == D("2.5") / 48
    assert D(small["effective_usd_per_mtok"]) == D("2.15")
    assert D(small["nominal_usd_per_mtok"]) == D("5.75") / 56
    assert D(small["effective_over_nominal"]) == D("120.40") / D("5.75")
    # Useful tokens: the completions the tier delivered, 14.4M: $120.40 / 14.4M each.
    assert D(small["effective_usd_per_useful_token"]) == D("120.40") / 14_400_000
    assert D(small["capacity_tokens"]) == 2 * 2000 * 3600 * 24
    # On big ($2.50/M input, cached too, $10/M output) the same 56M tokens cost $248; the fleet's
    # $120.40 a day matches that at 27.19M tokens a day, and it served 56M a day.
    even = small["break_even"]
    assert even["api_tier"] == "big"
    assert D(even["api_usd_per_mtok"]) == D(248) / 56
    assert D(even["tokens_per_day"]) == D("120.40") / (D(248) / 56_000_000)
    # At full batch a token of this mix takes 9,000 s / 56M of a GPU: two serve 1.0752G a day.
    assert D(even["fleet_tokens_per_day"]) == 1_075_200_000
    assert even["reachable"] is True


def test_a_fleet_idle_half_the_time_costs_twice_the_nominal_per_token(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """One GPU at $3.60/hour decoding 1,000 tok/s serves 3.6M tokens (one busy hour) between a
    first and a last request two hours apart: utilization 50%, each token cost twice its
    nominal price, as the text report says."""
    policy = write_policy(
        FLEET_POLICY.replace("replicas: [http://127.0.0.1:8001/v1, http://127.0.0.1:8002/v1]",
                             "endpoint: http://127.0.0.1:8001/v1")
        .replace("gpu_usd_per_hour: 2.30, tokens_per_second: 2000",
                 "gpu_usd_per_hour: 3.60, tokens_per_second: 1000")
        .replace(",\n            ops_usd_per_month: 300", ""),
        "idle.yaml",
    )  # fmt: skip
    entries = [
        _entry(1, "small", hours_ago=3, prompt=0, completion=1_800_000, usd="1.80"),
        _entry(2, "small", hours_ago=1, prompt=0, completion=1_800_000, usd="1.80"),
    ]
    url = _ledger(tmp_path, entries)
    _report(url, policy, "--since", "all")
    out = capsys.readouterr().out
    assert "window 2.00 h (first to last request" in out
    assert "1 GPU x 3.6 USD/h = 7.2000 USD over 2.00 h" in out
    assert "utilization    50% (busy 1.00 h of 2.00 h of GPU time)" in out
    assert "effective      2.000000 USD per 1M tokens" in out
    assert "nominal        1.000000 USD per 1M tokens (charged 3.600000 USD" in out
    assert "effective / nominal 2.00x" in out
    # $86.40 a day against big's $10/M output: 8.64M tokens a day; it served 43.2M a day.
    assert "break-even     8,640,000 tokens/day against big (10.000000 USD per 1M tokens" in out
    assert "served 43,200,000 tokens/day in the window" in out


def test_calls_priced_at_a_smaller_batch_count_the_gpu_time_they_were_priced_at(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """3.6M completion tokens take half a GPU-hour at the full batch (2,000 tok/s) but the
    ledger charged $4.60, two GPU-hours at $2.30: the calls were priced at a smaller batch (a
    workload's max_tpot_ms), so the fleet counts busy for the two hours it was charged for."""
    entries = [
        _entry(n, "small", hours_ago=n + 1, prompt=0, completion=1_800_000, usd="2.30")
        for n in range(2)
    ]
    url, policy = _ledger(tmp_path, entries), write_policy(FLEET_POLICY, "fleet.yaml")
    small, = _json(url, policy, capsys, "--since", "24h")["tiers"]  # fmt: skip
    assert D(small["busy_gpu_hours"]) == 2
    assert D(small["utilization"]) == D(2) / 48


def test_the_since_window_bills_idle_hours_that_all_time_does_not(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--since 7d bills the fleet for all 168 hours and counts only that week's traffic; --since
    all spans the first to the last request (ten days back to one hour ago) with all of it."""
    old = _entry(9, "small", hours_ago=240, prompt=0, completion=2_000_000, usd="0.6388888889")
    url = _ledger(tmp_path, [*WORKED, old])
    policy = write_policy(FLEET_POLICY, "fleet.yaml")
    week = _json(url, policy, capsys, "--since", "7d")
    assert (week["window"], D(week["hours"])) == ("since", D(168))
    assert D(week["tiers"][0]["billed_usd"]) == 2 * D("2.30") * 168 + 300 * D(168) / 720
    assert week["tiers"][0]["served_tokens"] == 56_000_000
    everything = _json(url, policy, capsys, "--since", "all")
    assert (everything["window"], D(everything["hours"])) == ("first_to_last_request", D(239))
    assert everything["start"] == (NOW - timedelta(hours=240)).isoformat()
    assert everything["tiers"][0]["served_tokens"] == 58_000_000


def test_an_idle_fleet_is_billed_with_nothing_served(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A window without requests still bills the GPUs: the report says so rather than nothing."""
    url = _ledger(tmp_path, WORKED[-1:])  # eight hours ago
    policy = write_policy(FLEET_POLICY, "fleet.yaml")
    _report(url, policy, "--since", "2h")
    out = capsys.readouterr().out
    assert "no requests in the window" in out
    assert "= 10.0333 USD over 2.00 h" in out  # 2 x 2.30 x 2 + 300 x 2 / 720
    assert "utilization    0% (busy 0.0 s of 4.00 h of GPU time)" in out
    assert "effective      n/a USD per 1M tokens" in out


def test_a_self_hosted_tier_priced_per_token_shows_its_traffic_and_charge(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """With a $/M price the policy states no bill: the tier's served tokens and the ledger's
    charge are reported, the bill and utilization are null (JSON) and said unknown (text)."""
    policy = write_policy(
        FLEET_POLICY.replace(
            "price: {gpu_usd_per_hour: 2.30, tokens_per_second: 2000, prefill_tokens_per_second: "
            "20000,\n            ops_usd_per_month: 300}",
            "price: {input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.2}",
        ),
        "tokens.yaml",
    )
    url = _ledger(tmp_path, WORKED[:2])
    small, = _json(url, policy, capsys, "--since", "24h")["tiers"]  # fmt: skip
    assert small["priced_by"] == "token"
    assert small["gpus"] is None
    assert small["billed_usd"] is None
    assert small["utilization"] is None
    assert small["served_tokens"] == 14_000_000
    assert D(small["nominal_usd_per_mtok"]) == D("1.4375") / 14
    _report(url, policy, "--since", "24h")
    assert "bill           unknown: priced per token" in capsys.readouterr().out


def test_the_html_page_has_the_fleet_table(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The page shows each self-hosted tier's bill, utilization and effective against nominal."""
    url, policy = _ledger(tmp_path, WORKED), write_policy(FLEET_POLICY, "fleet.yaml")
    page = tmp_path / "report.html"
    _report(url, policy, "--since", "24h", "--html", str(page))
    text = page.read_text(encoding="utf-8")
    assert "<h2>Self-hosted fleet</h2>" in text
    assert "<td>small</td><td>2</td><td>$120.40</td><td>56,000,000</td><td>5.208%</td>" in text
    assert "<td>$2.150000</td>" in text
    assert "<td>20.94x</td>" in text
    assert "<td>27,187,097 vs big</td>" in text
