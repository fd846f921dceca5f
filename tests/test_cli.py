"""The ``cascade`` command line: decisions printed, errors as one clear message, exit codes."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.resources import model_dir
from tests.conftest import TWO_TIERS

WritePolicy = Callable[..., Path]


def test_route_prints_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade route PROMPT`` prints tier, confidence, reason, cost and prefix, and exits 0."""
    assert main(["route", "What is 7 times 8?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tier        small  (distill-1.5b, self_hosted)\n")
    for label in ("confidence", "reason", "est. cost", "prefix", "volatile", "policy"):
        assert f"\n{label}" in out


def test_route_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` prints the decision as JSON with the money as an exact string."""
    assert main(["route", "--json", "--max-tokens", "100", "Write a python function."]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["tier"] in {"small", "medium", "frontier"}
    assert 0.0 <= decision["confidence"] <= 1.0
    assert decision["expected_output_tokens"] == 100
    assert isinstance(decision["estimated_cost_usd"], str)


def test_route_reports_moved_volatile_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A timestamp in the system prompt is reported as moved, and the prefix hash ignores it."""
    hashes = []
    for stamp in ("2026-11-22T10:15:00Z", "2026-11-23T08:00:00Z"):
        system = f"You are helpful. Current time: {stamp}"
        assert main(["route", "--json", "--system", system, "Hi!"]) == 0
        decision = json.loads(capsys.readouterr().out)
        assert decision["moved"][0]["kind"] == "timestamp"
        assert stamp in decision["moved"][0]["text"]
        hashes.append(decision["prefix_hash"])
    assert hashes[0] == hashes[1]


def test_route_reads_the_prompt_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no prompt argument, the prompt is read from standard input."""
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 7 times 8?\n"))
    assert main(["route", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tier"] == "small"


def test_route_with_messages_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--messages FILE`` routes a whole OpenAI-style conversation."""
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 7 times 8?"}]}))
    assert main(["route", "--messages", str(path)]) == 0
    assert capsys.readouterr().out.startswith("tier        small")


def test_unknown_policy_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A policy that does not exist gives exit 2 and a message naming what exists."""
    assert main(["route", "--policy", "nope", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cascade: error: policy 'nope' not found")
    assert "default" in err
    assert "Traceback" not in err


def test_corrupted_model_is_a_clear_error(
    tmp_path: Path, write_policy: WritePolicy, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model file that does not match its manifest's sha256 is refused with what to do."""
    broken = tmp_path / "broken-model"
    shutil.copytree(model_dir("tfidf-lr-v1"), broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    policy = write_policy(TWO_TIERS + f"scorer: {{model: {broken}}}\n")
    assert main(["route", "--policy", str(policy), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cascade: error: ")
    assert "sha256" in err
    assert str(broken / "model.onnx") in err
    assert "Traceback" not in err


def test_empty_messages_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A conversation without a user message is refused, naming the problem."""
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"role": "system", "content": "Be brief."}]))
    assert main(["route", "--messages", str(path)]) == 2
    assert "user" in capsys.readouterr().err


def test_policy_check_passes_the_default_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped default policy validates and all its probes route as they expect."""
    assert main(["policy", "check", "policies/default.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok   policies/default.yaml: policy 'default', 3 tiers,")
    assert "FAIL" not in out


def test_policy_check_lists_problems_with_lines(
    write_policy: WritePolicy, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid policy fails with exit 1 and every problem on its own line."""
    text = TWO_TIERS.replace("max_concurrency: 2", "max_concurency: 2") + (
        "probes:\n  - prompt: hi\n    expect: medium\n"
    )
    path = write_policy(text, "team-a.yaml")
    assert main(["policy", "check", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"FAIL {path}: 1 problem(s)"
    assert lines[1] == (
        f"  {path}:8: tiers[0].max_concurency: unknown key; did you mean max_concurrency?"
    )


def test_policy_check_reports_an_unknown_probe_tier(
    write_policy: WritePolicy, capsys: pytest.CaptureFixture[str]
) -> None:
    """A probe naming a tier the policy lacks is an error that lists the tiers."""
    path = write_policy(TWO_TIERS + "probes:\n  - prompt: hi\n    expect: medium\n")
    assert main(["policy", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:17: probes[0].expect: unknown tier 'medium'; allowed: small, big" in out


def test_policy_check_fails_a_probe_that_routes_elsewhere(
    write_policy: WritePolicy, capsys: pytest.CaptureFixture[str]
) -> None:
    """A probe that routes to another tier fails the check and shows the reason."""
    probes = (
        "probes:\n"
        "  - {name: easy, prompt: 'What is 7 times 8?', expect: small}\n"
        "  - {name: wrong, prompt: 'What is 7 times 8?', expect: big}\n"
    )
    path = write_policy(TWO_TIERS + probes)
    assert main(["policy", "check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"FAIL {path}: policy 'team-a', 2 tiers, 1/2 probes pass")
    assert out[1].startswith("  ok   'easy' -> small")
    assert out[2].startswith("  FAIL 'wrong' expected big, got small")
    assert "clears small's threshold 0.700" in out[3]


def test_policy_schema_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade policy schema`` prints the JSON Schema editors validate against."""
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Policy"
    assert "tiers" in schema["required"]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade`` alone prints the commands and exits 2."""
    assert main([]) == 2
    assert "route" in capsys.readouterr().out


def test_serve_refuses_batch_options_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    """Every bad --batch-* option is named with what it allows, before anything starts."""
    argv = ["serve", "--batch-headroom", "1.5", "--batch-max-attempts", "0", "--no-ledger"]
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert "--batch-headroom 1.5: from 0 to 1" in said
    assert "--batch-max-attempts 0: 1 or more" in said
