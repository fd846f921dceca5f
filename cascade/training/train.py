"""Train the confidence model on labeled traffic, export it to ONNX and write its model folder.

``cascade train --data TRAIN.jsonl... [--dev DEV.jsonl...] --out router_models/NAME`` computes
:func:`~cascade.model.features.prompt_features` for every prompt, fits
:mod:`cascade.training.feature_model` on the rows outside the held-out tasks, checks that the ONNX
export agrees with scikit-learn on messy text, measures AUROC and APGR on the held-out tasks and on
the dev files, and writes ``model.onnx`` and ``manifest.json``. ``--base MODEL`` adapts an existing
model to the given rows instead (:func:`adapt`). Rows exported from the ledger bring the
scorer's numbers instead of a prompt (``features``): they are used as they are when their
``feature_version`` is the one the model reads (the base model's manifest, and this code's
:data:`~cascade.model.features.PROMPT_FEATURES_VERSION`), and refused otherwise. A row with a
``propensity`` counts 1 / propensity (importance weighting: an explored request stands for the
others its choice was drawn against), the weights scaled to a mean of 1 over the fitted rows.
Rows with ``anchor_weight`` (authored obvious
prompts, :mod:`cascade.training.obvious`) correct the result on the columns traffic barely
exercises. Training is deterministic: the same files and seed give a byte-identical
``model.onnx``.

scikit-learn, onnx and onnxruntime are imported inside the functions that need them, so
importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from cascade.errors import TrainingError
from cascade.model.features import FEATURE_NAMES, PROMPT_FEATURES_VERSION, prompt_features
from cascade.model.manifest import (
    FEATURES_PREPROCESSING,
    FORMAT_VERSION,
    CalibrationPoint,
    DataFile,
    Manifest,
    Metrics,
    ModelInput,
    ModelOutput,
    Parity,
    load_manifest,
)
from cascade.resources import model_dir
from cascade.training.evaluation import Outcomes, auroc, report
from cascade.training.feature_model import (
    ALPHA,
    Anchors,
    LinearConfidence,
    anchor_confidence,
    export_onnx,
    feature_matrix,
    fit_confidence,
    onnx_confidence,
    read_onnx,
    reference_confidence,
)
from cascade.training.traffic import LabeledExample, load_labeled

__all__ = [
    "ADAPT_ALPHAS",
    "DEFAULT_HOLDOUT_TASKS",
    "LABEL_DEFINITION",
    "PARITY_TEXTS",
    "Adaptation",
    "adapt",
    "example_features",
    "importance_weights",
    "train_model",
]

LABEL_DEFINITION = (
    "1 when weak_score >= strong_score (the weak tier's answer is at least as good as the strong "
    "tier's: the weak tier suffices), else 0; the model outputs P(label = 1)"
)
DEFAULT_HOLDOUT_TASKS = (
    "mmlu/college_computer_science",
    "mmlu/econometrics",
    "mmlu/elementary_mathematics",
    "mmlu/high_school_biology",
    "mmlu/philosophy",
    "mmlu/us_foreign_policy",
)
PARITY_TOLERANCE = 1e-5
ADAPT_ALPHAS = (1e2, 1e3, 1e4, 1e5)
"""Correction strengths :func:`adapt` chooses among by cross-validation on the team's rows."""
_FOLDS = 5
# Messy prompts (scripts, emoji, code, control characters, very long) every export must agree on.
PARITY_TEXTS: tuple[str, ...] = (
    "Café, résumé, naïve, über, Straße, ñandú, Ærøskøbing, İstanbul, ΟΔΥΣΣΕΥΣ",
    # RUF001 is silenced on the lines below: their confusable characters are the point
    "e\u0301le\u0300ve (combining accents) and ﬁ ligature, Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３",  # noqa: RUF001
    "日本語のテキストです。東京は大きい都市ですか？ 中文问题：为什么天空是蓝色的？ 한국어 질문",  # noqa: RUF001
    "Привет, как дела? Объясни теорему Пифагора простыми словами.",
    "مرحبا، كيف حالك؟ اشرح لي الجاذبية من فضلك",
    "I love 🍕 and 🚀🚀!! 👩🏽‍💻 works at 3am 😴 ✅",
    "def f(x: int) -> dict[str, list[int]]:\n\treturn {'a': [x, x ** 2]}  # square\n",
    '{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "n": 2.5e-3}',
    r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(\d{1,3}\.){3}\d{1,3}$ matches? \b\w+\b",
    "!!!???...;;;:::---***((()))[[[]]]{{{}}}<<<>>>@@@###$$$%%%^^^&&&|||~~~",
    "tabs\t\t\tand\n\n\nnewlines\r\n\r\n  end\u00a0nbsp\u2003em-space\u2028line-sep\x0b\x0c",
    "",
    " \t\n ",
    "x",
    "SELECT * FROM users WHERE id = 1; -- drop table? C:\\Users\\me\\file.txt",
    "Solve: ∫₀¹ x² dx = ⅓, √2 ≈ 1.414, α+β≠γ, 10⁻⁵ ± 3%",  # noqa: RUF001
    "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 120,
    "ab" * 3000,
)


