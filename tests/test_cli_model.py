"""``cascade train|eval|score|calibrate`` on small files: output users read and files they get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.model.features import prompt_features
from cascade.model.manifest import load_manifest
from cascade.policy import parse_policy
from cascade.resources import policy_path
from tests.test_training import _synthetic_rows, _write_jsonl


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 synthetic labeled rows."""
    return _write_jsonl(tmp_path_factory.mktemp("data") / "rows.jsonl", _synthetic_rows(120, 4))


def test_train_writes_a_model_and_prints_its_metrics(
    labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cascade train`` writes a loadable folder, prints metrics and records its own command."""
    out = tmp_path / "m"
    argv = ["train", "--data", str(labeled), "--out", str(out), "--holdout-tasks", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = load_manifest(out)
    assert printed["sha256"] == manifest.sha256
    assert manifest.name == "m"
    assert manifest.created_by.startswith("cascade train --data ")


def test_eval_prints_model_random_and_oracle(
    labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cascade eval --json`` gives AUROC, APGR and CPTs for the model, random and oracle."""
    plot = tmp_path / "curve.png"
    assert main(["eval", "--data", str(labeled), "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 120
    assert result["random"]["apgr"] == 0.5
    assert result["oracle"]["auroc"] == 1.0
    assert result["oracle"]["apgr"] >= result["model"]["apgr"]
    assert set(result["model"]["cpt"]) == {"50%", "80%", "95%"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "--data", str(labeled)]) == 0
    table = capsys.readouterr().out
    assert "oracle" in table
    assert "APGR" in table


def test_score_prints_one_confidence_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts and chat messages each get one confidence line, in order; messages use the last
    user message."""
    question = "What is 12 * 7?"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    rows = [
        {"prompt": question},
        {"messages": chat},
        {"prompt": "Prove that there are infinitely many primes."},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", "utf-8")
    assert main(["score", "--input", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert lines[0] == lines[1]
    assert all(0.0 <= line["confidence"] <= 1.0 for line in lines)


def test_score_names_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line without a prompt fails with exit 2 and ``file:line``."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "hi"}\n{"text": "no prompt"}\n', "utf-8")
    assert main(["score", "--input", str(path)]) == 2
    assert f"{path}:2: expected an object with a string 'prompt'" in capsys.readouterr().err


def test_calibrate_writes_the_threshold_into_the_policy(
    labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--write`` sets the tier's threshold to the printed value with a provenance comment."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_path("default").read_text("utf-8"), "utf-8")
    # (v1 scores these synthetic rows in the range the default thresholds sit in)
    args = ["calibrate", "--data", str(labeled), "--max-strong-share", "0.3"]
    args += ["--model", "prompt-features-v1"]
    assert main([*args, "--policy", str(policy), "--tier", "frontier", "--write"]) == 2
    assert "cascade: error:" in capsys.readouterr().err  # frontier must stay below medium
    assert main([*args, "--policy", str(policy), "--tier", "small", "--write"]) == 0
    out = capsys.readouterr().out
    threshold = float(out.split()[1].rstrip(":"))
    assert parse_policy(policy.read_text("utf-8")).tier("small").threshold == threshold
    assert "# calibrated:" in policy.read_text("utf-8")
    assert "rows.jsonl" in policy.read_text("utf-8")


def test_calibrate_for_a_policy_uses_the_policys_own_scorer(
    labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A threshold is only meaningful for the model it is compared with: without --model,
    calibrating for a policy scores with that policy's scorer, not the CLI's default."""
    policy = tmp_path / "policy.yaml"
    text = policy_path("default").read_text("utf-8")
    policy.write_text(text.replace("model: prompt-features-v2", "model: prompt-features-v1"))
    args = ["calibrate", "--data", str(labeled), "--max-strong-share", "0.3"]
    assert main([*args, "--policy", str(policy), "--tier", "small"]) == 0
    assert "model prompt-features-v1" in capsys.readouterr().out


def test_train_on_your_own_data_says_what_it_chose(
    labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's "adapt to your traffic" command works on data without the shipped tasks:
    no holdout (said why), and the base model adapted or kept, in words."""
    out = tmp_path / "ours"
    argv = ["train", "--data", str(labeled), "--base", "prompt-features-v1", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "holdout: none" in captured.err
    assert "the default holdout" in captured.err
    assert f"wrote {out}/model.onnx" in captured.out
    assert "prompt-features-v1" in captured.out
    assert ("kept prompt-features-v1 unchanged" in captured.out) != (
        "adapted prompt-features-v1" in captured.out
    )
    assert "cross-validation" in captured.out
    load_manifest(out)


def _as_ledger_rows(labeled: Path, version: str) -> list[dict[str, object]]:
    """The labeled rows as ``cascade export`` writes them: the scorer's numbers, no prompt."""
    rows = [json.loads(line) for line in labeled.read_text("utf-8").split("\n") if line]
    for row in rows:
        row["features"] = list(prompt_features(row.pop("prompt")))
        row["feature_version"] = version
    return rows


def test_calibrate_reads_the_ledgers_feature_rows(
    labeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows exported from the ledger carry numbers, not prompts: calibrating on them gives the
    threshold calibrating on the prompts gives; rows of another feature version are refused."""
    args = ["calibrate", "--max-strong-share", "0.3", "--model", "prompt-features-v2"]
    assert main([*args, "--data", str(labeled)]) == 0
    from_prompts = capsys.readouterr().out.split()[1]
    exported = _write_jsonl(
        tmp_path / "export.jsonl", _as_ledger_rows(labeled, "prompt-features-v2")
    )
    assert main([*args, "--data", str(exported)]) == 0
    assert capsys.readouterr().out.split()[1] == from_prompts
    older = _write_jsonl(tmp_path / "v0.jsonl", _as_ledger_rows(labeled, "prompt-features-v0"))
    assert main([*args, "--data", str(older)]) == 2
    err = capsys.readouterr().err
    assert "its features are of version 'prompt-features-v0'" in err
    assert "reads 'prompt-features-v2'" in err
