"""Cost-quality evaluation of a confidence model on labeled traffic (pure numpy).

A router with a confidence score sends the lowest-confidence share ``x`` of prompts to the strong
tier and keeps the rest on the weak one. On labeled traffic, where both tiers' scores and costs are
known for every prompt, that gives a curve:

- ``quality(x)``: mean score of the answer each prompt would get (the chosen tier's score);
- ``PGR(x) = (quality(x) - quality(all weak)) / (quality(all strong) - quality(all weak))``, the
  performance gap recovered;
- ``cost(x)``: total cost relative to sending everything to the strong tier.

Summaries: **APGR**, the area under PGR(x) for x from 0 to 1 (the random router's is 0.5 in
expectation); **CPT(p)**, the smallest strong share whose PGR reaches ``p`` ("call-performance
threshold"); and **AUROC** of the confidence against the label "the weak tier suffices".
Prompts with equal confidence are routed in random order: the curve takes its expected value,
linear between the ends of each run of ties, so a constant score gives the random router's line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade.errors import LabeledDataError
from cascade.training.traffic import LabeledExample

__all__ = [
    "CPT_TARGETS",
    "CostQualityCurve",
    "Outcomes",
    "RouterReport",
    "auroc",
    "average_ties",
    "cost_quality_curve",
    "oracle_confidence",
    "random_confidence",
    "report",
]

CPT_TARGETS = (0.5, 0.8, 0.95)
"""The PGR levels whose strong-call share and cost every report gives."""


@dataclass(frozen=True)
class Outcomes:
    """Per-prompt scores and costs of both tiers, as parallel float arrays."""

    weak_score: np.ndarray
    strong_score: np.ndarray
    weak_cost: np.ndarray
    strong_cost: np.ndarray

    @classmethod
    def from_examples(cls, examples: Sequence[LabeledExample]) -> Outcomes:
        """The outcomes recorded in labeled-traffic rows."""

        def column(name: str) -> np.ndarray:
            return np.array([getattr(e, name) for e in examples], dtype=np.float64)

        return cls(
            column("weak_score"),
            column("strong_score"),
            column("weak_cost_usd"),
            column("strong_cost_usd"),
        )

    @property
    def weak_suffices(self) -> np.ndarray:
        """The label: the weak tier's score is at least the strong tier's."""
        return np.asarray(self.weak_score >= self.strong_score)


@dataclass(frozen=True)
class CostQualityCurve:
    """The curve at every count of strong calls ``k = 0..n``; index ``k`` of each array."""

    strong_share: np.ndarray
    quality: np.ndarray
    pgr: np.ndarray
    cost_ratio: np.ndarray

    @property
    def apgr(self) -> float:
        """Area under PGR as the strong share goes from 0 to 1 (trapezoids)."""
        x, y = self.strong_share, self.pgr
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))

    def cpt(self, target: float) -> tuple[float, float]:
        """(strong share, cost ratio) at the first point whose PGR reaches ``target``."""
        reached = np.flatnonzero(self.pgr >= target - 1e-12)
        k = int(reached[0]) if len(reached) else len(self.pgr) - 1
        return float(self.strong_share[k]), float(self.cost_ratio[k])


@dataclass(frozen=True)
class RouterReport:
    """One router's summary on one data set."""

    auroc: float | None
    apgr: float
    cpt: dict[float, tuple[float, float]]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ``cpt`` keyed like ``"50%"`` with strong share and cost ratio."""
        return {
            "auroc": None if self.auroc is None else round(self.auroc, 4),
            "apgr": round(self.apgr, 4),
            "cpt": {
                f"{round(t * 100)}%": {"strong_share": round(s, 4), "cost_ratio": round(c, 4)}
                for t, (s, c) in self.cpt.items()
            },
        }


def cost_quality_curve(confidence: np.ndarray, outcomes: Outcomes) -> CostQualityCurve:
    """The curve of routing the lowest-``confidence`` prompts to the strong tier first.

    Raises :class:`LabeledDataError` when the data has no rows or both tiers score the same on
    average (then no gap exists to recover and PGR is undefined).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(confidence)
    if n == 0 or n != len(outcomes.weak_score):
        raise LabeledDataError(
            f"need one confidence per labeled row, got {n} for {len(outcomes.weak_score)} rows"
        )
    weak, strong = outcomes.weak_score, outcomes.strong_score
    gap = float(strong.mean() - weak.mean())
    if abs(gap) < 1e-12:
        raise LabeledDataError(
            "the weak and the strong tier have the same mean score on this data: there is no "
            "gap to recover, so PGR is undefined; evaluate on data where the tiers differ"
        )
    order = np.argsort(confidence, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((strong - weak)[order])])
    spend = np.concatenate([[0.0], np.cumsum((outcomes.strong_cost - outcomes.weak_cost)[order])])
    gain, spend = (average_ties(v, confidence[order]) for v in (gain, spend))
    quality = weak.mean() + gain / n
    cost_ratio = (outcomes.weak_cost.sum() + spend) / max(outcomes.strong_cost.sum(), 1e-300)
    return CostQualityCurve(
        strong_share=np.arange(n + 1) / n,
        quality=quality,
        pgr=(quality - weak.mean()) / gap,
        cost_ratio=cost_ratio,
    )


def average_ties(cumulative: np.ndarray, ordered_confidence: np.ndarray) -> np.ndarray:
    """Replace the points inside each run of equal confidences by the line between its ends.

    Tied prompts are equally likely to go first, so the expected curve is linear across the run.
    """
    out = cumulative.copy()
    n = len(ordered_confidence)
    start = 0
    while start < n:
        end = start
        while end + 1 < n and ordered_confidence[end + 1] == ordered_confidence[start]:
            end += 1
        if end > start:  # points start..end+1 of the cumulative sum bound the run
            steps = np.arange(end - start + 2) / (end - start + 1)
            out[start : end + 2] = cumulative[start] + steps * (
                cumulative[end + 1] - cumulative[start]
            )
        start = end + 1
    return out


def random_confidence(outcomes: Outcomes) -> np.ndarray:
    """The random router's expected curve: one constant confidence, so every order is as likely.

    Its PGR is exactly the strong share (APGR 0.5) and its AUROC 0.5.
    """
    return np.zeros(len(outcomes.weak_score), dtype=np.float64)


def oracle_confidence(outcomes: Outcomes) -> np.ndarray:
    """The best possible ordering: the prompts where the strong tier gains most go first."""
    return np.asarray(outcomes.weak_score - outcomes.strong_score, dtype=np.float64)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (ties count half).

    None when the labels are all one class.
    """
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    # average ranks over runs of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2
    wins = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(wins / (positives * negatives))


def report(confidence: np.ndarray, outcomes: Outcomes) -> RouterReport:
    """AUROC, APGR and CPT at :data:`CPT_TARGETS` for one confidence array."""
    curve = cost_quality_curve(confidence, outcomes)
    return RouterReport(
        auroc=auroc(outcomes.weak_suffices, confidence),
        apgr=curve.apgr,
        cpt={t: curve.cpt(t) for t in CPT_TARGETS},
    )
