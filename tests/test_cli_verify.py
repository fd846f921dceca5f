"""``cascade verify``: confidences for answers in a JSONL file, and training and evaluating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.model.manifest import load_manifest
from tests.test_verifier import FIT, FIXTURE, HOLDOUT, SELECTION

MC_PROMPT = "Which organ makes insulin?\nA) Liver\nB) Pancreas\nC) Kidney\nD) Spleen"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_verify_prints_one_confidence_per_line_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Strings, answer objects with logprobs and chat messages each get one line, in order;
    a blank line is skipped."""
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": MC_PROMPT}]
    rows = [
        {"prompt": MC_PROMPT, "answers": ["The answer is (B).", "B", "The answer is (B)."]},
        {"messages": chat, "answers": ["The answer is (B).", "B", "The answer is (B)."]},
        {"prompt": MC_PROMPT, "answers": ["The answer is (B).", "(A)", "The answer is (C)."]},
        {
            "prompt": "What is 12 * 7?",
            "answers": [{"content": "84", "logprobs": [-0.01, -0.2]}, {"content": "84"}, "84"],
        },
        {"prompt": "What is 12 * 7?", "answers": ["84"]},
    ]
    path = _write(tmp_path / "in.jsonl", [json.dumps(rows[0]), "", *map(json.dumps, rows[1:])])
    assert main(["verify", "--input", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(rows)
    assert all(set(line) == {"confidence"} and 0 <= line["confidence"] <= 1 for line in lines)
    assert lines[0] == lines[1]
    assert lines[2]["confidence"] < lines[0]["confidence"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "a JSON list, not an object"),
        ('{"answers": ["x"]}', "no string 'prompt' and no list 'messages'"),
        ('{"prompt": "q", "answers": []}', "'answers' must be a non-empty list"),
        ('{"prompt": "q", "answers": [3]}', "answers[0]: expected a string or an object, got int"),
        ('{"prompt": "q", "answers": [{"text": "x"}]}', "answers[0]: unknown key 'text'"),
        (
            '{"prompt": "q", "answers": ["x", {"content": "y", "logprobs": "low"}]}',
            "answers[1].logprobs: must be a list of numbers",
        ),
        ('{"messages": [], "answers": ["x"]}', "messages: "),
    ],
)
def test_a_bad_line_exits_2_naming_the_line_and_the_allowed_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, problem: str
) -> None:
    """A bad line stops with exit 2, ``file:line``, the problem and the allowed shape, and
    nothing on stdout."""
    good = json.dumps({"prompt": "q", "answers": ["a", "a"]})
    path = _write(tmp_path / "in.jsonl", [good, line])
    assert main(["verify", "--input", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"in.jsonl:2: {problem}" in captured.err
    assert '"answers": [candidate, witness, ...]' in captured.err
    assert "Traceback" not in captured.err


def test_verify_without_input_or_action_says_what_to_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``cascade verify`` alone exits 2 and names --input and the actions."""
    assert main(["verify"]) == 2
    assert "give --input FILE, or an action (train, eval)" in capsys.readouterr().err


def test_train_then_eval_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``verify train`` writes a loadable verifier that records its command; ``verify eval``
    prints the verifier beside majority, prompt-only, random and oracle, per task."""
    out = tmp_path / "v"
    splits = ["--fit-tasks", *FIT, "--selection-tasks", *SELECTION, "--holdout-tasks", *HOLDOUT]
    assert main(["verify", "train", "--data", str(FIXTURE), "--out", str(out), *splits]) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = load_manifest(out)
    assert printed["sha256"] == manifest.sha256
    assert len(printed["selection_cost_apgr"]) == 16
    assert manifest.created_by.startswith("cascade verify train --data ")
    assert main(["verify", "eval", "--data", str(FIXTURE), "--model", str(out), "--json",
                 "--split", "holdout"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    groups = result["groups"]
    assert set(groups) == {"all", "cruxeval_o", "math_l5"}
    assert set(groups["all"]) == {
        "verifier",
        "route+verify",
        "majority",
        "prompt-only",
        "random",
        "oracle",
    }
    assert groups["all"]["verifier"]["rows"] == 16
    assert groups["all"]["random"]["apgr"] == 0.5
    assert main(["verify", "eval", "--data", str(FIXTURE), "--model", str(out)]) == 0
    table = capsys.readouterr().out
    assert "majority" in table
    assert "APGR$" in table
