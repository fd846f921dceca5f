"""The verify cascade's evaluation, shared by ``cascade verify eval`` and ``cascade eval --kind
verifier``: the verifier beside route+verify, the majority vote, prompt-only, random and the
oracle, and which answer to keep when the answers agree."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade.training.verifier_eval import VerifierReport
    from cascade.training.verifier_study import AnswerStudy, RouteStudy, VerifierStudy

DEFAULT_SCORER = "prompt-features-v1"
_BATCH = 512
_ROUTERS = ("verifier", "route+verify", "majority", "prompt-only", "random", "oracle")
VERIFIER_OPTIONS = ("split", "tasks", "witnesses", "scorer", "choose_on", "per_task")
"""The options only a verifier's evaluation reads (``cascade eval`` refuses them for a scorer)."""


def add_arguments(parser: argparse.ArgumentParser, *, note: str = "") -> None:
    """The verifier evaluation's options (``--data``, ``--model`` and ``--json`` are the
    caller's)."""
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument(
        "--split",
        choices=("holdout", "selection"),
        help=f"the verifier manifest's tasks of this split{note}",
    )
    rows.add_argument("--tasks", nargs="+", metavar="TASK", help=f"only rows of these tasks{note}")
    parser.add_argument(
        "--witnesses",
        type=int,
        metavar="N",
        help="witnesses per candidate: the first N (default: 2 of an answers file's "
        f"other_cheap, all of a traffic row's answers){note}",
    )
    parser.add_argument(
        "--scorer",
        metavar="NAME|DIR",
        help=f"the prompt scorer of prompt-only and route+verify (default: {DEFAULT_SCORER}){note}",
    )
    parser.add_argument(
        "--choose-on",
        nargs="+",
        metavar="TASK",
        help="tasks whose rows choose route+verify's skip threshold (default: the verifier "
        f"manifest's selection tasks){note}",
    )
    parser.add_argument(
        "--per-task",
        action="store_true",
        help=f"print every router's full numbers per task, not only APGR and APGR${note}",
    )


def evaluate(ns: argparse.Namespace, prog: str) -> int:
    """Run the evaluation ``ns`` asks for and print it (JSON with ``--json``)."""
    import numpy as np

    from cascade.model.scorer import OnnxScorer
    from cascade.model.verifier import OnnxVerifier
    from cascade.training.verifier_study import study_verifier

    if ns.witnesses is not None and ns.witnesses < 1:
        print(f"{prog}: error: --witnesses must be >= 1", file=sys.stderr)
        return 2
    verifier = OnnxVerifier(ns.model, device="cpu")
    metrics = verifier.manifest.metrics
    tasks = ns.tasks
    if ns.split is not None:
        tasks = metrics.holdout_tasks if ns.split == "holdout" else metrics.selection_tasks
        if not tasks:
            print(f"{prog}: error: {ns.model} records no {ns.split} tasks; name them with "
                  "--tasks", file=sys.stderr)  # fmt: skip
            return 2
    scorer = OnnxScorer(ns.scorer or DEFAULT_SCORER, device="cpu")

    def score_prompts(prompts: Any) -> Any:
        batches = (
            scorer.score_batch(prompts[i : i + _BATCH]) for i in range(0, len(prompts), _BATCH)
        )
        return np.array([s for batch in batches for s in batch], dtype=np.float64)

    study = study_verifier(
        ns.data,
        verifier.confidence_of_features,
        score_prompts,
        tasks=tasks,
        choose_on=ns.choose_on or metrics.selection_tasks or (),
        witnesses=ns.witnesses,
    )
    if ns.json:
        print(json.dumps(_as_dict(ns, study), indent=2))
    else:
        _print(ns, study)
    return 0


def _as_dict(ns: argparse.Namespace, study: VerifierStudy) -> dict[str, Any]:
    route = study.route
    answers = study.answers
    return {
        "model": str(ns.model),
        "scorer": ns.scorer or DEFAULT_SCORER,
        "data": [str(p) for p in ns.data],
        "split": ns.split or ("tasks" if ns.tasks else "all rows"),
        "witnesses": ns.witnesses,
        "rows": study.rows,
        "groups": {g: {n: r.as_dict() for n, r in by.items()} for g, by in study.reports.items()},
        "route": None
        if route is None
        else {
            "chosen_on": list(route.chosen_on),
            "chosen_on_reported_rows": route.chosen_on_reported_rows,
            "break_even": round(route.choice.break_even, 4),
            "chosen": route.choice.chosen.label,
            "threshold": route.choice.chosen.threshold,
            "skipped": round(route.skipped, 4),
            "options": [
                {
                    "option": o.label,
                    "threshold": None if o.threshold is None else round(o.threshold, 6),
                    "choosing": {
                        "skipped": round(o.skipped, 4),
                        "cost_apgr": round(o.cost_apgr, 4),
                    },
                    "reported": {"skipped": round(skipped, 4), **r.as_dict()},
                }
                for o, skipped, r in route.options
            ],
        },
        "route_note": study.route_note,
        "answers": None
        if answers is None
        else {
            g: {
                **c.as_dict(),
                "cascade": {n: r.as_dict() for n, r in answers.cascade.get(g, {}).items()},
            }
            for g, c in answers.choices.items()
        },
    }


