"""``cascade replay`` through the command line, on an SQLite ledger written by the real store:
the table, --json, exit 1 when the data cannot support an estimate, and clear errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.ledger.migrate import upgrade_database
from tests.test_replay import ALL_SMALL, TEXT_MODEL, patterned_entries, write_ledger


def _cli(*args: str) -> int:
    return main(["replay", *args])


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> str:
    """The patterned requests in an SQLite ledger."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade_database(url)
    return write_ledger(url, patterned_entries())


def _policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_cli_prints_the_table(
    sqlite_ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table: logged against the candidate's estimate with its interval, the exact tier
    mix, what was left out, support and the effective sample size; exit 0."""
    candidate = _policy(tmp_path, ALL_SMALL)
    assert _cli("--policy", candidate, "--url", sqlite_ledger, "--tenant", "acme") == 0
    out = capsys.readouterr().out
    assert "on requests routed by team-a, since " in out
    assert ": 100 of 103 replayed" in out
    assert "left out          1  features of another version (prompt-features-v1)" in out
    assert "tier mix (exact)     small 100.0%" in out
    assert "logged tier mix      small 60.0%  big 40.0%" in out
    assert "decisions changed    60.00% of requests" in out
    assert "mean cost per request     $0.0068" in out
    assert "$0.00257143 [$0.00" in out
    assert "escalation rate           20.00%                14.29% [" in out
    assert "good answers              80.00%                100.00% [100.00%, 100.00%]" in out
    assert "support              0 of 100 requests (0.00%)" in out
    assert "effective sample     36.3, of the 60 requests" in out
    assert "note: capacity is ignored" in out


def test_cli_json(sqlite_ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json: the same figures for machines, intervals as {value, low, high}."""
    candidate = _policy(tmp_path, ALL_SMALL)
    args = ("--policy", candidate, "--url", sqlite_ledger, "--since", "all", "--json")
    assert _cli(*args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["since"] is None
    assert data["requests"] == 106  # every tenant's, and the old request
    assert data["tiers"] == {"small": 102}
    assert data["estimate"]["supported"] is True
    escalation = data["estimate"]["candidate"]["escalation_rate"]["value"]
    assert escalation == pytest.approx(20 / 142)  # two more small requests, weight 1 each
    assert data["notes"][0].startswith("capacity is ignored")


def test_cli_unsupported_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A candidate the logged traffic cannot support: no number, the reason, exit status 1."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade_database(url)
    write_ledger(url, patterned_entries(explore=False))
    args = ("--policy", _policy(tmp_path, ALL_SMALL), "--url", url, "--tenant", "acme")
    assert _cli(*args) == 1
    out = capsys.readouterr().out
    assert "cannot estimate:\n  - 60 of 100 requests (60.0%, more than 5%)" in out
    assert "mean cost per request     $0.0068" in out
    assert "$0.00257143" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--policy", "nowhere.yaml"), "nowhere.yaml"),
        (("--policy", "{text}"), "reads text, and the ledger keeps no prompts"),
        (("--policy", "{small}", "--logged", "nobody"), "no requests routed by policy 'nobody'"),
        (("--policy", "{small}", "--since", "yesterday"), "--since 'yesterday': expected"),
        (
            ("--policy", "{small}", "--since", "2999-01-01T00:00:00"),
            "no requests routed by policy 'team-a' since 2999-01-01T00:00:00+00:00",
        ),
    ],
)
def test_cli_bad_input_says_what_and_exits_2(
    sqlite_ledger: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    """An unknown policy file, a text-model candidate, a window without requests or a bad
    --since: one line saying what is wrong, exit status 2."""
    paths = {"text": _policy(tmp_path, TEXT_MODEL), "small": str(tmp_path / "small.yaml")}
    Path(paths["small"]).write_text(ALL_SMALL, encoding="utf-8")
    filled = [a.format(**paths) for a in args]
    assert _cli(*filled, "--url", sqlite_ledger) == 2
    err = capsys.readouterr().err
    assert err.startswith("cascade: error: ")
    assert message in err


def test_cli_names_the_policies_and_versions_it_found(
    sqlite_ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No requests under the candidate's name: the names the ledger holds; none of a feature
    version: the versions it holds."""
    renamed = _policy(tmp_path, ALL_SMALL.replace("name: team-a", "name: team-b"))
    assert _cli("--policy", renamed, "--url", sqlite_ledger, "--since", "all") == 2
    assert "it holds requests of: other (1), team-a (106)" in capsys.readouterr().err
    candidate = _policy(tmp_path, ALL_SMALL)
    assert _cli("--policy", candidate, "--url", sqlite_ledger, "--tenant", "initech") == 2
    err = capsys.readouterr().err
    assert "none of the 1 requests of policy 'team-a' since" in err
    assert "of tenant 'initech' can be replayed with the candidate's model" in err
    assert "which reads features 'prompt-features-v2'" in err
    assert "the requests' features are prompt-features-v1 (1)" in err
