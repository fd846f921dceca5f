"""Everything ``cascade eval --kind verifier`` measures, in one call.

On the reported rows: the verifier beside route+verify, the plain majority vote, prompt-only,
random and the oracle (:mod:`cascade.training.verifier_eval`), overall and per task. Route+verify
takes its skip threshold from other rows, the *choosing* tasks (:mod:`cascade.training.
route_verify`); when those are among the reported rows, the study says so, because a number
chosen on is not a result. On answers files (where the witnesses' scores are known): the first
answer against the majority's (:mod:`cascade.training.majority_answer`), alone and in the cascade.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.training.majority_answer import AnswerChoice, compare_answers, majority_rows
from cascade.training.route_verify import (
    RouteChoice,
    SkipOption,
    choose_skip,
    option_reports,
    route_router,
)
from cascade.training.verifier_data import TRIO
from cascade.training.verifier_eval import (
    Router,
    VerifierReport,
    evaluate_verifier,
    reports_by_group,
    verifier_report,
)
from cascade.training.verify_set import VerifySet, load_verify_set, verify_set_of

__all__ = ["AnswerStudy", "RouteStudy", "VerifierStudy", "study_verifier"]

Confidence = Callable[[np.ndarray], np.ndarray]
"""A verifier: features of candidates → P(good enough)."""
PromptScores = Callable[[Sequence[str]], np.ndarray]
"""A prompt scorer: prompts → P(the cheap tier suffices)."""


@dataclass(frozen=True)
class RouteStudy:
    """Route+verify: the skip threshold chosen on the choosing tasks, and every option's
    numbers on the reported rows (for the record: only the choosing rows chose)."""

    choice: RouteChoice
    chosen_on: tuple[str, ...]
    skipped: float
    """Share of the reported rows the chosen threshold skips."""
    options: tuple[tuple[SkipOption, float, VerifierReport], ...]
    """Each option, the share of the reported rows it skips, its report on them."""
    chosen_on_reported_rows: bool


@dataclass(frozen=True)
class AnswerStudy:
    """First against majority answer: alone, and kept by the verify cascade."""

    choices: dict[str, AnswerChoice]
    cascade: dict[str, dict[str, VerifierReport]]
    """Per group: ``first`` (the verifier judges and keeps the candidate) and ``majority`` (it
    judges and keeps the majority's answer, the other answers as witnesses)."""


@dataclass(frozen=True)
class VerifierStudy:
    """The reports, route+verify (or why it is absent) and the answer choice."""

    rows: int
    reports: dict[str, dict[str, VerifierReport]]
    route: RouteStudy | None
    route_note: str
    answers: AnswerStudy | None


def study_verifier(
    paths: Sequence[Path],
    confidence: Confidence,
    score_prompts: PromptScores,
    *,
    tasks: Collection[str] | None,
    choose_on: Collection[str],
    witnesses: int | None,
) -> VerifierStudy:
    """Measure a verifier on ``paths`` (rows of ``tasks``; None: all), route+verify with a skip
    threshold chosen on the ``choose_on`` tasks' rows of the same files."""
    wanted = None if tasks is None else set(tasks) | set(choose_on)
    everything = load_verify_set(paths, tasks=wanted, witnesses=witnesses)
    data = everything if tasks is None else everything.of_tasks(tasks)
    choosing = everything.of_tasks(choose_on)
    verifier_confidence = confidence(data.features)
    prompt_confidence = score_prompts(data.prompts)
    route, router = None, None
    if len(choosing) == 0:
        note = (
            "route+verify: not measured: no rows of the choosing tasks "
            f"({', '.join(sorted(choose_on)) or 'none named'}) to choose its skip threshold on"
        )
    else:
        choice = choose_skip(
            choosing, confidence(choosing.features), score_prompts(choosing.prompts)
        )
        router = route_router(
            verifier_confidence, prompt_confidence, data.evidence_cost, choice.chosen.threshold
        )
        overlap = bool(set(choose_on) & set(data.tasks))
        route = RouteStudy(
            choice=choice,
            chosen_on=tuple(sorted(set(choosing.tasks))),
            skipped=0.0 if router.skip is None else float(router.skip.mean()),
            options=tuple(option_reports(choice, data, verifier_confidence, prompt_confidence)),
            chosen_on_reported_rows=overlap,
        )
        note = (
            "route+verify: its skip threshold was chosen on these rows: not a result"
            if overlap
            else "route+verify: skip threshold chosen on other tasks than those reported"
        )
    reports = evaluate_verifier(
        data,
        verifier_confidence,
        prompt_confidence=prompt_confidence,
        route=router,
    )
    answers = None
    if data.rows is not None:
        answers = _answer_study(data, confidence, TRIO if witnesses is None else witnesses)
    return VerifierStudy(len(data), reports, route, note, answers)


def _answer_study(data: VerifySet, confidence: Confidence, witnesses: int) -> AnswerStudy:
    assert data.rows is not None
    voted_rows = majority_rows(data.rows, witnesses)
    voted = verify_set_of(voted_rows, witnesses)
    # the same answers are paid either way: the evidence is what is paid beyond the candidate
    paid = voted.outcomes.weak_cost + voted.evidence_cost - data.outcomes.weak_cost
    first = Router(confidence(data.features), data.evidence_cost)
    majority = Router(confidence(voted.features), paid)
    groups = np.asarray(data.tasks)
    cascade: dict[str, dict[str, VerifierReport]] = {}
    for name, reports in reports_by_group(
        {"first": first}, data.good, data.outcomes, data.tasks
    ).items():
        rows = np.ones(len(data), dtype=bool) if name == "all" else groups == name
        part = data.where(rows)
        cascade[name] = {
            **reports,
            "majority": verifier_report(
                majority.where(rows),
                voted.good[rows],
                part.outcomes,
                voted.outcomes.weak_score[rows],
            ),
        }
    return AnswerStudy(compare_answers(data.rows, voted_rows, witnesses), cascade)