def _print(ns: argparse.Namespace, study: VerifierStudy) -> None:
    """The study as tables (from the exact numbers: the JSON rounds them)."""
    witnesses = ns.witnesses or "2 (answers files) or all (traffic)"
    split = ns.split or ("tasks" if ns.tasks else "all rows")
    print(
        f"{ns.model} on {split}: {study.rows} rows, witnesses per candidate: {witnesses} "
        "(always paid by verifier, route+verify and majority)"
    )
    columns = ("rows", "AUROC", "AUROC>", "APGR", "APGR$", "$@80%", "$@95%")
    for group, by_router in study.reports.items():
        if group != "all" and not ns.per_task:
            continue
        print(group)
        print(f"  {'router':12} " + " ".join(f"{c:>6}" for c in columns))
        for name, r in by_router.items():
            cells = (r.auroc, r.auroc_suffices, r.apgr, r.cost_apgr)
            roc = " ".join(_cell(c, "6.3f") for c in cells)
            print(f"  {name:12} {r.rows:6d} {roc} {_costs(r)}")
    print("per task, APGR / APGR$:")
    names = [n for n in _ROUTERS if n in study.reports["all"]]
    print(f"  {'task':26}" + "".join(f"{n:>14}" for n in names))
    for group, by_router in study.reports.items():
        pairs = "".join(f"{by_router[n].apgr:8.3f}/{by_router[n].cost_apgr:.3f}" for n in names)
        print(f"  {group[:26]:26}{pairs}")
    print(
        "AUROC: against 'the candidate is correct'; AUROC>: against 'weak score >= strong "
        "score'. APGR: over the share sent to the strong tier. APGR$: over total cost / "
        "all-strong cost. $@p: total cost / all-strong cost where the quality gap recovered "
        "reaches p."
    )
    print()
    print(study.route_note)
    if study.route is not None:
        _print_route(study.route)
    if study.answers is not None:
        _print_answers(study.answers)


def _costs(report: VerifierReport) -> str:
    return " ".join(_cell(c, "6.1%") for c in report.cost_at.values())


def _print_route(route: RouteStudy) -> None:
    choice = route.choice
    print(
        "  go straight to the strong tier when the prompt scorer's confidence is below the skip "
        "threshold; else try the cheap tier, verify, maybe escalate. Trying costs cheap + "
        "witnesses + P(escalate) x strong, going up costs strong: with P(escalate) = 1 - "
        f"confidence, trying costs more below the break-even {choice.break_even:.4f}."
    )
    print(
        f"  chosen on {', '.join(route.chosen_on)} by APGR$: {choice.chosen.label} (threshold "
        f"{_cell(choice.chosen.threshold, '.4f')}), skipping {route.skipped:.1%} of these rows"
    )
    print(f"  {'option':11} {'threshold':>9} {'skipped':>8} {'APGR$':>6} | here: "
          f"{'skipped':>7} {'APGR':>6} {'APGR$':>6} {'$@80%':>6} {'$@95%':>6}")  # fmt: skip
    for option, skipped, r in route.options:
        mark = "*" if option == choice.chosen else " "
        print(
            f" {mark}{option.label:11} {_cell(option.threshold, '9.4f')} "
            f"{option.skipped:8.1%} {option.cost_apgr:6.3f} |       "
            f"{skipped:7.1%} {r.apgr:6.3f} {r.cost_apgr:6.3f} {_costs(r)}"
        )
    print("  (* chosen on the choosing rows; the columns after | are shown, never chosen on)")


def _print_answers(answers: AnswerStudy) -> None:
    print()
    print(
        "which answer to keep: the first (the candidate) or the majority's final answer among "
        "the candidate and its witnesses (ties: the first). The witnesses are other models, "
        "not samples of the candidate's model, and may be better or worse ones: 'member' (one "
        "voter's answer, picked without looking) against 'vote' (the majority, ties to each "
        "voter in turn) measures the vote itself. Accuracy = mean score; in the cascade the "
        "verifier judges the answer it keeps."
    )
    print(f"  {'task':26} {'rows':>5} {'first':>6} {'major.':>6} {'member':>6} {'vote':>6} "
          f"{'changed':>7} | cascade APGR$ first/major.  $@80% first/major.  $@95% "
          "first/major.")  # fmt: skip
    for group, a in answers.choices.items():
        row = (
            f"  {group[:26]:26} {a.rows:5d} {a.first_accuracy:6.3f} {a.majority_accuracy:6.3f} "
            f"{a.member_accuracy:6.3f} {a.vote_accuracy:6.3f} {a.changed:7.1%} |       "
        )
        if group not in answers.cascade:  # no quality gap on this task: no cascade to measure
            print(row + "     -")
            continue
        first, major = answers.cascade[group]["first"], answers.cascade[group]["majority"]
        at = [
            f"{_cell(first.cost_at[p], '6.1%')}/{_cell(major.cost_at[p], '6.1%')}"
            for p in (0.8, 0.95)
        ]
        print(row + f"{first.cost_apgr:6.3f}/{major.cost_apgr:.3f}  {at[0]:>18} {at[1]:>18}")


def _cell(value: float | None, spec: str) -> str:
    width = int(spec.split(".", maxsplit=1)[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)
