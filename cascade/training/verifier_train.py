"""Train the verifier on answers, choosing its settings on other tasks, and write its folder.

``cascade verify train --data ANSWERS... --out router_models/NAME`` splits the rows **by task**
into three parts that never mix:

- *fit* (:data:`FIT_TASKS`): every candidate setting in :data:`CHOICES` is fitted here;
- *selection* (:data:`SELECTION_TASKS`): the setting (label, witness sampling, model family and
  regularization) with the best mean cost-axis APGR (:mod:`cascade.training.verifier_eval`) over
  one, two and three witnesses here is chosen (ties: the earlier, simpler one);
- *holdout* (:data:`HOLDOUT_TASKS`): never used to fit or choose; the manifest's ``holdout_*``
  numbers are measured here, with the trio's two witnesses.

The shipped model is the chosen one as fitted on the fit tasks (no refit), exported to ONNX,
checked against scikit-learn on messy answers, and written with its manifest. Rows of other
tasks are not read. Deterministic: the same files and seed give a byte-identical ``model.onnx``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.errors import TrainingError
from cascade.model.answer_features import (
    ANSWER_FEATURE_NAMES,
    ANSWER_FEATURES_VERSION,
    answer_features,
)
from cascade.model.manifest import (
    ANSWER_PREPROCESSING,
    FORMAT_VERSION,
    CalibrationPoint,
    Manifest,
    Metrics,
    ModelInput,
    ModelOutput,
    Parity,
)
from cascade.training.answers import AnswerRow, describe_file, load_answers
from cascade.training.train import PARITY_TEXTS, PARITY_TOLERANCE, _toolchain
from cascade.training.verifier_data import (
    TRIO,
    VerifierSet,
    featurize,
    first_witnesses,
    outcomes_of,
    trio_and_random,
)
from cascade.training.verifier_eval import Router, VerifierReport, verifier_report
from cascade.training.verifier_model import (
    Choice,
    LayeredVerifier,
    export_onnx,
    fit_verifier,
    onnx_confidence,
    reference_confidence,
)

__all__ = [
    "CHOICES",
    "FIT_TASKS",
    "HOLDOUT_TASKS",
    "LABEL_DEFINITIONS",
    "SELECTION_TASKS",
    "Selection",
    "VerifierTraining",
    "train_verifier",
]

LABEL_DEFINITIONS = {
    "correct": "1 when the candidate (weak) answer's score is 1 (it is correct), else 0; the "
    "model outputs P(label = 1)",
    "suffices": "1 when the candidate (weak) answer's score is >= the strong answer's (the "
    "candidate is good enough: escalating would not improve it), else 0; the model outputs "
    "P(label = 1)",
}
"""The two labels a setting may be fitted on (:attr:`Choice.target`); the manifest says which."""
_MMLU_PRO = "mmlu_pro:"
FIT_TASKS = (
    "gsm8k",
    *(_MMLU_PRO + c for c in ("biology", "business", "chemistry", "history", "law")),
    _MMLU_PRO + "psychology",
)
SELECTION_TASKS = tuple(
    _MMLU_PRO + c for c in ("economics", "engineering", "philosophy", "physics")
)
HOLDOUT_TASKS = (
    "cruxeval_o",
    "math_l5",
    *(_MMLU_PRO + c for c in ("computer science", "health", "math", "other")),
)
CHOICES = tuple(
    choice
    for target in ("correct", "suffices")
    for sampling in ("trio", "random")
    for choice in (
        Choice("logistic", 0.01, sampling, target),
        Choice("logistic", 1.0, sampling, target),
        Choice("mlp", 1.0, sampling, target),
        Choice("mlp", 0.01, sampling, target),
    )
)
"""Candidate settings: label, witness sampling, model; simplest first within each group."""
SELECTION_WITNESSES = (1, 2, 3)


@dataclass(frozen=True)
class Selection:
    """One candidate setting's cost-axis APGR on the selection tasks, by number of witnesses."""

    choice: Choice
    cost_apgr: dict[int, float]

    @property
    def criterion(self) -> float:
        """What is maximized: the mean over the witness counts."""
        return round(float(np.mean(list(self.cost_apgr.values()))), 4)


