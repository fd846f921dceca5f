"""What code evidence says about code answers: AUROC of each signal on an answers file.

For each candidate answer and its witnesses (other models' answers to the same prompt), four
signals, each higher when the candidate looks more likely right:

- ``behaviour_agreement``: mean over witnesses of the share of test inputs on which the
  candidate's code and the witness's code give the same output
  (:func:`~cascade.model.code_evidence.check_code`);
- ``behaviour_vote``: share of witnesses whose behaviour equals the candidate's on every input
  (what the verifier's ``agree_share`` reads for code);
- ``text_overlap``: mean word Jaccard with the witnesses (the verifier's ``similarity_mean``);
- ``parses``: the candidate holds Python code that parses.

The label is "the candidate's score is 1" (every check passed). Two protocols: ``weak`` (the
file's candidate, the weak model, against its witnesses: the verifier's setting) and
``rotate`` (each answer of a prompt in turn as the candidate, the others as witnesses: more
candidates, and wrong ones among them, but the same prompts many times, so not independent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade.model.answer_features import ANSWER_FEATURE_NAMES, features_of, parse_answer
from cascade.model.code_evidence import Behaviour, Code, check_code, looks_like_code, python_code
from cascade.model.final_answer import extract_final_answer, has_choices
from cascade.training.answers import AnswerRow
from cascade.training.evaluation import auroc

__all__ = ["SIGNALS", "CodeSignals", "code_path_counts", "code_signals"]

SIGNALS = ("behaviour_agreement", "behaviour_vote", "text_overlap", "parses")
_SIMILARITY = ANSWER_FEATURE_NAMES.index("similarity_mean")


@dataclass(frozen=True)
class CodeSignals:
    """One row per candidate: its signals (columns in :data:`SIGNALS` order) and its label."""

    values: np.ndarray
    good: np.ndarray
    prompt: np.ndarray
    """Index of each candidate's prompt (rotated candidates share one)."""

    def auroc(self, signal: str) -> float | None:
        """AUROC of one signal against ``good``; None when every candidate has one label."""
        return auroc(self.good, self.values[:, SIGNALS.index(signal)])

    def interval(
        self, signal: str, *, draws: int = 2000, seed: int = 0
    ) -> tuple[float, float] | None:
        """A 90% interval of the AUROC, resampling prompts (not candidates) with replacement;
        draws with one class only are skipped. None when no draw has both classes."""
        rng = np.random.default_rng(seed)
        prompts = np.unique(self.prompt)
        column = self.values[:, SIGNALS.index(signal)]
        found = []
        for _ in range(draws):
            picked = rng.choice(prompts, size=len(prompts), replace=True)
            rows = np.concatenate([np.flatnonzero(self.prompt == p) for p in picked])
            if (value := auroc(self.good[rows], column[rows])) is not None:
                found.append(value)
        if not found:
            return None
        low, high = np.percentile(found, [5, 95])
        return float(low), float(high)

    def means(self, signal: str) -> tuple[float, float]:
        """The signal's mean over right candidates and over the others (NaN when none)."""
        column = self.values[:, SIGNALS.index(signal)]
        right, wrong = column[self.good], column[~self.good]
        return (
            float(right.mean()) if len(right) else float("nan"),
            float(wrong.mean()) if len(wrong) else float("nan"),
        )


def code_signals(
    rows: Sequence[AnswerRow], *, rotate: bool = False, witnesses: int | None = None
) -> CodeSignals:
    """The signals of each row's candidate (``rotate``: of each answer in turn) given the
    first ``witnesses`` others (all when None; in rotation, the next ones in the row's order)."""
    values: list[list[float]] = []
    good: list[bool] = []
    prompt: list[int] = []
    for index, row in enumerate(rows):
        answers = [(row.candidate, row.candidate_score)]
        answers += [(w.text, w.score) for w in row.witnesses]
        codes = [python_code(text) for text, _ in answers]
        parsed = [parse_answer(text, choices=False) for text, _ in answers]
        for c in range(len(answers)) if rotate else (0,):
            others = [(c + j) % len(answers) for j in range(1, len(answers))][:witnesses]
            values.append(_signals(row.prompt, codes[c], [codes[o] for o in others]))
            # the verifier's own word-overlap column (features_of runs no code)
            text = features_of(parsed[c], [parsed[o] for o in others])[_SIMILARITY]
            values[-1][SIGNALS.index("text_overlap")] = text
            good.append(answers[c][1] >= 1.0)
            prompt.append(index)
    return CodeSignals(
        np.array(values, dtype=np.float64).reshape(len(values), len(SIGNALS)),
        np.array(good, dtype=bool),
        np.array(prompt, dtype=np.int64),
    )


def code_path_counts(rows: Sequence[AnswerRow]) -> tuple[int, int]:
    """(answers, answers whose final answer would be their code's behaviour): those holding
    Python code and stating no final answer in a requested form. For a task whose answers
    are values (CRUXEval-O predicts an output) the second number should be about zero."""
    total = routed = 0
    for row in rows:
        choices = has_choices(row.prompt)
        for text in (row.candidate, *(w.text for w in row.witnesses)):
            total += 1
            final = extract_final_answer(text, choices=choices)
            explicit = final is not None and final.explicit
            routed += not explicit and looks_like_code(text) and python_code(text) is not None
    return total, routed


def _signals(prompt: str, candidate: Code | None, witnesses: list[Code | None]) -> list[float]:
    parses = candidate is not None and candidate.parses
    check = check_code(prompt, candidate, witnesses) if candidate is not None else None
    if check is None or not witnesses:
        return [0.0, 0.0, 0.0, float(parses)]
    return [
        float(np.mean(check.agreement)),
        float(np.mean([_same(check.candidate, w) for w in check.witnesses])),
        0.0,  # text overlap: filled by the caller
        float(parses),
    ]


def _same(candidate: Behaviour, witness: Behaviour | None) -> bool:
    """Equal behaviour, as the verifier's agreement counts it (a program that answers)."""
    return candidate.answered and witness is not None and witness.signature == candidate.signature
