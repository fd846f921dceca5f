"""How much a verifier saves: the route-then-verify cascade on answers with known outcomes.

The cascade pays the cheap tier and the witnesses for every prompt, accepts the cheap answer when
the confidence clears a threshold and otherwise pays the strong tier too. Sweeping the threshold
gives PGR (performance gap recovered, :mod:`cascade.training.evaluation`) against the share of
prompts escalated, and against **total cost** (cheap + witnesses + strong where escalated, over
the cost of sending everything to the strong tier). Summaries per router:

- ``auroc``: of the confidence against "the candidate is correct", and ``auroc_suffices``
  against "the candidate is at least as good as the strong answer" (the two labels a verifier
  may be trained on; its manifest says which);
- ``apgr``: area under PGR over the escalated share (the project's usual APGR; random 0.5);
- ``cost_apgr``: area under PGR over total cost from 0 to the all-strong cost, PGR 0 below
  the cascade's cheapest point: evidence that costs money has to earn it here;
- ``cost_at``: the total cost (share of all-strong) at which PGR first reaches 80% and 95%.

``route+verify`` (:mod:`cascade.training.route_verify`) sends the prompts the prompt scorer
expects the cheap tier to fail straight to the strong tier, paying neither the cheap answer nor
the witnesses for them. Baselines: ``majority`` (the share of witnesses agreeing with the
candidate's final answer, witnesses paid), ``prompt-only`` (a prompt scorer, no witnesses),
``random`` and ``oracle``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade.errors import LabeledDataError
from cascade.training.evaluation import Outcomes, auroc, average_ties, oracle_confidence
from cascade.training.verify_set import VerifySet

__all__ = [
    "COST_TARGETS",
    "Router",
    "VerifierReport",
    "baseline_routers",
    "cost_curve",
    "evaluate_verifier",
    "reports_by_group",
    "verifier_report",
]

COST_TARGETS = (0.8, 0.95)
"""PGR levels whose total cost every report gives."""


@dataclass(frozen=True)
class Router:
    """A confidence per prompt and what its evidence costs per prompt (0: none)."""

    confidence: np.ndarray
    evidence_cost: np.ndarray
    skip: np.ndarray | None = None
    """Prompts sent straight to the strong tier before the cheap one is tried: neither the cheap
    answer nor the evidence is paid for them (route+verify); None: every prompt is tried."""

    def where(self, rows: np.ndarray) -> Router:
        """The router on the prompts where ``rows`` (a boolean mask) is true."""
        skip = None if self.skip is None else self.skip[rows]
        return Router(self.confidence[rows], self.evidence_cost[rows], skip)


@dataclass(frozen=True)
class VerifierReport:
    """One router's numbers on one set of prompts."""

    rows: int
    auroc: float | None
    auroc_suffices: float | None
    apgr: float
    cost_apgr: float
    cost_at: dict[float, float | None]
    """Total cost / all-strong cost where PGR first reaches each target (None: never)."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, rounded to 4 digits."""
        return {
            "rows": self.rows,
            "auroc": None if self.auroc is None else round(self.auroc, 4),
            "auroc_suffices": None
            if self.auroc_suffices is None
            else round(self.auroc_suffices, 4),
            "apgr": round(self.apgr, 4),
            "cost_apgr": round(self.cost_apgr, 4),
            "cost_at": {
                f"{round(t * 100)}%": None if c is None else round(c, 4)
                for t, c in self.cost_at.items()
            },
        }