@dataclass(frozen=True)
class VerifierTraining:
    """What :func:`train_verifier` wrote and how it chose."""

    manifest: Manifest
    chosen: Choice
    selection: tuple[Selection, ...]


def train_verifier(
    data: Sequence[Path],
    out_dir: Path,
    *,
    name: str,
    fit_tasks: Sequence[str] = FIT_TASKS,
    selection_tasks: Sequence[str] = SELECTION_TASKS,
    holdout_tasks: Sequence[str] = HOLDOUT_TASKS,
    choices: Sequence[Choice] = CHOICES,
    seed: int = 0,
    created_by: str | None = None,
) -> VerifierTraining:
    """Fit every choice on ``fit_tasks``, choose on ``selection_tasks``, measure on
    ``holdout_tasks``, export and write ``out_dir``. Raises :class:`TrainingError` when the
    splits overlap or miss from the data, or ONNX and scikit-learn disagree."""
    splits = {"fit": fit_tasks, "selection": selection_tasks, "holdout": holdout_tasks}
    rows = load_answers(data, tasks={t for tasks in splits.values() for t in tasks})
    parts = _split(rows, splits)
    fit = featurize(parts["fit"], first_witnesses(TRIO))
    fit_random = featurize(parts["fit"], trio_and_random(seed))
    selection_sets = {
        k: featurize(parts["selection"], first_witnesses(k)) for k in SELECTION_WITNESSES
    }
    fit_outcomes = outcomes_of(parts["fit"])
    suffices = fit_outcomes.weak_score >= fit_outcomes.strong_score
    fitted: list[tuple[Selection, LayeredVerifier]] = []
    for choice in choices:
        examples = fit if choice.sampling == "trio" else fit_random
        labels = examples.good if choice.target == "correct" else suffices[examples.row]
        model = fit_verifier(examples.features, labels, choice, seed=seed)
        cost_apgr = {
            k: round(_report(model.confidence, s, parts["selection"]).cost_apgr, 4)
            for k, s in selection_sets.items()
        }
        fitted.append((Selection(choice, cost_apgr), model))
    best = max(fitted, key=lambda f: f[0].criterion)  # max keeps the first of equals
    chosen, model = best[0].choice, best[1]
    onnx_bytes = export_onnx(model)
    parity = _parity(model, onnx_bytes, [fit, selection_sets[TRIO]])
    holdout = featurize(parts["holdout"], first_witnesses(TRIO))
    selected = selection_sets[TRIO]

    def measure(s: VerifierSet, part: list[AnswerRow]) -> tuple[float | None, float, float]:
        report = _report(lambda f: onnx_confidence(onnx_bytes, f), s, part)
        roc = report.auroc if chosen.target == "correct" else report.auroc_suffices
        return _round(roc), round(report.apgr, 4), round(report.cost_apgr, 4)

    hold_auroc, hold_apgr, hold_cost_apgr = measure(holdout, parts["holdout"])
    sel_auroc, sel_apgr, _ = measure(selected, parts["selection"])
    fit_confidence = onnx_confidence(onnx_bytes, fit.features)
    manifest = Manifest(
        name=name,
        format_version=FORMAT_VERSION,
        file="model.onnx",
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        opset=17,
        feature_version=ANSWER_FEATURES_VERSION,
        input=ModelInput(
            "features", "float", (None, len(ANSWER_FEATURE_NAMES)), ANSWER_PREPROCESSING
        ),
        output=ModelOutput("probabilities", 1),
        label=LABEL_DEFINITIONS[chosen.target],
        training_data=tuple(describe_file(Path(p)) for p in data),
        # share of fitting candidates (with the trio's witnesses) each threshold accepts
        calibration=tuple(
            CalibrationPoint(t, round(float(np.mean(fit_confidence >= t)), 4))
            for t in (round(0.05 * i, 2) for i in range(1, 20))
        ),
        metrics=Metrics(
            holdout_tasks=tuple(sorted(holdout_tasks)),
            holdout_rows=len(parts["holdout"]),
            holdout_auroc=hold_auroc,
            dev_files=(),
            dev_rows=0,
            dev_auroc=None,
            base_rate_train=_label_rate(fit, parts["fit"], chosen),
            base_rate_holdout=_label_rate(holdout, parts["holdout"], chosen),
            base_rate_dev=None,
            holdout_apgr=hold_apgr,
            selection_tasks=tuple(sorted(selection_tasks)),
            selection_rows=len(parts["selection"]),
            selection_auroc=sel_auroc,
            selection_apgr=sel_apgr,
            holdout_cost_apgr=hold_cost_apgr,
            witnesses=TRIO,
        ),
        parity=parity,
        created_by=created_by
        or f"cascade.training.verifier_train.train_verifier(name={name!r}, seed={seed})",
        toolchain=_toolchain(),
        kind="verifier",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / manifest.file).write_bytes(onnx_bytes)
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return VerifierTraining(manifest, chosen, tuple(s for s, _ in fitted))


