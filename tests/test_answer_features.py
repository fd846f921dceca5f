"""Final answers and answer features: what the verifier reads from a candidate and its witnesses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cascade.model.answer_features import (
    ANSWER_FEATURE_NAMES,
    ANSWER_FEATURES_VERSION,
    answer_features,
    parse_answer,
    with_behaviours,
)
from cascade.model.final_answer import FinalAnswer, extract_final_answer, has_choices
from cascade.training.train import PARITY_TEXTS

FIXTURE = Path(__file__).parent / "data" / "verifier_answers.jsonl"
MC_PROMPT = "Which organ makes insulin?\nA) Liver\nB) Pancreas\nC) Kidney\nD) Spleen"
JSON_REPLY = (
    '```json\n{\n    "reasoning": "She has 16 - 3 - 4 = 9 eggs and sells them at $2: 9 * 2 = '
    '$18.",\n    "answer": "18"\n}\n```'
)


def _feature(values: list[float], name: str) -> float:
    return values[ANSWER_FEATURE_NAMES.index(name)]


@pytest.mark.parametrize(
    ("text", "choices", "expected"),
    [
        (JSON_REPLY, False, FinalAnswer("number", "18", explicit=True)),
        ('{"reasoning": "...", "answer": -3\n}', False, FinalAnswer("number", "-3", True)),
        ('{"reasoning": "x", "answer": "$1,234.50"}', False, FinalAnswer("number", "1234.5", True)),
        ('"answer": "\\\\frac{3}{4}"', False, FinalAnswer("number", "0.75", True)),
        ("Total: \\boxed{\\frac{1}{2}} dollars.", False, FinalAnswer("number", "0.5", True)),
        ("Hence \\boxed{x^2 + 1}.", False, FinalAnswer("text", "x^2 + 1", True)),
        ('{"answer": "[(3, 1), (2, 3)]"}', False, FinalAnswer("text", "[(3, 1), (2, 3)]", True)),
        ('{"answer": "\'816\'"}', False, FinalAnswer("number", "816", True)),
        ('{"answer": "6,8,8"}', False, FinalAnswer("text", "6,8,8", True)),
        ('{"answer": ""}', False, FinalAnswer("text", "", True)),
        ("We refer to Wikipedia. The answer is (B).\n\n", True, FinalAnswer("letter", "B", True)),
        ("Thus the answer is **C. Kidney**", True, FinalAnswer("letter", "C", True)),
        ("Reasoning...\nAnswer: D", True, FinalAnswer("letter", "D", True)),
        ("Option B fits best, not A.", True, FinalAnswer("letter", "A", False)),
        ("The answer is 1,000,000.", False, FinalAnswer("number", "1000000", True)),
        ("Final answer: 42 dollars", False, FinalAnswer("number", "42", True)),
        ("No, the function never returns.", False, FinalAnswer("yesno", "no", False)),
        ("No problem! 3 + 4 = 7", False, FinalAnswer("number", "7", False)),
        ("We get 17, then 17 * 2 = 34 apples", False, FinalAnswer("number", "34", False)),
        ("Paris", False, FinalAnswer("text", "paris", False)),
        ("I cannot determine this from the information given, sorry." * 3, False, None),
        ("", False, None),
    ],
)  # fmt: skip
def test_final_answers_of_real_looking_replies(
    text: str, choices: bool, expected: FinalAnswer | None
) -> None:
    """JSON answers, boxed answers, option letters, numbers and yes/no come out canonical."""
    assert extract_final_answer(text, choices=choices) == expected


def test_equal_answers_have_equal_keys() -> None:
    """Differently written equal answers agree; different ones do not."""
    same = ["The answer is $18.", '{"answer": "18.00"}', "\\boxed{18}", "18 dollars"]
    finals = [extract_final_answer(t) for t in same]
    assert {f.key if f else None for f in finals} == {"number:18"}
    assert extract_final_answer("\\boxed{19}") != extract_final_answer("\\boxed{18}")


def test_options_are_recognized_in_prompts() -> None:
    """Lettered option lines (or a lone "A)") mark a multiple-choice prompt; prose does not."""
    assert has_choices(MC_PROMPT)
    assert has_choices("Discuss complications of labor.\nA) All of the below")
    assert not has_choices("A farmer has 16 eggs. How many are left?")


def test_agreement_features_count_witnesses() -> None:
    """Agreeing witnesses raise the agreement share; disagreeing ones mark it none."""
    agree = answer_features(MC_PROMPT, "The answer is (B).", ["Answer: B", "the answer is (B)"])
    split = answer_features(MC_PROMPT, "The answer is (B).", ["The answer is (A).", "(C)"])
    assert len(agree) == len(ANSWER_FEATURE_NAMES)
    assert _feature(agree, "agree_share") == 1.0
    assert _feature(agree, "all_agree") == 1.0
    assert _feature(agree, "distinct_share") == 0.0
    assert _feature(split, "agree_share") == 0.0
    assert _feature(split, "none_agree") == 1.0
    assert _feature(split, "distinct_share") == 1.0
    assert _feature(agree, "letter_answer") == 1.0


def test_text_similarity_stands_in_when_no_answer_is_extracted() -> None:
    """Without a final answer the word overlap with the witnesses is the evidence."""
    essay = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 3
    close = answer_features("Explain photosynthesis.", essay, [essay.upper()])
    far = answer_features("Explain photosynthesis.", essay, ["Mitochondria burn sugar. " * 6])
    assert _feature(close, "candidate_extracted") == 0.0
    assert _feature(close, "fallback_similarity") == 1.0
    assert _feature(far, "fallback_similarity") < 0.2


def test_form_features_see_hedges_refusals_and_format() -> None:
    """Hedging, refusals and the requested format show in the candidate's own features."""
    hedged = answer_features("Q?", "Maybe 4, but I am not sure; however it might be 5.", [])
    refusal = answer_features("Q?", "I'm sorry, but I can't help with that request.", [])
    assert _feature(hedged, "log_hedges") > 1.0
    assert _feature(refusal, "refusal") == 1.0
    assert _feature(answer_features("Q?", JSON_REPLY, []), "candidate_explicit") == 1.0
    assert _feature(hedged, "candidate_explicit") == 0.0