def cost_curve(
    router: Router, outcomes: Outcomes, accepted_score: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(strong share, total cost / all-strong cost, PGR) at each count of escalations.

    Tried prompts pay the cheap answer and the evidence, escalated ones the strong answer too;
    skipped prompts pay the strong answer alone. ``accepted_score``: the score of the answer kept
    when the cascade accepts (default: the candidate's); PGR is measured against the candidate
    and the strong tier either way, so two answer choices compare on one scale.
    """
    n = len(router.confidence)
    weak, strong = outcomes.weak_score, outcomes.strong_score
    gap = float(strong.mean() - weak.mean())
    if n == 0 or abs(gap) < 1e-12:
        raise LabeledDataError(
            f"no quality gap to recover on these {n} rows (the candidate and the strong tier "
            "score the same on average): PGR is undefined"
        )
    kept = weak if accepted_score is None else np.asarray(accepted_score, dtype=np.float64)
    skip = np.zeros(n, dtype=bool) if router.skip is None else np.asarray(router.skip, bool)
    tried = ~skip
    confidence = router.confidence[tried]
    order = np.argsort(confidence, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((strong - kept)[tried][order])])
    spend = np.concatenate([[0.0], np.cumsum(outcomes.strong_cost[tried][order])])
    gain, spend = (average_ties(v, confidence[order]) for v in (gain, spend))
    quality = (strong[skip].sum() + kept[tried].sum() + gain) / n
    paid = outcomes.strong_cost[skip].sum()
    paid += (outcomes.weak_cost + router.evidence_cost)[tried].sum()
    cost = (paid + spend) / max(outcomes.strong_cost.sum(), 1e-300)
    share = (skip.sum() + np.arange(tried.sum() + 1)) / n
    return share, cost, (quality - weak.mean()) / gap


def verifier_report(
    router: Router,
    good: np.ndarray,
    outcomes: Outcomes,
    accepted_score: np.ndarray | None = None,
) -> VerifierReport:
    """AUROC against ``good``, APGR over the escalated share and over total cost.

    Skipped prompts rank below every tried one (they go to the strong tier first), and both
    areas count PGR 0 below the cascade's cheapest point.
    """
    share, cost, pgr = cost_curve(router, outcomes, accepted_score)
    ranked = router.confidence
    if router.skip is not None:
        ranked = np.where(router.skip, -np.inf, router.confidence)
    cost_at: dict[float, float | None] = {}
    for target in COST_TARGETS:
        reached = np.flatnonzero(pgr >= target - 1e-12)
        cost_at[target] = float(cost[reached[0]]) if len(reached) else None
    return VerifierReport(
        rows=len(router.confidence),
        auroc=auroc(good, ranked),
        auroc_suffices=auroc(outcomes.weak_suffices, ranked),
        apgr=_area_over_budget(share, pgr),
        cost_apgr=_area_over_budget(cost, pgr),
        cost_at=cost_at,
    )


def _area_over_budget(cost: np.ndarray, pgr: np.ndarray) -> float:
    """Area under PGR(cost) for cost in [0, 1]: 0 before the cheapest point, the last PGR
    after the dearest, cut at 1 (the all-strong budget)."""
    x = np.concatenate([[0.0, cost[0]], cost, [max(1.0, cost[-1])]])
    y = np.concatenate([[0.0, 0.0], pgr, [pgr[-1]]])
    inside = x <= 1.0
    if not inside.all():  # cut the segment that crosses the budget at 1
        j = int(np.argmax(~inside))
        y_at_1 = np.interp(1.0, x[j - 1 : j + 1], y[j - 1 : j + 1])
        x, y = np.append(x[:j], 1.0), np.append(y[:j], y_at_1)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def baseline_routers(
    agreement: np.ndarray,
    evidence_cost: np.ndarray,
    outcomes: Outcomes,
    prompt_confidence: np.ndarray | None,
) -> dict[str, Router]:
    """The baselines beside a verifier: majority agreement, prompt-only, random, oracle."""
    free = np.zeros(len(agreement))
    routers = {"majority": Router(np.asarray(agreement, dtype=np.float64), evidence_cost)}
    if prompt_confidence is not None:
        routers["prompt-only"] = Router(np.asarray(prompt_confidence, dtype=np.float64), free)
    routers["random"] = Router(free, free)
    routers["oracle"] = Router(oracle_confidence(outcomes), free)
    return routers


def reports_by_group(
    routers: dict[str, Router],
    good: np.ndarray,
    outcomes: Outcomes,
    groups: Sequence[str],
) -> dict[str, dict[str, VerifierReport]]:
    """Reports of every router on all rows (``"all"``) and on each group's rows."""
    labels = np.asarray(groups)
    result = {"all": {n: verifier_report(r, good, outcomes) for n, r in routers.items()}}
    for group in sorted(set(groups)):
        rows = labels == group
        part = Outcomes(*(np.asarray(a)[rows] for a in _arrays(outcomes)))
        if abs(part.strong_score.mean() - part.weak_score.mean()) < 1e-12:
            continue  # no gap to recover: PGR is undefined on this group
        result[group] = {
            n: verifier_report(r.where(rows), good[rows], part) for n, r in routers.items()
        }
    return result


def _arrays(outcomes: Outcomes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return outcomes.weak_score, outcomes.strong_score, outcomes.weak_cost, outcomes.strong_cost


def evaluate_verifier(
    data: VerifySet,
    verifier_confidence: np.ndarray,
    *,
    prompt_confidence: np.ndarray | None = None,
    route: Router | None = None,
) -> dict[str, dict[str, VerifierReport]]:
    """The verifier (its confidence on each row of ``data``), route+verify (``route``, when
    given) and the baselines, overall (``"all"``) and per task.

    ``prompt_confidence``: a prompt scorer's confidence per row, for the prompt-only baseline.
    """
    routers = {"verifier": Router(np.asarray(verifier_confidence), data.evidence_cost)}
    if route is not None:
        routers["route+verify"] = route
    routers.update(
        baseline_routers(data.agreement, data.evidence_cost, data.outcomes, prompt_confidence)
    )
    return reports_by_group(routers, data.good, data.outcomes, data.tasks)
