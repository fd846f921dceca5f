"""The simulator's evidence is as strong as real models' and no stronger.

Samples and witness tiers agree as often as two cheap models do in ``answers/`` (the constants in
:data:`cascade.simulator.agreement.MEASURED`, measured by ``benchmarks/simulator_agreement.py``;
these tests never read the shared data), and token logprobs rank right above wrong answers at
the AUROC of published uncertainty benchmarks. Final answers are compared with the verifier's own
extractor, as a router would.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import pytest

from cascade.model.final_answer import extract_final_answer, has_choices
from cascade.simulator.agreement import MEASURED, Agreement, coincidence, follow, form
from cascade.simulator.answers import Ask, Reply, compose, compose_samples
from cascade.simulator.dataset import LabeledRow
from cascade.simulator.labels import LabelTable
from cascade.simulator.profiles import PROFILES, Profile, Quality
from tests.servers import shared_labels

PROMPTS = 1200
TOLERANCE = 0.05
_LETTERS = "ABCDEFGHIJ"


def _prompt(task: str, i: int) -> str:
    if task == "mmlu_pro":
        lines = "\n".join(f"{x}) option {x.lower()} of question {i}" for x in _LETTERS)
        return f"Question {i}: which of these holds?\n{lines}"
    if task == "math_l5":
        return f"Problem {i}: find the sum of all integers x with |x - {i}| < {i % 9 + 4}?"
    return f"Question {i}: a farmer has {i + 3} sheep and buys {i % 7 + 2} more. How many now?"


def _table(task: str, accuracy: float, count: int = PROMPTS) -> tuple[LabelTable, list[str]]:
    """``count`` prompts of ``task``'s form that the column gets right at exactly ``accuracy``."""
    name = "math" if task == "math_l5" else task
    prompts = [_prompt(task, i) for i in range(count)]
    right = round(accuracy * count)
    rows = [LabeledRow(str(i), name, p, float(i < right), 1.0) for i, p in enumerate(prompts)]
    return LabelTable(rows), prompts


def _key(prompt: str, reply: Reply) -> str | None:
    found = extract_final_answer(reply.text, choices=has_choices(prompt))
    return None if found is None else found.key


def _rates(pairs: Sequence[tuple[str, Reply, Reply]]) -> dict[str, float]:
    """Agreement of the second reply with the first, given the first right or wrong."""
    counts = {"right": [0, 0], "wrong": [0, 0], "both_wrong": [0, 0]}
    for prompt, first, second in pairs:
        same = _key(prompt, first) == _key(prompt, second) and _key(prompt, first) is not None
        counts["right" if first.correct else "wrong"][0] += same
        counts["right" if first.correct else "wrong"][1] += 1
        if not first.correct and not second.correct:
            counts["both_wrong"][0] += same
            counts["both_wrong"][1] += 1
    return {name: agree / total for name, (agree, total) in counts.items()}


def _weaker(share: float) -> Profile:
    """A second cheap profile on the same column, ``share`` less accurate."""
    quality = Quality(score="weak_score", extra_fail_share=share)
    return dataclasses.replace(PROFILES["1.5b"], name="witness", quality=quality)


def test_the_agreement_model_gives_back_the_measured_rates() -> None:
    """At the data's accuracies, the odds ratios give back the measured conditional rates, and
    the attractor shares give back how often two wrong answers coincide."""
    for row in MEASURED.values():
        given_right, given_wrong = follow(row.accuracy, row.witness_accuracy, row.odds_ratio)
        assert given_right == pytest.approx(row.right_given_right, abs=0.015)
        assert given_wrong == pytest.approx(row.right_given_wrong, abs=0.015)
        count = 10 if row.task == "mmlu_pro" else 0
        assert coincidence(row.attractor, count) == pytest.approx(row.coincide, abs=0.015)


@pytest.mark.parametrize("task", sorted(MEASURED))
def test_samples_agree_with_the_first_answer_as_the_data_says(task: str) -> None:
    """n samples of one tier: the others agree with choice 0 as often as a second cheap answer
    does at this accuracy, on prompts where choice 0 is right and where it is wrong."""
    row = MEASURED[task]
    labels, prompts = _table(task, row.accuracy)
    pairs = []
    for prompt in prompts:
        first, *others = compose_samples(Ask(prompt), PROFILES["7b"], labels, 4)
        pairs += [(prompt, first, other) for other in others]
    rates = _rates(pairs)
    given_right, given_wrong = follow(row.accuracy, row.accuracy, row.odds_ratio)
    chance = coincidence(row.attractor, 10 if task == "mmlu_pro" else 0)
    assert rates["right"] == pytest.approx(given_right, abs=TOLERANCE)
    assert rates["wrong"] == pytest.approx((1 - given_wrong) * chance, abs=TOLERANCE)
    assert rates["both_wrong"] == pytest.approx(row.coincide, abs=TOLERANCE)
    if abs(row.witness_accuracy - row.accuracy) < 0.01:  # same accuracy: the measured rates
        assert rates["right"] == pytest.approx(row.agree_given_right, abs=TOLERANCE)
        assert rates["wrong"] == pytest.approx(row.agree_given_wrong, abs=TOLERANCE)


