"""Which answer to return when the answers agree: the first (the candidate) or the majority's.

With several answers to one prompt, the router may keep the candidate or the answer whose final
answer (:mod:`cascade.model.final_answer`) most of them share. :func:`majority_index` is the
rule: the candidate, unless another final answer has strictly more votes (answers without a
final answer do not vote), in which case the first answer that states it. Measured on answers
files, where every witness has a score. Caveat: the witnesses there are *other models*, not
repeated samples of the candidate's model (the data has one greedy answer per model), so this
measures a vote of different cheap models, which the policy's ``samples`` vote only resembles.

In the cascade, the majority's answer becomes the candidate the verifier judges, with the other
answers as its witnesses (the policy's ``answer: majority``); the cost is the same (every answer
is paid either way).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cascade.model.final_answer import extract_final_answer, has_choices
from cascade.training.answers import AnswerRow, Witness
from cascade.training.verifier_data import TRIO

__all__ = ["AnswerChoice", "compare_answers", "majority_index", "majority_rows"]


def majority_index(keys: Sequence[str | None]) -> int:
    """Index of the answer to return among final-answer ``keys`` (candidate first): 0 unless a
    final answer has strictly more votes than the candidate's; then its first holder."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return 0
    top, count = votes.most_common(1)[0]
    mine = votes[keys[0]] if keys[0] is not None else 0
    if count <= mine:
        return 0
    return next(i for i, k in enumerate(keys) if k == top)


def majority_rows(rows: Sequence[AnswerRow], witnesses: int = TRIO) -> list[AnswerRow]:
    """Each row with the majority's answer among the candidate and its first ``witnesses``
    witnesses as the candidate, the others as its witnesses (rows where the candidate wins:
    unchanged)."""
    result = []
    for row in rows:
        choices = has_choices(row.prompt)
        voters = row.witnesses[:witnesses]
        texts = [row.candidate, *(w.text for w in voters)]
        finals = [extract_final_answer(t, choices=choices) for t in texts]
        pick = majority_index([f.key if f is not None else None for f in finals])
        if pick == 0:
            result.append(row)
            continue
        chosen = voters[pick - 1]
        first = Witness("candidate", row.candidate, row.candidate_score, row.candidate_cost)
        others = [w for i, w in enumerate(voters) if i != pick - 1]
        result.append(
            replace(
                row,
                candidate=chosen.text,
                candidate_score=chosen.score,
                candidate_cost=chosen.cost,
                witnesses=(first, *others, *row.witnesses[witnesses:]),
            )
        )
    return result


@dataclass(frozen=True)
class AnswerChoice:
    """The first answer against the majority's on one set of prompts.

    ``first_accuracy`` against ``majority_accuracy`` is the question as the router meets it: keep
    the candidate, or what the vote says. The witnesses here may be better or worse models than
    the candidate, so the pair of ``member_accuracy`` (one answer of the vote, picked without
    looking) and ``vote_accuracy`` (the majority, ties going to each voter in turn) measures the
    vote itself, as it would be among samples of one model that are interchangeable.
    """

    rows: int
    first_accuracy: float
    """Mean score of the candidate (the first answer)."""
    majority_accuracy: float
    """Mean score of the answer :func:`majority_index` returns."""
    member_accuracy: float
    """Mean score of the voters' answers (a voter picked at random)."""
    vote_accuracy: float
    """Mean score of the majority's answer with ties broken by each voter in turn."""
    changed: float
    """Share of prompts where the majority's answer is not the candidate's."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, rounded to 4 digits."""
        return {
            "rows": self.rows,
            "first_accuracy": round(self.first_accuracy, 4),
            "majority_accuracy": round(self.majority_accuracy, 4),
            "member_accuracy": round(self.member_accuracy, 4),
            "vote_accuracy": round(self.vote_accuracy, 4),
            "changed": round(self.changed, 4),
        }


def compare_answers(
    rows: Sequence[AnswerRow], voted: Sequence[AnswerRow], witnesses: int = TRIO
) -> dict[str, AnswerChoice]:
    """First against majority (``voted``: :func:`majority_rows` of ``rows`` with as many
    ``witnesses``), on all rows (``"all"``) and per task."""
    first = np.array([r.candidate_score for r in rows])
    majority = np.array([r.candidate_score for r in voted])
    pairs = np.array([_symmetric(r, witnesses) for r in rows]).reshape(len(rows), 2)
    member, vote = pairs[:, 0], pairs[:, 1]
    changed = np.array([a is not b for a, b in zip(rows, voted, strict=True)])
    tasks = np.array([r.task for r in rows])
    groups = {"all": np.ones(len(rows), dtype=bool)}
    groups.update({t: tasks == t for t in sorted(set(tasks.tolist()))})
    return {
        name: AnswerChoice(
            rows=int(mask.sum()),
            first_accuracy=float(first[mask].mean()),
            majority_accuracy=float(majority[mask].mean()),
            member_accuracy=float(member[mask].mean()),
            vote_accuracy=float(vote[mask].mean()),
            changed=float(changed[mask].mean()),
        )
        for name, mask in groups.items()
    }


def _symmetric(row: AnswerRow, witnesses: int) -> tuple[float, float]:
    """(mean score of the voters, mean score of the vote with each voter first in turn)."""
    choices = has_choices(row.prompt)
    voters = [(row.candidate, row.candidate_score)]
    voters += [(w.text, w.score) for w in row.witnesses[:witnesses]]
    finals = [extract_final_answer(text, choices=choices) for text, _ in voters]
    keys = [f.key if f is not None else None for f in finals]
    scores = [score for _, score in voters]
    picked = []
    for first in range(len(voters)):
        order = [first, *(i for i in range(len(voters)) if i != first)]
        picked.append(scores[order[majority_index([keys[i] for i in order])]])
    return sum(scores) / len(scores), sum(picked) / len(picked)