def test_logprobs_are_summarized_or_flagged_absent() -> None:
    """Token logprobs give mean and min (clipped, NaN-safe); without them a flag says absent."""
    given = answer_features("Q?", "4", ["4"], [-0.1, -0.5, float("-inf"), float("nan")])
    absent = answer_features("Q?", "4", ["4"])
    assert _feature(given, "logprobs_present") == 1.0
    assert _feature(given, "logprob_min") == -20.0
    assert _feature(given, "logprob_mean") == pytest.approx((-0.1 - 0.5 - 40) / 4)
    assert [_feature(absent, n) for n in ("logprobs_present", "logprob_mean")] == [0.0, 0.0]


def test_messy_text_and_any_witness_count_give_finite_features() -> None:
    """Scripts, emoji, control characters, empty and huge answers: always finite numbers."""
    for i, text in enumerate(PARITY_TEXTS):
        witnesses = [PARITY_TEXTS[(i + j) % len(PARITY_TEXTS)] for j in range(i % 4)]
        values = answer_features(PARITY_TEXTS[(i + 5) % len(PARITY_TEXTS)], text, witnesses)
        assert all(math.isfinite(v) and abs(v) < 1e6 for v in values)


def test_real_answers_agree_where_both_are_correct() -> None:
    """On the fixture's real replies, an extracted answer exists for nearly every candidate,
    and two correct candidates of one task agree with... themselves through any wording."""
    rows = [json.loads(line) for line in FIXTURE.read_text("utf-8").splitlines()]
    extracted = [
        extract_final_answer(r["weak_response"], choices=has_choices(r["prompt"])) for r in rows
    ]
    assert sum(e is not None for e in extracted) >= len(rows) - 1
    for row, final in zip(rows, extracted, strict=True):
        correct_witnesses = [o for o in row["other_cheap"] if o["score"] == 1]
        if row["weak_score"] == 1 and correct_witnesses and final is not None:
            witness = correct_witnesses[0]["response"]
            assert extract_final_answer(witness, choices=has_choices(row["prompt"])) == (
                FinalAnswer(final.kind, final.value, explicit=True)
            ) or row["task"] in {"math_l5", "cruxeval_o"}


def test_the_feature_version_names_the_features() -> None:
    """The version a manifest records is the one this code computes."""
    assert ANSWER_FEATURES_VERSION == "answer-features-v2"
    assert len(set(ANSWER_FEATURE_NAMES)) == len(ANSWER_FEATURE_NAMES) == 24


PROGRAM_PROMPT = "Write a python function fib(n) that returns the n-th Fibonacci number (0 based)."
ITERATIVE = (
    "Here is an iterative version:\n```python\ndef fib(n):\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\nIt runs in O(n)."
)
RECURSIVE = "```py\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```"
OFF_BY_ONE = (
    "```python\ndef fib(n):\n    a, b = 1, 1\n    for _ in range(n):\n"
    "        a, b = b, a + b\n    return a\n```"
)
BROKEN = "```python\ndef fib(n)\n    return n\n```"


def test_an_answer_stated_in_the_requested_form_is_not_run() -> None:
    """A reply with an explicit final answer keeps it, even with code in its reasoning."""
    reply = '{"reasoning": "```python\\ndef f(x):\\n    return x\\n```", "answer": "7"}'
    parsed = parse_answer(reply, choices=False)
    assert parsed.code is None
    assert parsed.final is not None
    assert parsed.final.value == "7"


def test_agreement_features_carry_behaviour_for_code() -> None:
    """For code, agree_share and friends compare behaviour, not words: a right candidate
    agrees with right witnesses; a wrong one that shares more words with them does not."""
    right = answer_features(PROGRAM_PROMPT, ITERATIVE, [RECURSIVE, RECURSIVE])
    wrong = answer_features(PROGRAM_PROMPT, OFF_BY_ONE, [ITERATIVE, RECURSIVE])
    broken = answer_features(PROGRAM_PROMPT, BROKEN, [ITERATIVE, RECURSIVE])
    assert _feature(right, "all_agree") == 1.0
    assert _feature(right, "agree_share") == 1.0
    assert _feature(right, "behaviour_agreement") == 1.0
    assert _feature(wrong, "agree_share") == 0.0
    assert _feature(wrong, "none_agree") == 1.0
    assert _feature(wrong, "behaviour_agreement") < 0.5
    assert _feature(wrong, "similarity_mean") > _feature(right, "similarity_mean")
    assert [_feature(v, "code_parses") for v in (right, wrong, broken)] == [1.0, 1.0, 0.0]
    assert _feature(broken, "candidate_extracted") == 0.0


def test_text_answers_take_the_fast_path() -> None:
    """A candidate that is not code runs nothing: with_behaviours hands the answers back."""
    candidate = parse_answer("The answer is 55.", choices=False)
    witnesses = [parse_answer(RECURSIVE, choices=False)]
    same, others = with_behaviours(PROGRAM_PROMPT, candidate, witnesses)
    assert same is candidate
    assert others[0] is witnesses[0]
    assert others[0].behaviour is None
    values = answer_features(PROGRAM_PROMPT, "The answer is 55.", ["55"])
    assert _feature(values, "code_parses") == 0.0
    assert _feature(values, "behaviour_agreement") == 0.0