@pytest.mark.parametrize("task", sorted(MEASURED))
def test_a_witness_tier_agrees_with_the_candidate_at_the_measured_rates(task: str) -> None:
    """Two cheap tiers at the data's accuracies agree as the weak model and its witnesses do:
    right candidates are often (not always) confirmed, wrong ones sometimes."""
    row: Agreement = MEASURED[task]
    column = max(row.accuracy, row.witness_accuracy)
    weaker = _weaker(1 - min(row.accuracy, row.witness_accuracy) / column)
    candidate, witness = (
        (PROFILES["7b"], weaker)
        if row.accuracy >= row.witness_accuracy
        else (weaker, PROFILES["7b"])
    )
    labels, prompts = _table(task, column, 3 * PROMPTS)  # one pair per prompt: more prompts
    pairs = [
        (p, compose(Ask(p), candidate, labels), compose(Ask(p), witness, labels)) for p in prompts
    ]
    rates = _rates(pairs)
    assert rates["right"] == pytest.approx(row.agree_given_right, abs=TOLERANCE)
    assert rates["wrong"] == pytest.approx(row.agree_given_wrong, abs=TOLERANCE)
    assert 0 < rates["both_wrong"] < 1


def test_the_shipped_cheap_tiers_are_neither_nested_nor_independent() -> None:
    """On the shipped multiple-choice data the 1.5B is right mostly, not only, where the 7B is,
    at the measured dependence, and two wrong answers sometimes name the same option."""
    labels = shared_labels()
    small, medium = PROFILES["1.5b"], PROFILES["7b"]
    prompts = [
        f"Which of these holds for case {i}?\nA. one\nB. two\nC. three\nD. four"
        for i in range(1500)
    ]
    pairs = [(p, compose(Ask(p), small, labels), compose(Ask(p), medium, labels)) for p in prompts]
    accuracy = labels.accuracy(small.quality, "choice"), labels.accuracy(medium.quality, "choice")
    assert accuracy[0] < accuracy[1]
    right = [b.correct for _, a, b in pairs if a.correct]
    wrong = [b.correct for _, a, b in pairs if not a.correct]
    expected = follow(*accuracy, MEASURED["mmlu_pro"].odds_ratio)
    assert statistics.mean(right) == pytest.approx(expected[0], abs=TOLERANCE)
    assert statistics.mean(wrong) == pytest.approx(expected[1], abs=TOLERANCE)
    assert 0.1 < _rates(pairs)["both_wrong"] < 0.9


def test_samples_are_fixed_per_prompt_and_the_first_is_the_tiers_answer() -> None:
    """The same request gets the same n answers every time; choice 0 is the single answer."""
    labels = shared_labels()
    prompt = "Question 7: a baker sells 12 loaves a day for 5 days. How many loaves?"
    first = compose_samples(Ask(prompt), PROFILES["1.5b"], labels, 5)
    assert first == compose_samples(Ask(prompt), PROFILES["1.5b"], labels, 5)
    assert first[0] == compose(Ask(prompt), PROFILES["1.5b"], labels)
    assert form(prompt) == "number"


def _auroc(right: list[float], wrong: list[float]) -> float:
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def test_mean_logprob_ranks_right_above_wrong_no_better_than_real_models() -> None:
    """Over a few hundred prompts, mean token logprob separates right from wrong answers with
    an AUROC in the published 0.6-0.8 range, and the two ranges overlap."""
    labels = shared_labels()
    right: list[float] = []
    wrong: list[float] = []
    for i in range(400):
        prompt = (
            f"Question {i}: a shop has {i + 2} boxes of {i % 9 + 3} pens. How many pens?"
            if i % 2
            else f"Tell me fact number {i} about rivers."
        )
        for profile in ("1.5b", "7b"):
            reply = compose(Ask(prompt), PROFILES[profile], labels)
            (right if reply.correct else wrong).append(statistics.mean(reply.logprobs))
    assert len(right) > 100
    assert len(wrong) > 100
    assert 0.6 <= _auroc(right, wrong) <= 0.8
    assert min(right) < statistics.median(wrong)
    assert max(wrong) > statistics.median(right)
