"""The code-evidence measurement ranks right code above wrong code where behaviour differs,
and says so when it cannot (one label only)."""

from __future__ import annotations

from cascade.training.answers import AnswerRow, Witness
from cascade.training.code_agreement import code_path_counts, code_signals

PROMPT = "Write a python function double(n) that returns twice n."
RIGHT = "```python\ndef double(n):\n    return n * 2\n```"
ALSO_RIGHT = "```python\ndef double(n):\n    return n + n\n```"
WRONG = "```python\ndef double(n):\n    return n ** 2\n```"


def _row(candidate: tuple[str, float], *witnesses: tuple[str, float]) -> AnswerRow:
    return AnswerRow(
        id=f"row-{len(witnesses)}-{candidate[1]}",
        task="code",
        prompt=PROMPT,
        candidate=candidate[0],
        candidate_score=candidate[1],
        candidate_cost=0.0,
        strong_score=1.0,
        strong_cost=0.0,
        witnesses=tuple(
            Witness(f"m{i}", text, score, 0.0) for i, (text, score) in enumerate(witnesses)
        ),
    )


def test_rotated_candidates_rank_by_behaviour_not_by_words() -> None:
    """Each answer in turn as the candidate: behaviour agreement puts the wrong program last
    although its words match the right ones; parsing cannot tell them apart."""
    rows = [_row((RIGHT, 1.0), (ALSO_RIGHT, 1.0), (WRONG, 0.0), (RIGHT, 1.0))]
    signals = code_signals(rows, rotate=True)
    assert len(signals.good) == 4
    assert signals.auroc("behaviour_agreement") == 1.0
    assert signals.auroc("behaviour_vote") == 1.0
    assert signals.auroc("parses") == 0.5
    text = signals.auroc("text_overlap")
    assert text is not None
    assert text < 0.5  # the wrong program shares as many words as the right ones
    interval = signals.interval("behaviour_agreement", draws=50)
    assert interval == (1.0, 1.0)


def test_one_label_only_has_no_auroc() -> None:
    """When every candidate is right, the AUROC is undefined, not 0.5."""
    signals = code_signals([_row((RIGHT, 1.0), (ALSO_RIGHT, 1.0))])
    assert signals.auroc("behaviour_agreement") is None
    assert signals.interval("behaviour_agreement", draws=20) is None


def test_value_answers_do_not_take_the_code_path() -> None:
    """Replies that state a value in the requested form are not judged as code."""
    value = '{"reasoning": "def f(x): return x", "answer": "3"}'
    rows = [_row((value, 1.0), (RIGHT, 1.0))]
    assert code_path_counts(rows) == (2, 1)
