"""``cascade report`` and ``cascade export`` against a real SQLite ledger.

The commands take only a URL, and a Postgres test schema is reachable only through connection
arguments, so the CLI runs on SQLite here; ``test_ledger_report`` covers both databases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from cascade.cli import report as report_cli
from cascade.errors import LedgerError
from cascade.ledger import Ledger
from tests.conftest import TWO_TIERS
from tests.ledger_databases import LedgerDatabase, migrate, open_database
from tests.test_ledger_report import report_entries


@pytest.fixture
def ledger_url(tmp_path: Path) -> Iterator[str]:
    """An SQLite ledger holding the report tests' six requests."""
    with open_database("sqlite", tmp_path) as db:
        migrate(db)
        asyncio.run(_insert(db))
        yield db.url


@pytest.fixture
def policy_file(write_policy: Callable[[str, str], Path]) -> str:
    """A two-tier policy whose last tier, big, costs $2.5 / $1.25 cached / $10 per M tokens."""
    return str(write_policy(TWO_TIERS, "policy.yaml"))


async def _insert(db: LedgerDatabase) -> None:
    ledger = Ledger(db.engine())
    try:
        await ledger.insert(report_entries())
    finally:
        await ledger.aclose()


def _run(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="cascade")
    report_cli.register(parser.add_subparsers())
    ns = parser.parse_args(list(args))
    status: int = ns.command(ns)
    return status


def test_report_prints_exact_numbers(
    ledger_url: str, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows exact cost, cost per useful token, rates and savings per tier and total."""
    assert _run("report", "--url", ledger_url, "--policy", policy_file) == 0
    out = capsys.readouterr().out
    assert "counterfactual tier: big" in out
    assert "== tier big ==" in out
    assert "== total ==" in out
    assert "0.0054400000 USD" in out  # total cost
    assert "1.360000E-5 USD (13.6000000000 USD per 1M)" in out
    assert "escalation rate       20.00%" in out
    assert "0.0063600000 USD (53.90%) vs 0.0118000000 USD" in out
    assert "small 40.00%" in out


def test_report_json_parses(
    ledger_url: str, policy_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one JSON document with exact decimal strings."""
    args = ("report", "--url", ledger_url, "--policy", policy_file, "--json", "--by", "tenant")
    assert _run(*args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by"] == "tenant"
    assert Decimal(data["total"]["cost_usd"]) == Decimal("0.00544")
    assert Decimal(data["total"]["savings_usd"]) == Decimal("0.00636")
    assert [g["key"] for g in data["groups"]] == ["(none)", "team-a", "team-b"]


def test_report_default_policy_prices_the_frontier(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --policy the shipped default policy's last tier prices the counterfactual."""
    assert _run("report", "--url", ledger_url, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["frontier_tier"] == "frontier"
    assert data["frontier_priced"] is True


def test_report_html_is_self_contained(
    ledger_url: str, policy_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--html writes one page with inline charts, the numbers, and no external resources."""
    page = tmp_path / "report.html"
    assert _run("report", "--url", ledger_url, "--policy", policy_file, "--html", str(page)) == 0
    capsys.readouterr()
    text = page.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    # rounded for people (the exact figures are in --json)
    assert "$0.0054" in text
    assert "$13.60" in text
    assert "54%" in text
    assert 'id="headline"' in text


def test_report_refuses_a_bad_window(ledger_url: str) -> None:
    """An unreadable --since is an error that says what is allowed."""
    with pytest.raises(LedgerError, match="7d, 24h, 30m"):
        _run("report", "--url", ledger_url, "--since", "lastweek")


def test_export_writes_labels_and_warns_without_prompts(
    ledger_url: str, policy_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Export writes one labeled row per informative request and warns about missing prompts."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"request_id": "r1", "prompt": "What is 7 times 8?"}) + "\n")
    out = tmp_path / "traffic.jsonl"
    args = ("export", "--url", ledger_url, "--policy", policy_file, "--out", str(out))
    assert _run(*args, "--prompts", str(prompts)) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    labels = {row["id"]: (row["weak_score"], row["strong_score"]) for row in rows}
    assert labels == {"r1": (1, 1), "r2": (0, 1), "r4": (0, 1), "r5": (1, 1)}
    prompts_by_id = {row["id"]: row["prompt"] for row in rows}
    assert prompts_by_id == {"r1": "What is 7 times 8?", "r2": None, "r4": None, "r5": None}
    assert "wrote 4 labeled rows of 6 requests" in captured.out
    assert "3 of 4 rows have neither a prompt" in captured.err
