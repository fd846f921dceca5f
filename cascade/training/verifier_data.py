"""Answer rows turned into verifier examples: features of the candidate given some witnesses.

One row gives one example per witness subset asked for: the trio convention (the first two
``other_cheap`` answers), the first ``k`` for measuring with ``k`` witnesses, or random draws of
one to three witnesses from the first :data:`POOL` so a model learns to read any count. Each
answer of a row is parsed once, whatever the number of subsets (and, where the candidate is
code, each program runs once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cascade.model.answer_features import (
    ANSWER_FEATURE_NAMES,
    ParsedAnswer,
    features_of,
    parse_answer,
    with_behaviours,
)
from cascade.model.final_answer import has_choices
from cascade.training.answers import AnswerRow
from cascade.training.evaluation import Outcomes

__all__ = [
    "POOL",
    "TRIO",
    "VerifierSet",
    "featurize",
    "first_witnesses",
    "outcomes_of",
    "random_witnesses",
    "trio_and_random",
]

TRIO = 2
"""Witnesses in the trio convention: the candidate and the first two ``other_cheap`` answers."""
POOL = 4
"""Random draws pick witnesses among the first four ``other_cheap`` answers (7-12B models in
the shipped data; later ones include 70B and frontier-lab small models)."""

Subsets = Callable[[AnswerRow], list[tuple[int, ...]]]
"""Which witness subsets (indexes into ``row.witnesses``) become examples of a row."""


@dataclass(frozen=True)
class VerifierSet:
    """Examples as parallel arrays: one per (row, witness subset)."""

    features: np.ndarray
    row: np.ndarray
    """Index of the source row in the list given to :func:`featurize`."""
    witnesses: np.ndarray
    evidence_cost: np.ndarray
    """What the witnesses cost: paid for every example, accepted or escalated."""
    good: np.ndarray

    def where(self, mask: np.ndarray) -> VerifierSet:
        """The examples where ``mask`` is true."""
        return VerifierSet(
            self.features[mask],
            self.row[mask],
            self.witnesses[mask],
            self.evidence_cost[mask],
            self.good[mask],
        )


def first_witnesses(k: int) -> Subsets:
    """One subset per row: its first ``k`` witnesses (fewer if the row has fewer)."""
    return lambda row: [tuple(range(min(k, len(row.witnesses))))]


def random_witnesses(seed: int, low: int = 1, high: int = 3) -> Subsets:
    """One subset per row: ``low..high`` witnesses drawn from the first :data:`POOL`."""
    rng = np.random.default_rng(seed)

    def draw(row: AnswerRow) -> list[tuple[int, ...]]:
        pool = min(POOL, len(row.witnesses))
        k = min(int(rng.integers(low, high + 1)), pool)
        return [tuple(sorted(int(i) for i in rng.choice(pool, size=k, replace=False)))]

    return draw


def trio_and_random(seed: int) -> Subsets:
    """Two examples per row: the trio and one random draw of one to three witnesses."""
    random_draw = random_witnesses(seed)
    return lambda row: [*first_witnesses(TRIO)(row), *random_draw(row)]


def featurize(rows: Sequence[AnswerRow], subsets: Subsets) -> VerifierSet:
    """Features of each row's candidate given each witness subset ``subsets`` picks."""
    features: list[list[float]] = []
    index: list[int] = []
    counts: list[int] = []
    costs: list[float] = []
    good: list[bool] = []
    for i, row in enumerate(rows):
        choices = has_choices(row.prompt)
        candidate = parse_answer(row.candidate, choices=choices)
        parsed: dict[int, ParsedAnswer] = {}
        if candidate.code is not None:  # code: every witness's program runs once, on one input set
            everyone = [parse_answer(w.text, choices=choices) for w in row.witnesses]
            candidate, everyone = with_behaviours(row.prompt, candidate, everyone)
            parsed = dict(enumerate(everyone))
        for subset in subsets(row):
            for w in subset:
                if w not in parsed:
                    parsed[w] = parse_answer(row.witnesses[w].text, choices=choices)
            features.append(features_of(candidate, [parsed[w] for w in subset]))
            index.append(i)
            counts.append(len(subset))
            costs.append(sum(row.witnesses[w].cost for w in subset))
            good.append(row.good)
    return VerifierSet(
        np.array(features, dtype=np.float64).reshape(len(features), len(ANSWER_FEATURE_NAMES)),
        np.array(index, dtype=np.int64),
        np.array(counts, dtype=np.int64),
        np.array(costs, dtype=np.float64),
        np.array(good, dtype=bool),
    )


def outcomes_of(rows: Sequence[AnswerRow], index: np.ndarray | None = None) -> Outcomes:
    """Both tiers' scores and costs of ``rows`` (or of ``rows[index]``, in that order)."""
    picked = list(rows) if index is None else [rows[int(i)] for i in index]

    def column(name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in picked], dtype=np.float64)

    return Outcomes(
        column("candidate_score"),
        column("strong_score"),
        column("candidate_cost"),
        column("strong_cost"),
    )
