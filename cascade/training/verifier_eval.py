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

Baselines: ``majority`` (the share of witnesses agreeing with the candidate's final answer,
witnesses paid), ``prompt-only`` (a prompt scorer, no witnesses), ``random`` and ``oracle``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cascade.model.answer_features import ANSWER_FEATURE_NAMES
from cascade.training.answers import AnswerRow
from cascade.training.evaluation import Outcomes, auroc, cost_quality_curve, oracle_confidence
from cascade.training.verifier_data import TRIO, featurize, first_witnesses, outcomes_of

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


def cost_curve(router: Router, outcomes: Outcomes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(escalated share, total cost / all-strong cost, PGR) at each count of escalations."""
    paid = outcomes.weak_cost + router.evidence_cost
    escalated = Outcomes(
        outcomes.weak_score, outcomes.strong_score, paid, paid + outcomes.strong_cost
    )
    curve = cost_quality_curve(router.confidence, escalated)
    total = curve.cost_ratio * escalated.strong_cost.sum()
    return curve.strong_share, total / max(outcomes.strong_cost.sum(), 1e-300), curve.pgr


def verifier_report(router: Router, good: np.ndarray, outcomes: Outcomes) -> VerifierReport:
    """AUROC against ``good``, APGR over the escalated share and over total cost."""
    share, cost, pgr = cost_curve(router, outcomes)
    apgr = float(np.sum((share[1:] - share[:-1]) * (pgr[1:] + pgr[:-1]) / 2))
    cost_at: dict[float, float | None] = {}
    for target in COST_TARGETS:
        reached = np.flatnonzero(pgr >= target - 1e-12)
        cost_at[target] = float(cost[reached[0]]) if len(reached) else None
    return VerifierReport(
        rows=len(router.confidence),
        auroc=auroc(good, router.confidence),
        auroc_suffices=auroc(outcomes.weak_suffices, router.confidence),
        apgr=apgr,
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
            n: verifier_report(Router(r.confidence[rows], r.evidence_cost[rows]), good[rows], part)
            for n, r in routers.items()
        }
    return result


def _arrays(outcomes: Outcomes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return outcomes.weak_score, outcomes.strong_score, outcomes.weak_cost, outcomes.strong_cost


def evaluate_verifier(
    rows: Sequence[AnswerRow],
    confidence_of_features: Callable[[np.ndarray], np.ndarray],
    *,
    witnesses: int = TRIO,
    prompt_confidence: np.ndarray | None = None,
) -> dict[str, dict[str, VerifierReport]]:
    """The verifier (given as a function of feature rows) and the baselines on ``rows``, with
    each candidate's first ``witnesses`` witnesses; overall (``"all"``) and per task.

    ``prompt_confidence``: a prompt scorer's confidence per row, for the prompt-only baseline.
    """
    examples = featurize(rows, first_witnesses(witnesses))
    outcomes = outcomes_of(rows, examples.row)
    routers = {
        "verifier": Router(confidence_of_features(examples.features), examples.evidence_cost),
        **baseline_routers(
            examples.features[:, ANSWER_FEATURE_NAMES.index("agree_share")],
            examples.evidence_cost,
            outcomes,
            None if prompt_confidence is None else prompt_confidence[examples.row],
        ),
    }
    tasks = [rows[int(i)].task for i in examples.row]
    return reports_by_group(routers, examples.good, outcomes, tasks)
