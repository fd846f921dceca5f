"""Route and verify together: skip the cheap tier where the prompt scorer already expects it to
fail.

Trying the cheap tier on a prompt costs its answer, the witnesses and, when the verifier
rejects the answer, the strong answer too: ``cheap + witnesses + P(escalate) x strong``; going
straight up costs ``strong``. Reading P(escalate) as ``1 - p`` (``p``: the prompt scorer's
confidence that the cheap tier suffices), trying is expected to cost more than going straight up
when ``p <= (cheap + witnesses) / strong``: the **break-even** threshold, taken as the ratio of
the totals on the rows it is chosen on (the decision is made before the cheap tier answers, so
a row's own answer costs are unknown then). Quality matters too (a skipped prompt never keeps a
cheap answer, right or wrong) and the scorer's confidence need not be calibrated, so the skip
threshold is chosen among the break-even, "skip nothing" (verify alone) and the thresholds
that skip a share :data:`SKIP_SHARES` of the prompts, by APGR over total cost on rows that are
not reported (ties: the earlier, simpler option; "skip nothing" is the first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.training.verifier_eval import Router, VerifierReport, verifier_report
from cascade.training.verify_set import VerifySet

__all__ = [
    "SKIP_SHARES",
    "RouteChoice",
    "SkipOption",
    "choose_skip",
    "option_reports",
    "route_router",
]

SKIP_SHARES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
"""Shares of the choosing rows (lowest prompt confidence first) a skip threshold may skip."""


@dataclass(frozen=True)
class SkipOption:
    """One skip threshold and how it did on the rows it was chosen on."""

    label: str
    threshold: float | None
    """Go straight to the strong tier below this prompt confidence (None: never)."""
    skipped: float
    """Share of the choosing rows it skips."""
    cost_apgr: float
    """APGR over total cost of route+verify with it, on the choosing rows."""


@dataclass(frozen=True)
class RouteChoice:
    """The options tried, the one chosen and the break-even threshold."""

    break_even: float
    options: tuple[SkipOption, ...]
    chosen: SkipOption
    rows: int


def route_router(
    verifier_confidence: np.ndarray,
    prompt_confidence: np.ndarray,
    evidence_cost: np.ndarray,
    threshold: float | None,
) -> Router:
    """Route+verify: skip the prompts whose prompt confidence is below ``threshold``, verify
    the rest with ``verifier_confidence``."""
    skip = None if threshold is None else np.asarray(prompt_confidence) < threshold
    return Router(np.asarray(verifier_confidence, dtype=np.float64), evidence_cost, skip)


def choose_skip(
    data: VerifySet, verifier_confidence: np.ndarray, prompt_confidence: np.ndarray
) -> RouteChoice:
    """The skip threshold with the best APGR over total cost on ``data`` (see the module)."""
    outcomes = data.outcomes
    tried_cost = outcomes.weak_cost.sum() + data.evidence_cost.sum()
    break_even = float(tried_cost / max(outcomes.strong_cost.sum(), 1e-300))
    candidates: list[tuple[str, float | None]] = [("none", None), ("break-even", break_even)]
    ordered = np.sort(prompt_confidence)
    for share in SKIP_SHARES:
        # skip the lowest `share`: the threshold is the confidence just above them
        candidates.append((f"{share:.0%}", float(ordered[round(share * len(ordered))])))
    options = []
    for label, threshold in candidates:
        router = route_router(verifier_confidence, prompt_confidence, data.evidence_cost, threshold)
        report = verifier_report(router, data.good, outcomes)
        skipped = 0.0 if router.skip is None else float(router.skip.mean())
        options.append(SkipOption(label, threshold, skipped, report.cost_apgr))
    chosen = max(options, key=lambda o: (round(o.cost_apgr, 9), -options.index(o)))
    return RouteChoice(break_even, tuple(options), chosen, len(prompt_confidence))


def option_reports(
    choice: RouteChoice,
    data: VerifySet,
    verifier_confidence: np.ndarray,
    prompt_confidence: np.ndarray,
) -> list[tuple[SkipOption, float, VerifierReport]]:
    """Every option of ``choice`` on ``data``, other rows than those it was chosen on: the
    share it skips there and its report (shown beside the choice, never used to make it)."""
    reports = []
    for option in choice.options:
        router = route_router(
            verifier_confidence, prompt_confidence, data.evidence_cost, option.threshold
        )
        skipped = 0.0 if router.skip is None else float(router.skip.mean())
        reports.append((option, skipped, verifier_report(router, data.good, data.outcomes)))
    return reports