@dataclass(frozen=True)
class Adaptation:
    """What :func:`adapt` chose: the correction strength (None: keep the base) and CV APGRs."""

    alpha: float | None
    cv_apgr: dict[str, float]


def adapt(
    base: LinearConfidence,
    features: np.ndarray,
    outcomes: Outcomes,
    *,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> tuple[LinearConfidence, Adaptation]:
    """Fit a correction of ``base`` on a team's rows, as strong as cross-validation supports.

    Each of :data:`ADAPT_ALPHAS` and "no correction" is scored by the mean APGR over
    ``_FOLDS`` row folds of the given data (fit on four, measure on the fifth); the best is
    refitted on all rows. With few or noisy rows this keeps the base model unchanged.
    ``weights`` weigh the fits (not the folds' APGR, which counts each held-out row once).
    """
    folds = np.random.default_rng(seed).permutation(len(features)) % _FOLDS
    scores: dict[str, list[float]] = {"base": [], **{f"{a:g}": [] for a in ADAPT_ALPHAS}}
    for k in range(_FOLDS):
        fit, test = folds != k, folds == k
        held = _subset(outcomes, test)
        if _gap(held) == 0.0 or len(set(_subset(outcomes, fit).weak_suffices.tolist())) < 2:
            continue
        scores["base"].append(report(base.confidence(features[test]), held).apgr)
        for alpha in ADAPT_ALPHAS:
            model = fit_confidence(
                features[fit],
                _subset(outcomes, fit),
                alpha=alpha,
                base=base,
                row_weights=None if weights is None else weights[fit],
            )
            scores[f"{alpha:g}"].append(report(model.confidence(features[test]), held).apgr)
    means = {k: round(float(np.mean(v)), 4) for k, v in scores.items() if v}
    if not means:
        raise TrainingError("too few rows with outcomes that differ to adapt the base model")
    best = max(means, key=lambda k: (means[k], k == "base"))
    if best == "base":
        return base, Adaptation(None, means)
    alpha = float(best)
    model = fit_confidence(features, outcomes, alpha=alpha, base=base, row_weights=weights)
    return model, Adaptation(alpha, means)


def train_model(
    data: Sequence[Path],
    out_dir: Path,
    *,
    name: str,
    seed: int = 0,
    holdout_tasks: Sequence[str] = DEFAULT_HOLDOUT_TASKS,
    dev_data: Sequence[Path] = (),
    base: str | Path | None = None,
    created_by: str | None = None,
) -> tuple[Manifest, Adaptation | None]:
    """Train on ``data`` minus ``holdout_tasks`` (or adapt ``base`` to it), export, measure, write.

    The shipped model is the one fitted without the held-out tasks, so its holdout numbers are
    honest estimates for unseen subjects. ``dev_data`` (another distribution) is only measured.
    Authored rows (``anchor_weight``) then correct the anchored columns
    (:func:`~cascade.training.feature_model.anchor_confidence`); they are not traffic, so the
    calibration table and the metrics leave them out.
    Raises :class:`TrainingError` if a held-out task is absent or ONNX and scikit-learn disagree.
    """
    examples, authored = _split_authored(load_labeled(data, stored_features=True))
    dev = load_labeled(dev_data, stored_features=True) if dev_data else []
    base_model, version = (None, PROMPT_FEATURES_VERSION) if base is None else _load_base(base)
    held_out = set(holdout_tasks)
    if missing := sorted(held_out - {e.task for e in examples}):
        raise TrainingError(
            f"holdout tasks not in the data: {', '.join(missing)}; name tasks the data has "
            "(its 'task' field), or none (--holdout-tasks with no value) to skip the holdout"
        )
    features = example_features(examples, version, base)
    outcomes = Outcomes.from_examples(examples)
    is_held = np.array([e.task in held_out for e in examples])
    fit_rows = _subset(outcomes, ~is_held)
    weights = importance_weights(examples, ~is_held)
    adaptation = None
    if base_model is None:
        model = fit_confidence(features[~is_held], fit_rows, alpha=ALPHA, row_weights=weights)
    else:
        model, adaptation = adapt(
            base_model, features[~is_held], fit_rows, seed=seed, weights=weights
        )
    if authored:
        anchors = Anchors(
            feature_matrix([e.prompt for e in authored]),
            Outcomes.from_examples(authored),
            np.array([e.anchor_weight for e in authored], dtype=np.float64),
        )
        model = anchor_confidence(
            model, features[~is_held], fit_rows, anchors, traffic_weights=weights
        )
    onnx_bytes = export_onnx(model)
    parity_texts = [
        *PARITY_TEXTS,
        *(e.prompt for e in authored[:100]),
        *(e.prompt for e in examples[:200] if e.features is None),
        *(e.prompt for e in dev[:200] if e.features is None),
    ]
    parity_features = feature_matrix(parity_texts)
    expected = (
        reference_confidence(model, parity_features)
        if model.reference is not None
        else model.confidence(parity_features)
    )
    diff = np.abs(expected - onnx_confidence(onnx_bytes, parity_features))
    if diff.max() > PARITY_TOLERANCE:
        raise TrainingError(
            f"ONNX and scikit-learn disagree by {diff.max():.2e} (> {PARITY_TOLERANCE}) on "
            f"{parity_texts[int(diff.argmax())][:80]!r}; the export is wrong, not writing {out_dir}"
        )
    confidence = onnx_confidence(onnx_bytes, features)
    labels = outcomes.weak_suffices
    dev_outcomes = Outcomes.from_examples(dev) if dev else None
    dev_confidence = onnx_confidence(onnx_bytes, example_features(dev, version, base))
    manifest = Manifest(
        name=name,
        format_version=FORMAT_VERSION,
        file="model.onnx",
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        opset=17,
        feature_version=PROMPT_FEATURES_VERSION,
        input=ModelInput("features", "float", (None, len(FEATURE_NAMES)), FEATURES_PREPROCESSING),
        output=ModelOutput("probabilities", 1),
        label=LABEL_DEFINITION,
        training_data=tuple(_describe(Path(p)) for p in data),
        # share of training prompts kept on the cheap tier by each threshold
        calibration=tuple(
            CalibrationPoint(t, round(float(np.mean(confidence[~is_held] >= t)), 4))
            for t in (round(0.05 * i, 2) for i in range(1, 20))
        ),
        metrics=Metrics(
            holdout_tasks=tuple(sorted(held_out)),
            holdout_rows=int(is_held.sum()),
            holdout_auroc=_round(auroc(labels[is_held], confidence[is_held])),
            dev_files=tuple(Path(p).name for p in dev_data),
            dev_rows=len(dev),
            dev_auroc=_round(auroc(dev_outcomes.weak_suffices, dev_confidence))
            if dev_outcomes
            else None,
            base_rate_train=round(float(labels[~is_held].mean()), 4),
            base_rate_holdout=_rate(labels[is_held]),
            base_rate_dev=_rate(dev_outcomes.weak_suffices) if dev_outcomes else None,
            holdout_apgr=_apgr(confidence[is_held], _subset(outcomes, is_held)),
            dev_apgr=_apgr(dev_confidence, dev_outcomes) if dev_outcomes else None,
        ),
        parity=Parity(float(f"{diff.max():.3g}"), len(parity_texts)),
        created_by=created_by or f"cascade.training.train.train_model(name={name!r}, seed={seed})",
        toolchain=_toolchain(),
        base_model=None if base is None else str(base),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / manifest.file).write_bytes(onnx_bytes)
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest, adaptation


def _split_authored(
    rows: list[LabeledExample],
) -> tuple[list[LabeledExample], list[LabeledExample]]:
    """Traffic rows and authored rows (``anchor_weight``); traffic must not be empty."""
    traffic = [e for e in rows if e.anchor_weight is None]
    if not traffic:
        raise TrainingError(
            "every row is authored (has anchor_weight): authored rows only correct a model "
            "fitted on traffic; add labeled traffic to --data"
        )
    return traffic, [e for e in rows if e.anchor_weight is not None]


def example_features(
    examples: Sequence[LabeledExample], version: str, base: str | Path | None = None
) -> np.ndarray:
    """One feature row per example: its stored ``features`` (when of ``version``, the one the
    model reads) or :func:`prompt_features` of its prompt. TrainingError names the first row
    whose stored numbers are of another version or length."""
    matrix = np.zeros((len(examples), len(FEATURE_NAMES)), dtype=np.float64)
    reads = f"--base {base} reads" if base is not None else "cascade train fits"
    for i, example in enumerate(examples):
        if example.features is None:
            matrix[i] = prompt_features(example.prompt)
            continue
        if example.feature_version != version or version != PROMPT_FEATURES_VERSION:
            raise TrainingError(
                f"row {example.id!r}: its features are of version {example.feature_version!r}; "
                f"{reads} {version!r} (its manifest's feature_version) and this code computes "
                f"{PROMPT_FEATURES_VERSION!r}: export traffic routed by a model of that feature "
                "version, or join the prompts (cascade export --prompts) so they are computed "
                "again"
            )
        if len(example.features) != len(FEATURE_NAMES):
            raise TrainingError(
                f"row {example.id!r}: {len(example.features)} features; version {version!r} "
                f"has {len(FEATURE_NAMES)}"
            )
        matrix[i] = example.features
    return matrix


def importance_weights(examples: Sequence[LabeledExample], rows: np.ndarray) -> np.ndarray | None:
    """1 / propensity for each of ``rows`` (1 without one), scaled to a mean of 1; None when no
    row has a propensity (every row counts once, as without weights)."""
    chosen = [e for e, keep in zip(examples, rows, strict=True) if keep]
    if not any(e.propensity is not None for e in chosen):
        return None
    weights = np.array([1.0 / (e.propensity or 1.0) for e in chosen], dtype=np.float64)
    return np.asarray(weights / weights.mean())


def _load_base(base: str | Path) -> tuple[LinearConfidence, str]:
    """The base model's weights, and the feature version its manifest says it reads."""
    directory = model_dir(base)
    manifest = load_manifest(directory)
    if manifest.input.preprocessing != FEATURES_PREPROCESSING:
        raise TrainingError(
            f"--base {base}: its input is {manifest.input.preprocessing}; only models on "
            f"{FEATURES_PREPROCESSING} can be adapted"
        )
    return read_onnx((directory / manifest.file).read_bytes()), manifest.feature_version


def _subset(outcomes: Outcomes, rows: np.ndarray) -> Outcomes:
    return Outcomes(
        outcomes.weak_score[rows],
        outcomes.strong_score[rows],
        outcomes.weak_cost[rows],
        outcomes.strong_cost[rows],
    )


def _gap(outcomes: Outcomes) -> float:
    if len(outcomes.weak_score) == 0:
        return 0.0
    return float(abs(outcomes.strong_score.mean() - outcomes.weak_score.mean()) > 1e-12)


def _apgr(confidence: np.ndarray, outcomes: Outcomes | None) -> float | None:
    if outcomes is None or _gap(outcomes) == 0.0:
        return None
    return round(report(confidence, outcomes).apgr, 4)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _describe(path: Path) -> DataFile:
    data = path.read_bytes()
    rows = sum(1 for line in data.decode("utf-8").split("\n") if line.strip())
    return DataFile(path.name, rows, hashlib.sha256(data).hexdigest())


def _rate(labels: np.ndarray) -> float | None:
    return round(float(labels.mean()), 4) if len(labels) else None


def _toolchain() -> dict[str, str]:
    """Versions that decide the exported bytes: retraining with others may change the sha256."""
    return {p: version(p) for p in ("numpy", "scikit-learn", "onnx", "onnxruntime")}
