"""``cascade plan`` on a real SQLite ledger: the tables, the JSON, the chart and its errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from cascade.cli import main
from tests.test_plan_traffic import DAY_ONE, SMALL_OK, Call, entry, write_ledger

# The default policy's tiers, a 2 ms target for interactive traffic, and batch jobs that wait.
POLICY = """\
name: plan-demo
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: http://127.0.0.1:8001/v1
    price: {gpu_usd_per_hour: 2.30, tokens_per_second: 32000, batch: 64,
            single_stream_tokens_per_second: 3900, context_tokens: 3200}
    overflow: frontier
    threshold: 0.825
  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: http://127.0.0.1:8002/v1
    price: {gpu_usd_per_hour: 2.30, tokens_per_second: 14500, prefill_tokens_per_second: 65000,
            batch: 64, single_stream_tokens_per_second: 840, context_tokens: 3200}
    overflow: frontier
    threshold: 0.742
  - name: frontier
    model: openai/gpt-4o
    kind: api
    price: {input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25, output_usd_per_mtok: 10}
workloads:
  interactive: {max_tpot_ms: 2}
  batch: {tiers: [small, medium], spill: false}
"""


@pytest.fixture
def policy_file(write_policy: Callable[[str, str], Path]) -> str:
    """The plan-demo policy on disk."""
    return str(write_policy(POLICY, "plan-demo.yaml"))


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """A day of plan-demo traffic, busy by day and quiet by night: small, medium, frontier."""
    entries = []
    for hour in range(24):
        busy = 1 + 5 * math.sin(math.pi * hour / 24) ** 2
        for i in range(round(4 * busy)):
            at = DAY_ONE + timedelta(hours=hour, minutes=i)
            n = f"{hour}-{i}"
            entries.append(entry(f"s{n}", at, 0.9, [SMALL_OK], policy="plan-demo"))
            medium: Call = ("medium", "primary", "ok", 800, 200, 300)
            entries.append(entry(f"m{n}", at, 0.8, [medium], policy="plan-demo"))
            api: Call = ("frontier", "primary", "ok", 900, 0, 400)
            entries.append(entry(f"f{n}", at, 0.1, [api], policy="plan-demo"))
        entries.append(
            entry(
                f"b{hour}",
                DAY_ONE + timedelta(hours=hour),
                0.9,
                [SMALL_OK],
                workload="batch",
                policy="plan-demo",
            )
        )
    return write_ledger(tmp_path, entries)


def test_json_names_the_cheapest_fleet_and_the_models_error(
    ledger_url: str, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: the tiers' operating points, every candidate fleet, the cheapest with the cost
    range the model's error allows, break-even lines and the 1x/2x/10x scenarios."""
    args = ["plan", "--url", ledger_url, "--since", "all", "--policy", policy_file, "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"] == "plan-demo"
    assert data["model_error"]["measured_by"] == "benchmarks/bench_plan_model.py"
    assert 0 < data["model_error"]["capacity"] < 1
    tiers = {t["tier"]: t for t in data["tiers"]}
    assert set(tiers) == {"small", "medium"}
    assert tiers["medium"]["operating_batch"] < 64  # the 2 ms target binds on the 7B
    assert tiers["medium"]["tpot_ms"] <= 2
    assert [s["scale"] for s in data["scenarios"]] == [1, 2, 10]
    first = data["scenarios"][0]
    cheapest = first["cheapest"]
    low, high = cheapest["total_usd_range"]
    assert low <= cheapest["total_usd"] <= high
    # A few requests an hour are cheaper at the API, but the batch jobs may not go there.
    assert cheapest["replicas"]["small"] >= 1
    assert cheapest["total_usd"] == min(f["total_usd"] for f in first["fleets"] if f["meets"])
    assert first["all_api"]["replicas"] == {"small": 0, "medium": 0}
    assert not first["all_api"]["meets"]  # the batch jobs may not go to the API
    assert {line["tier"] for line in data["break_even"]} == {"small", "medium"}
    assert len(data["visits_per_hour"]) == 24


def test_text_prints_the_fleets_and_the_verdicts(
    ledger_url: str, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text report: the tier table, candidate fleets with the cheapest marked, a verdict
    per traffic scale and the break-even table."""
    args = ["plan", "--url", ledger_url, "--since", "all", "--policy", policy_file]
    assert main([*args, "--max-replicas", "3", "--scales", "1,4"]) == 0
    out = capsys.readouterr().out
    assert "plan for policy 'plan-demo' from " in out
    assert "model error: capacity ±" in out
    assert "<- cheapest" in out
    assert "at 1x traffic: cheapest keeping the targets: small " in out
    assert "at 4x traffic: " in out
    assert "against all-API $" in out
    assert "break-even against the API" in out
    assert "set: small max_concurrency" in out


def test_plot_writes_a_png(
    ledger_url: str, policy_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plot FILE.png draws cost against replicas beside the printed report."""
    chart = tmp_path / "plan.png"
    args = ["plan", "--url", ledger_url, "--since", "all", "--policy", policy_file]
    assert main([*args, "--plot", str(chart)]) == 0
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert f"wrote {chart}" in capsys.readouterr().err


def test_an_empty_ledger_is_a_clear_error(
    tmp_path: Path, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger with no request of the policy exits 2 and says so."""
    url = write_ledger(tmp_path, [])
    assert main(["plan", "--url", url, "--since", "all", "--policy", policy_file]) == 2
    err = capsys.readouterr().err
    assert "no request of policy 'plan-demo' in the ledger's window (policies there: none)" in err


def test_an_unknown_policy_is_a_clear_error(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--policy naming neither a file nor a shipped policy exits 2 and names what is shipped."""
    assert main(["plan", "--url", ledger_url, "--policy", "nosuch"]) == 2
    assert "policy 'nosuch' not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--day", "soon"), "--day 'soon': expected a positive number and s/m/h/d"),
        (("--scales", "1,x"), "--scales '1,x': expected positive numbers"),
        (("--max-replicas", "0"), "--max-replicas 0: plan at least one replica"),
    ],
)
def test_bad_options_are_clear_errors(
    ledger_url: str,
    policy_file: str,
    option: tuple[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each malformed option is refused with what is allowed."""
    args = ["plan", "--url", ledger_url, "--since", "all", "--policy", policy_file]
    assert main([*args, *option]) == 2
    assert message in capsys.readouterr().err


def test_one_policy_planned_for_the_traffic_another_routed(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--traffic-of plans the shipped default policy (no latency target: full batches) for the
    requests recorded under plan-demo, whose tiers have the same names."""
    args = ["plan", "--url", ledger_url, "--since", "all", "--traffic-of", "plan-demo", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"] == "default"
    assert data["requests"] > 0
    assert {t["tier"]: t["operating_batch"] for t in data["tiers"]} == {"small": 64, "medium": 64}
