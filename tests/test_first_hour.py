"""Rough edges a new user meets in the first hour: each misuse gets one clear line, never a
traceback, and the package says what it is."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import cascade
from cascade.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade --version`` names the package's version."""
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cascade {cascade.__version__}"


def test_a_command_group_alone_asks_for_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade policy`` says which commands it takes, not the top-level help."""
    with pytest.raises(SystemExit) as done:
        main(["policy"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "cascade policy" in err
    assert "required: COMMAND" in err


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """``cascade policy schema | head -1``: the reader leaving is no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cascade", "policy", "schema"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err
    assert "BrokenPipe" not in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["route", ""], "the prompt is empty"),
        (["route", "--max-tokens", "-1", "hi"], "max_tokens must be a whole number"),
    ],
)
def test_route_refuses_what_it_cannot_mean(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty prompt or a negative token count is one clear error (exit 2), no decision."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err
    assert captured.out == ""


def test_route_with_a_messages_file_and_a_prompt_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An extra prompt beside --messages is not silently dropped."""
    messages = tmp_path / "m.json"
    messages.write_text('[{"role": "user", "content": "hi"}]')
    assert main(["route", "--messages", str(messages), "extra"]) == 2
    assert "not both" in capsys.readouterr().err


def test_the_planner_takes_a_policy_name_like_route_does() -> None:
    """``cascade.Planner("default")`` loads the shipped policy (it raised AttributeError)."""
    planner = cascade.Planner("default")
    assert planner.policy.name == "default"
    assert planner.plan("What is 2+2?").tier in {t.name for t in planner.policy.tiers}


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"max_tokens": "a"}, cascade.RoutingError, "max_tokens must be a whole number"),
        ({"max_tokens": 0}, cascade.RoutingError, "max_tokens must be a whole number"),
        ({"policy": 42}, cascade.RoutingError, "policy must be a cascade.Policy"),
    ],
)
def test_misusing_the_public_api_raises_a_cascade_error_that_says_what_is_expected(
    kwargs: dict[str, object], error: type[Exception], fragment: str
) -> None:
    """Wrong argument types reach no arithmetic or pathlib call: a CascadeError explains."""
    with pytest.raises(error, match=fragment):
        cascade.route("hi", **kwargs)  # type: ignore[arg-type]


def test_the_package_carries_its_license() -> None:
    """The Apache-2.0 license the package declares is in the repository."""
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0" in text


def test_serve_with_a_bad_policy_prints_located_errors_and_exits_1(tmp_path: Path) -> None:
    """``cascade serve`` with an invalid or missing policy says what ``policy check`` says, in
    a few lines and exit status 1, instead of a server lifespan traceback."""
    bad = tmp_path / "team-a.yaml"
    bad.write_text("name: x\ntiers:\n  - name: a\n    modle: m\n")
    for policy, fragment in (
        (bad, "team-a.yaml:4: tiers[0].modle: unknown key; did you mean model?"),
        (tmp_path / "missing.yaml", "not found"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "cascade", "serve", "--policy", str(policy), "--no-ledger"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert fragment in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.splitlines()) <= 5


def _without(module: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as if the optional ``module`` were not installed."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from cascade.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_serving_an_api_tier_without_litellm_names_the_extra(tmp_path: Path) -> None:
    """The production install without the api extra: ``cascade serve`` on the default policy
    (which has an API tier) says which extra to install, in one line, before starting."""
    done = _without("litellm", ["serve", "--no-ledger"], tmp_path)
    assert done.returncode == 1
    assert "pip install 'cascade-router[api]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    """``cascade eval --plot`` without matplotlib is one line naming the train extra."""
    data = tmp_path / "rows.jsonl"
    rows = [
        {
            "id": str(i),
            "task": "t",
            "prompt": f"question {i}?",
            "weak_score": i % 2,
            "strong_score": 1,
            "weak_cost_usd": 0.001,
            "strong_cost_usd": 0.01,
        }
        for i in range(40)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    done = _without("matplotlib", ["eval", "--data", str(data), "--plot", "c.png"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "pip install 'cascade-router[train]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_report_on_a_missing_ledger_points_at_db_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cascade report`` on a SQLite file that does not exist creates nothing and says how to
    make a ledger, instead of creating an empty file and failing on 'no such table'."""
    missing = tmp_path / "nothing.db"
    assert main(["report", "--url", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert "there is no ledger at" in err
    assert "cascade db upgrade --url" in err
    assert not missing.exists()


def test_a_report_on_a_database_without_tables_points_at_db_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing database that holds no ledger gets the same pointer."""
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert main(["report", "--url", f"sqlite:///{empty}"]) == 2
    err = capsys.readouterr().err
    assert "holds no ledger tables" in err
    assert "cascade db upgrade" in err


@pytest.mark.parametrize("command", ["train", "eval", "score", "calibrate", "demo", "export"])
def test_every_command_describes_itself_and_its_options(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--help`` of each command has a description and a help line for every option."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    _usage, _, rest = out.partition("\n\n")
    description, _, options = rest.partition("options:")
    assert description.strip(), f"{command} has no description"
    for line in options.splitlines()[2:]:  # after -h
        if line.startswith("  -") and "  " not in line.strip():
            # an option alone on its line: its help must follow on the next line
            following = options.splitlines()[options.splitlines().index(line) + 1]
            assert following.startswith(" " * 8), f"{command}: {line.strip()} has no help"
    assert "about a minute" not in out


def test_score_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cascade score --input -`` reads the JSONL from stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "What is 2+2?"}\n'))
    assert main(["score", "--input", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["confidence"] > 0


def _rows(tmp_path: Path) -> Path:
    data = tmp_path / "rows.jsonl"
    rows = [
        {
            "id": str(i),
            "task": "t",
            "prompt": f"What is {i} plus {i}?",
            "weak_score": i % 2,
            "strong_score": 1,
            "weak_cost_usd": 0.001,
            "strong_cost_usd": 0.01,
        }
        for i in range(40)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return data


def test_calibrate_never_writes_a_threshold_that_breaks_the_tier_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A threshold above the cheaper tier's is refused with what to calibrate first; the
    policy file is untouched."""
    policy = tmp_path / "p.yaml"
    policy.write_text((ROOT / "policies" / "default.yaml").read_text())
    before = policy.read_text()
    argv = ["calibrate", "--data", str(_rows(tmp_path)), "--max-strong-share", "0.3"]
    assert main([*argv, "--policy", str(policy), "--tier", "medium", "--write"]) == 2
    err = capsys.readouterr().err
    assert "would be above small's" in err
    assert "Calibrate small first" in err
    assert policy.read_text() == before


def test_calibrate_reports_probes_and_keeps_the_policy_when_one_would_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After calibrating, the policy's probes run; one that would route elsewhere is named and
    nothing is written (exit 1)."""
    policy = tmp_path / "p.yaml"
    policy.write_text((ROOT / "policies" / "default.yaml").read_text())
    before = policy.read_text()
    # the default policy's scorer: the sums score above its arithmetic probe
    argv = ["calibrate", "--data", str(_rows(tmp_path)), "--max-strong-share", "0.3"]
    argv += ["--model", "prompt-features-v2"]
    assert main([*argv, "--policy", str(policy), "--tier", "small", "--write"]) == 1
    captured = capsys.readouterr()
    assert "probe FAIL 'arithmetic fact' expected small, got medium" in captured.out
    assert "update those probes" in captured.err
    assert policy.read_text() == before