def _split(rows: list[AnswerRow], splits: dict[str, Sequence[str]]) -> dict[str, list[AnswerRow]]:
    owner: dict[str, str] = {}
    for part, tasks in splits.items():
        for task in tasks:
            if task in owner:
                raise TrainingError(
                    f"task {task!r} is in both the {owner[task]} and the {part} tasks; "
                    "each task belongs to one split"
                )
            owner[task] = part
    present = {r.task for r in rows}
    if missing := sorted(set(owner) - present):
        raise TrainingError(
            f"tasks not in the data: {', '.join(missing)}; name tasks the answers files have "
            f"(their 'task' field: {', '.join(sorted(present))})"
        )
    return {part: [r for r in rows if owner[r.task] == part] for part in splits}


def _report(
    confidence: Callable[[np.ndarray], np.ndarray], examples: VerifierSet, rows: list[AnswerRow]
) -> VerifierReport:
    router = Router(confidence(examples.features), examples.evidence_cost)
    return verifier_report(router, examples.good, outcomes_of(rows, examples.row))


def _parity(model: LayeredVerifier, onnx_bytes: bytes, seen: list[VerifierSet]) -> Parity:
    """ONNX against scikit-learn on messy answers and on real examples; refuses a mismatch."""
    texts = PARITY_TEXTS
    messy = [
        answer_features(
            texts[(i + 3) % len(texts)],
            texts[i],
            [texts[(i + 1) % len(texts)], texts[(i + 2) % len(texts)]][: 1 + i % 3],
            [-0.01 * i, -float(i)] if i % 2 else None,
        )
        for i in range(len(texts))
    ]
    features = np.vstack([np.array(messy), *(s.features[:200] for s in seen)])
    diff = np.abs(reference_confidence(model, features) - onnx_confidence(onnx_bytes, features))
    if diff.max() > PARITY_TOLERANCE:
        raise TrainingError(
            f"ONNX and scikit-learn disagree by {diff.max():.2e} (> {PARITY_TOLERANCE}) on "
            f"example {int(diff.argmax())}; the export is wrong, not writing the model"
        )
    return Parity(float(f"{diff.max():.3g}"), len(features))


def _label_rate(examples: VerifierSet, rows: list[AnswerRow], choice: Choice) -> float:
    """Share of ``examples`` whose label (the chosen target) is 1."""
    if choice.target == "correct":
        return round(float(examples.good.mean()), 4)
    return round(float(outcomes_of(rows, examples.row).weak_suffices.mean()), 4)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
