"""Measuring and calibrating the verify step: ``cascade eval --kind verifier``, ``cascade
calibrate --kind verifier``, route+verify and the majority answer, on real answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade.cli import main
from cascade.errors import PolicyError
from cascade.model.verifier import OnnxVerifier
from cascade.policy import parse_policy
from cascade.resources import policy_path
from cascade.training.answers import AnswerRow, Witness, load_answers
from cascade.training.calibration import threshold_for, write_verify_threshold
from cascade.training.evaluation import Outcomes
from cascade.training.majority_answer import compare_answers, majority_index, majority_rows
from cascade.training.route_verify import choose_skip
from cascade.training.verifier_eval import Router, cost_curve
from cascade.training.verify_set import VerifySet, load_verify_set
from tests.test_verifier import FIXTURE, _train_tiny

ROUTERS = {"verifier", "route+verify", "majority", "prompt-only", "random", "oracle"}
VERIFY_BLOCK = "    threshold: 0.825\n    verify:\n      samples: 3\n      answer: majority\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A verifier trained by the real pipeline on the fixture (selection: mmlu_pro:economics;
    holdout: cruxeval_o, math_l5), whatever the shipped one's feature version."""
    folder = tmp_path_factory.mktemp("verifier") / "tiny"
    _train_tiny(folder)
    return str(folder)


def _traffic(path: Path, *, witness: Any = None) -> Path:
    """The fixture as labeled traffic with answers: candidate, then two witnesses with costs."""
    rows = [json.loads(line) for line in FIXTURE.read_text("utf-8").splitlines() if line]
    keep = ("id", "task", "prompt", "weak_score", "strong_score", "weak_cost_usd")
    lines = []
    for row in rows:
        others = [{"content": o["response"], "cost_usd": o["cost_usd"]} for o in row["other_cheap"]]
        answers = [row["weak_response"], *(others[:2] if witness is None else [witness])]
        traffic = {k: row[k] for k in keep} | {"strong_cost_usd": row["strong_cost_usd"]}
        lines.append(json.dumps(traffic | {"answers": answers}))
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_eval_kind_verifier_is_verify_eval(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade eval --kind verifier`` prints what ``cascade verify eval`` prints: every router
    overall and per task, route+verify's choice and the answer comparison."""
    args = ["--data", str(FIXTURE), "--model", model, "--split", "holdout", "--json"]
    ours = _run_json(capsys, ["eval", "--kind", "verifier", *args])
    assert ours == _run_json(capsys, ["verify", "eval", *args])
    assert set(ours["groups"]) == {"all", "cruxeval_o", "math_l5"}
    assert set(ours["groups"]["all"]) == ROUTERS
    assert ours["groups"]["all"]["random"]["apgr"] == 0.5
    route = ours["route"]
    assert route["chosen_on"] == ["mmlu_pro:economics"]  # the manifest's selection tasks here
    assert not route["chosen_on_reported_rows"]
    assert route["chosen"] in {o["option"] for o in route["options"]}
    assert set(ours["answers"]) == {"all", "cruxeval_o", "math_l5"}
    assert set(ours["answers"]["all"]["cascade"]) == {"first", "majority"}


def test_eval_table_has_the_per_task_summary_and_the_route_choice(
    model: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The table gives APGR / APGR$ per task for every router, says where route+verify's skip
    threshold was chosen, and names the caveat of the majority answer."""
    argv = ["eval", "--kind", "verifier", "--model", model, "--data", str(FIXTURE)]
    assert main([*argv, "--split", "holdout"]) == 0
    table = capsys.readouterr().out
    summary = table[table.index("per task, APGR / APGR$:") :].splitlines()
    assert all(name in summary[1] for name in ROUTERS)
    assert [line.split()[0] for line in summary[2:5]] == ["all", "cruxeval_o", "math_l5"]
    assert "chosen on mmlu_pro:economics by APGR$" in table
    assert "other models, not samples of the candidate's model" in table
    assert main(argv) == 0
    assert "chosen on these rows: not a result" in capsys.readouterr().out


def test_traffic_with_answers_measures_like_the_answers_file(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labeled traffic whose rows carry the same answers and costs gives the same numbers; it
    has no witness scores, so no answer comparison."""
    traffic = _traffic(tmp_path / "traffic.jsonl")
    args = ["eval", "--kind", "verifier", "--model", model, "--json"]
    args += ["--tasks", "math_l5", "cruxeval_o"]
    from_traffic = _run_json(capsys, [*args, "--data", str(traffic)])
    from_answers = _run_json(capsys, [*args, "--data", str(FIXTURE)])
    assert from_traffic["groups"] == from_answers["groups"]
    assert from_traffic["route"] == from_answers["route"]
    assert from_traffic["answers"] is None
    elsewhere = _run_json(capsys, [*args, "--data", str(traffic), "--choose-on", "gsm8k:none"])
    assert elsewhere["route"] is None
    assert "route+verify" not in elsewhere["groups"]["all"]
    assert elsewhere["route_note"].startswith("route+verify: not measured: no rows of the")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"id": "1", "task": "t", "prompt": "q", "weak_score": 1}', "no 'answers' field"),
        ("{broken", "not valid JSON"),
        ("", "no rows"),
    ],
)
def test_eval_names_a_file_that_is_not_answers(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    """A file of neither format exits 2 naming the file, the problem and what to give."""
    path = tmp_path / "rows.jsonl"
    path.write_text(content + "\n", "utf-8")
    assert main(["eval", "--kind", "verifier", "--model", model, "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}" in err
    assert problem in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("witness", "problem"),
    [
        ("a bare string", "answers[1]: a witness needs its cost"),
        ({"content": "x", "cost_usd": -1}, "answers[1].cost_usd: expected a number >= 0"),
        ({"content": "x", "cost_usd": 0, "model": "m"}, "answers[1]: unknown key 'model'"),
        ({"content": "x", "cost_usd": 0, "logprobs": "low"}, "answers[1].logprobs: must be"),
    ],
)
def test_a_bad_witness_in_traffic_is_named(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], witness: Any, problem: str
) -> None:
    """A witness without its cost (the curve pays for it) or with a bad field: exit 2, file:line."""
    traffic = _traffic(tmp_path / "t.jsonl", witness=witness)
    assert main(["calibrate", "--kind", "verifier", "--model", model, "--data", str(traffic),
                 "--max-strong-share", "0.5"]) == 2  # fmt: skip
    assert f"{traffic}:1: {problem}" in capsys.readouterr().err


def test_missing_file_and_options_of_the_other_kind_are_errors(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, verifier options on a scorer and a scorer's plot on a verifier: exit 2."""
    missing = tmp_path / "nope.jsonl"
    assert main(["eval", "--kind", "verifier", "--model", model, "--data", str(missing)]) == 2
    assert f"{missing}: cannot read answers or labeled traffic" in capsys.readouterr().err
    assert main(["eval", "--data", str(FIXTURE), "--witnesses", "2"]) == 2
    assert "--witnesses is for --kind verifier" in capsys.readouterr().err
    verifier = ["eval", "--kind", "verifier", "--model", model, "--data", str(FIXTURE)]
    assert main([*verifier, "--plot", "p.png"]) == 2
    assert "--plot draws a scorer's curves" in capsys.readouterr().err
    argv = ["calibrate", "--data", str(FIXTURE), "--witnesses", "2", "--min-pgr", "0.5"]
    assert main(argv) == 2
    assert "--witnesses is for --kind verifier" in capsys.readouterr().err


def test_calibrate_verifier_meets_the_target_and_prints_where_it_goes(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed verify threshold escalates at most the asked share, its cost pays every
    candidate's witnesses, and the output names the policy key that takes it."""
    argv = ["calibrate", "--kind", "verifier", "--model", model, "--data", str(FIXTURE)]
    assert main([*argv, "--max-strong-share", "0.4"]) == 0
    out = capsys.readouterr().out
    threshold = float(out.split()[2].rstrip(":"))
    data = load_verify_set([FIXTURE])
    escalated = OnnxVerifier(model).confidence_of_features(data.features) < threshold
    assert escalated.mean() <= 0.4
    assert f"candidates escalated ({1 - escalated.mean():.1%} kept)" in out
    o = data.outcomes
    paid = (o.weak_cost + data.evidence_cost).sum() + o.strong_cost[escalated].sum()
    assert f"cost {paid / o.strong_cost.sum():.1%} of all-strong with the witnesses paid" in out
    assert f"tiers[NAME].verify.threshold: {threshold:.6g}" in out


def test_calibrate_verifier_writes_the_verify_threshold(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--write`` sets ``tiers[small].verify.threshold`` with a provenance comment; a tier
    without a verify block is refused and the file left as it was."""
    policy = tmp_path / "policy.yaml"
    text = policy_path("default").read_text("utf-8")
    policy.write_text(text, "utf-8")
    argv = ["calibrate", "--kind", "verifier", "--model", model, "--data", str(FIXTURE),
            "--min-pgr", "0.8", "--policy", str(policy), "--tier", "small", "--write"]  # fmt: skip
    assert main(argv) == 2
    assert "tiers[small].verify: no verify block" in capsys.readouterr().err
    assert policy.read_text("utf-8") == text
    policy.write_text(text.replace("    threshold: 0.825\n", VERIFY_BLOCK), "utf-8")
    assert main(argv) == 0
    out = capsys.readouterr().out
    threshold = float(out.split()[2].rstrip(":"))
    verify = parse_policy(policy.read_text("utf-8")).tier("small").verify
    assert verify is not None
    assert verify.threshold == threshold
    assert (
        parse_policy(policy.read_text("utf-8")).tier("small").threshold == 0.825
    )  # the routing threshold is not touched
    assert "# calibrated: " in policy.read_text("utf-8")
    assert f"wrote tiers[small].verify.threshold in {policy}" in out


def test_write_verify_threshold_handles_flow_style_and_replaces_the_old_comment() -> None:
    """A flow-style verify block gets the key inside its braces; a second write replaces the
    value and the provenance, adding nothing."""
    text = policy_path("default").read_text("utf-8")
    text = text.replace(
        "    threshold: 0.825\n", "    threshold: 0.825\n    verify: {witness: medium}\n"
    )
    once = write_verify_threshold(text, "small", 0.4321, "first run")
    assert "    # calibrated: first run\n    verify: {witness: medium, threshold: 0.4321}" in once
    twice = write_verify_threshold(once, "small", 0.5, "second run")
    assert len(twice.split("\n")) == len(once.split("\n"))
    assert "first run" not in twice
    verify = parse_policy(twice).tier("small").verify
    assert verify is not None
    assert verify.threshold == 0.5
    with pytest.raises(PolicyError, match="no tier named 'huge'"):
        write_verify_threshold(text, "huge", 0.5, "x")


def test_a_verify_threshold_pays_the_witnesses() -> None:
    """Every row pays the cheap answer and its witnesses; escalated rows the strong one too."""
    outcomes = Outcomes(np.array([0.0, 1.0]), np.ones(2), np.ones(2), np.full(2, 10.0))
    confidence = np.array([0.2, 0.8])
    result = threshold_for(confidence, outcomes, max_strong_share=0.5, evidence_cost=np.ones(2))
    assert result.strong_share == 0.5
    assert result.cost_ratio == pytest.approx((2 + 2 + 10) / 20)


def test_skipped_prompts_pay_the_strong_answer_alone() -> None:
    """Route+verify's skipped prompts pay neither the cheap answer nor the witnesses, and
    get the strong tier's score."""
    outcomes = Outcomes(np.array([0.0, 1.0, 0.0]), np.ones(3), np.ones(3), np.full(3, 10.0))
    evidence = np.full(3, 2.0)
    skip = np.array([True, False, False])
    share, cost, pgr = cost_curve(Router(np.array([0.0, 0.9, 0.1]), evidence, skip), outcomes)
    assert share.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert cost.tolist() == pytest.approx([(10 + 6) / 30, (10 + 6 + 10) / 30, (10 + 6 + 20) / 30])
    assert pgr.tolist() == pytest.approx([0.5, 1.0, 1.0])  # the skipped prompt recovered half
    alone = cost_curve(Router(np.array([0.0, 0.9, 0.1]), evidence), outcomes)
    assert alone[1][0] == pytest.approx(9 / 30)  # verify alone pays 3 x (1 + 2) up front


def _set(outcomes: Outcomes, evidence: np.ndarray) -> VerifySet:
    n = len(evidence)
    return VerifySet(
        tasks=("t",) * n,
        prompts=("p",) * n,
        features=np.zeros((n, 1)),
        evidence_cost=evidence,
        outcomes=outcomes,
        good=outcomes.weak_score >= 1,
        rows=None,
    )


def test_route_skips_only_where_it_pays() -> None:
    """Where the prompt scorer knows which prompts the cheap tier fails and trying is dear,
    route+verify skips them; where it knows nothing, it keeps verify alone ("none")."""
    rng = np.random.default_rng(0)
    n = 400
    hopeless = rng.random(n) < 0.3  # the cheap answer is wrong and the witnesses agree with it
    weak = np.where(hopeless, 0.0, (rng.random(n) < 0.8).astype(float))
    outcomes = Outcomes(weak, np.ones(n), np.full(n, 3.0), np.full(n, 10.0))
    data = _set(outcomes, np.full(n, 3.0))
    verifier = np.where(hopeless, 0.9, np.where(weak == 1, 0.7, 0.2))
    knowing = np.where(hopeless, 0.1, 0.8) + rng.normal(0, 0.01, n)
    chosen = choose_skip(data, verifier, knowing).chosen
    assert chosen.label != "none"
    assert chosen.skipped == pytest.approx(hopeless.mean(), abs=0.02)
    informed = np.where(weak == 1, 0.7, 0.2)  # the verifier sees every wrong answer
    outcomes = Outcomes(weak, np.ones(n), np.full(n, 0.5), np.full(n, 10.0))
    cheap_trying = _set(outcomes, np.full(n, 0.5))
    assert choose_skip(cheap_trying, informed, rng.random(n)).chosen.label == "none"


@pytest.mark.parametrize(
    ("keys", "index"),
    [
        (["a", "b", "c"], 0),  # all differ: a tie, the first answer
        (["a", "b", "b"], 1),  # the witnesses agree against the candidate
        (["a", "a", "b"], 0),
        ([None, "b", "b"], 1),  # no final answer in the candidate: it does not vote
        (["a", None, None], 0),
        (["a", "b", "b", "a"], 0),  # two against two: the first
        (["a", "c", "b", "b"], 2),  # the first answer stating the majority's
    ],
)
def test_majority_index(keys: list[str | None], index: int) -> None:
    """The majority's answer needs strictly more votes than the candidate's."""
    assert majority_index(keys) == index


def test_majority_rows_swap_the_candidate_and_keep_what_is_paid() -> None:
    """A row whose witnesses outvote the candidate gets a witness as candidate and the old
    candidate as a witness: the same answers, so the same total cost."""
    rows = load_answers([FIXTURE])
    voted = majority_rows(rows)
    changed = [(a, b) for a, b in zip(rows, voted, strict=True) if a is not b]
    assert changed
    for before, after in changed:
        paid = [before.candidate_cost, *(w.cost for w in before.witnesses[:2])]
        now = [after.candidate_cost, *(w.cost for w in after.witnesses[:2])]
        assert sorted(paid) == pytest.approx(sorted(now))
        assert after.witnesses[0].text == before.candidate


def _row(task: str, answers: list[tuple[str, float]]) -> AnswerRow:
    (text, score), *others = answers
    witnesses = tuple(Witness(f"m{i}", t, s, 1.0) for i, (t, s) in enumerate(others))
    return AnswerRow("id", task, "What is 6 * 7?", text, score, 1.0, 1.0, 10.0, witnesses)


def test_the_vote_is_measured_apart_from_who_votes() -> None:
    """Two witnesses that agree on the right answer outvote a wrong candidate; with three
    different answers the majority keeps the candidate, and the symmetric vote is then the
    mean voter."""
    agreeing = _row("a", [('{"answer": 41}', 0.0), ('{"answer": 42}', 1.0), ("42", 1.0)])
    split = _row("b", [('{"answer": 41}', 0.0), ('{"answer": 42}', 1.0), ("40", 0.0)])
    rows = [agreeing, split]
    choices = compare_answers(rows, majority_rows(rows))
    assert choices["a"].first_accuracy == 0.0
    assert choices["a"].majority_accuracy == 1.0
    assert choices["a"].changed == 1.0
    assert choices["b"].majority_accuracy == 0.0
    assert choices["b"].member_accuracy == pytest.approx(1 / 3)
    assert choices["b"].vote_accuracy == pytest.approx(1 / 3)
    assert choices["all"].vote_accuracy == pytest.approx((1 + 1 / 3) / 2)
