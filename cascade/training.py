"""Train the confidence model on labeled traffic, export it to ONNX and write its manifest.

``python -m cascade.training --data train/*.jsonl --dev dev.jsonl --out router_models/NAME``
fits TF-IDF (word 1-2-grams + character 2-3-grams) and a logistic regression on normalized
prompts, checks that the ONNX export agrees with scikit-learn on messy text, measures AUROC on
held-out tasks and on the dev files, and writes ``model.onnx`` and ``manifest.json``.
Training is deterministic: the same files and seed give a byte-identical ``model.onnx``.

scikit-learn, skl2onnx and onnxruntime are imported inside the functions that need them, so
:func:`load_labeled` and the constants here cost nothing to import.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import CascadeError, TrainingError
from cascade.features import FEATURE_VERSION, normalize
from cascade.manifest import (
    FORMAT_VERSION,
    PREPROCESSING,
    CalibrationPoint,
    DataFile,
    Manifest,
    Metrics,
    ModelInput,
    ModelOutput,
    Parity,
)
from cascade.traffic import load_labeled

__all__ = [
    "DEFAULT_HOLDOUT_TASKS",
    "LABEL_DEFINITION",
    "PARITY_TEXTS",
    "export_onnx",
    "fit_pipeline",
    "main",
    "onnx_confidence",
    "pipeline_confidence",
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
OPSET = 17  # the highest ai.onnx opset the export may use: older onnxruntime releases load it
# The prompts where skl2onnx's tokenizers are known to drift from scikit-learn's.
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


def fit_pipeline(prompts: Sequence[str], labels: Sequence[bool], *, seed: int = 0) -> Any:
    """Fit the scikit-learn pipeline on normalized ``prompts``; returns the fitted Pipeline."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415 - lazy: train-only dependency
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - lazy: train-only dependency
    from sklearn.pipeline import FeatureUnion, Pipeline  # noqa: PLC0415 - lazy: train-only dependency

    if len(set(labels)) != 2:
        raise TrainingError(f"need prompts of both labels to train, got only {set(labels)}")
    # lowercase=False: normalize() already lower-cases, so the ONNX graph needs no locale-bound
    # StringNormalizer. The token pattern is one skl2onnx reproduces exactly on non-ASCII text;
    # 'char' (not 'char_wb') is the character analyzer that converts.
    words = TfidfVectorizer(
        token_pattern=r"[a-zA-Z0-9_]{2,}",
        ngram_range=(1, 2),
        max_features=30_000,
        lowercase=False,
        dtype=np.float32,
    )
    chars = TfidfVectorizer(
        analyzer="char",
        ngram_range=(2, 3),
        max_features=20_000,
        lowercase=False,
        dtype=np.float32,
    )
    pipeline = Pipeline(
        [
            ("features", FeatureUnion([("words", words), ("chars", chars)])),
            ("classifier", LogisticRegression(C=0.3, max_iter=2_000, random_state=seed)),
        ]
    )
    pipeline.fit([normalize(p) for p in prompts], np.asarray(labels, dtype=np.int64))
    return pipeline


def pipeline_confidence(pipeline: Any, prompts: Sequence[str]) -> np.ndarray:
    """scikit-learn's P(weak suffices) for ``prompts``, normalized the way serving does."""
    column = list(pipeline.classes_).index(1)
    return np.asarray(pipeline.predict_proba([normalize(p) for p in prompts])[:, column])


def export_onnx(pipeline: Any) -> bytes:
    """Convert the fitted pipeline to ONNX: input ``text`` [N, 1] strings, output probabilities."""
    import onnx  # noqa: PLC0415 - lazy: train-only dependency
    from skl2onnx import convert_sklearn  # noqa: PLC0415 - lazy: train-only dependency
    from skl2onnx.common.data_types import StringTensorType  # noqa: PLC0415 - lazy: train-only dependency
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415 - lazy: train-only dependency
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - lazy: train-only dependency

    with warnings.catch_warnings():
        # skl2onnx warns that 'char' analyzers "may not work"; the parity check on PARITY_TEXTS
        # that every training run does is what shows it does, for normalized text.
        warnings.filterwarnings("ignore", "The conversion of CountVectorizer may not work")
        model = convert_sklearn(
            pipeline,
            name="cascade_confidence",  # skl2onnx's default is a random uuid: not reproducible
            initial_types=[("text", StringTensorType([None, 1]))],
            target_opset={"": OPSET, "ai.onnx.ml": 1},
            # the locale only matters if a vectorizer lower-cases; machines may lack en_US.UTF-8
            options={TfidfVectorizer: {"locale": "C.UTF-8"}, LogisticRegression: {"zipmap": False}},
        )
    for node in model.graph.node:
        if node.op_type == "Tokenizer":
            # Shorter rows of a batch are padded with pad_value, skl2onnx's "#": n-grams such as
            # "##" or "a#" from the vocabulary then count padding. normalize() turns every
            # newline into a space, so "\n" can never be part of a vocabulary n-gram.
            pad = next(a for a in node.attribute if a.name == "pad_value")
            pad.s = b"\n"
    _replace_l2_normalizers(model)
    onnx.checker.check_model(model)
    # skl2onnx lists the opset imports in set order, which varies run to run: sort them
    imports = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, opset in imports:
        model.opset_import.add(domain=domain, version=opset)
    return bytes(model.SerializeToString())


def _replace_l2_normalizers(model: Any) -> None:
    """Swap ai.onnx.ml Normalizer(L2) nodes for ReduceL2 -> Max(eps) -> Div, in place.

    onnxruntime's Normalizer takes ~3 ns per element of the dense 50k-wide TF-IDF rows: about
    150 us of every prompt's score, and most of the time of a short one. The standard ops give
    the same result (an all-zero row stays zero; PARITY_TEXTS checks the rest) in a third of it.
    """
    from onnx import helper, numpy_helper  # noqa: PLC0415 - lazy: train-only dependency

    graph = model.graph
    nodes = []
    for node in graph.node:
        norm = {a.name: a.s for a in node.attribute}.get("norm")
        if node.op_type != "Normalizer" or norm != b"L2":
            nodes.append(node)
            continue
        (x,), (y,) = node.input, node.output
        nodes += [
            # axes as an attribute: valid up to opset 17, and OPSET caps the export there
            helper.make_node("ReduceL2", [x], [f"{y}_l2"], f"{node.name}_l2", axes=[1], keepdims=1),
            helper.make_node("Max", [f"{y}_l2", "l2_epsilon"], [f"{y}_safe"], f"{node.name}_max"),
            helper.make_node("Div", [x, f"{y}_safe"], [y], f"{node.name}_div"),
        ]
    if len(nodes) > len(graph.node):
        epsilon = np.array([1e-12], dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(epsilon, name="l2_epsilon"))
        del graph.node[:]
        graph.node.extend(nodes)


def _default_opset(model: bytes) -> int:
    """The ai.onnx opset the exported model imports (skl2onnx may pick one below OPSET)."""
    import onnx  # noqa: PLC0415 - lazy: train-only dependency

    imports = onnx.load_from_string(model).opset_import
    return int(next(o.version for o in imports if o.domain in ("", "ai.onnx")))


def onnx_confidence(model: bytes, prompts: Sequence[str], column: int = 1) -> np.ndarray:
    """onnxruntime's P(weak suffices) for ``prompts`` from exported ``model`` bytes (on CPU)."""
    import onnxruntime  # noqa: PLC0415 - lazy: train-only dependency

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    texts = np.array([normalize(p) for p in prompts], dtype=object).reshape(-1, 1)
    chunks = [
        session.run(["probabilities"], {"text": texts[i : i + 1024]})[0]
        for i in range(0, len(texts), 1024)
    ]
    return np.concatenate(chunks)[:, column] if chunks else np.zeros(0)


def train_model(
    data: Sequence[Path],
    out_dir: Path,
    *,
    name: str,
    seed: int = 0,
    holdout_tasks: Sequence[str] = DEFAULT_HOLDOUT_TASKS,
    dev_data: Sequence[Path] = (),
    created_by: str | None = None,
) -> Manifest:
    """Train on ``data`` minus ``holdout_tasks``, export, measure, and write the model folder.

    The shipped model is the one fitted without the held-out tasks, so its holdout AUROC is an
    honest estimate for unseen subjects. ``dev_data`` (another distribution) is only measured.
    Raises :class:`TrainingError` if a held-out task is absent or ONNX and scikit-learn disagree.
    """
    examples, dev = load_labeled(data), (load_labeled(dev_data) if dev_data else [])
    held_out = set(holdout_tasks)
    if missing := sorted(held_out - {e.task for e in examples}):
        raise TrainingError(
            f"holdout tasks not in the data: {', '.join(missing)}; name tasks the data has "
            "(its 'task' field), or none (--holdout-tasks with no value) to skip the holdout"
        )
    fit = [e for e in examples if e.task not in held_out]
    pipeline = fit_pipeline([e.prompt for e in fit], [e.weak_suffices for e in fit], seed=seed)
    model, column = export_onnx(pipeline), list(pipeline.classes_).index(1)

    picked = np.random.default_rng(seed).permutation(len(examples))[:200]
    parity_texts = [
        *PARITY_TEXTS,
        *(examples[i].prompt for i in picked),
        *(e.prompt for e in dev[:200]),
    ]
    diff = np.abs(
        pipeline_confidence(pipeline, parity_texts) - onnx_confidence(model, parity_texts, column)
    )
    if diff.max() > PARITY_TOLERANCE:
        raise TrainingError(
            f"ONNX and scikit-learn disagree by {diff.max():.2e} (> {PARITY_TOLERANCE}) on "
            f"{parity_texts[int(diff.argmax())][:80]!r}; the export is wrong, not writing {out_dir}"
        )
    confidence = onnx_confidence(model, [e.prompt for e in examples], column)
    is_held = np.array([e.task in held_out for e in examples])
    labels = np.array([e.weak_suffices for e in examples])
    dev_labels = np.array([e.weak_suffices for e in dev])
    dev_confidence = onnx_confidence(model, [e.prompt for e in dev], column)
    manifest = Manifest(
        name=name,
        format_version=FORMAT_VERSION,
        file="model.onnx",
        sha256=hashlib.sha256(model).hexdigest(),
        opset=_default_opset(model),
        feature_version=FEATURE_VERSION,
        input=ModelInput("text", "string", (None, 1), PREPROCESSING),
        output=ModelOutput("probabilities", column),
        label=LABEL_DEFINITION,
        training_data=tuple(_describe(Path(p)) for p in data),
        # share of training prompts kept on the cheap tier by each threshold
        calibration=tuple(
            CalibrationPoint(t, round(float(np.mean(confidence >= t)), 4))
            for t in (round(0.05 * i, 2) for i in range(1, 20))
        ),
        metrics=Metrics(
            holdout_tasks=tuple(sorted(held_out)),
            holdout_rows=int(is_held.sum()),
            holdout_auroc=_auroc(labels[is_held], confidence[is_held]),
            dev_files=tuple(Path(p).name for p in dev_data),
            dev_rows=len(dev),
            dev_auroc=_auroc(dev_labels, dev_confidence),
            base_rate_train=round(float(labels[~is_held].mean()), 4),
            base_rate_holdout=_rate(labels[is_held]),
            base_rate_dev=_rate(dev_labels),
        ),
        parity=Parity(float(f"{diff.max():.3g}"), len(parity_texts)),
        created_by=created_by or f"cascade.training.train_model(name={name!r}, seed={seed})",
        toolchain=_toolchain(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / manifest.file).write_bytes(model)
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _describe(path: Path) -> DataFile:
    data = path.read_bytes()
    rows = sum(1 for line in data.decode("utf-8").split("\n") if line.strip())
    return DataFile(path.name, rows, hashlib.sha256(data).hexdigest())


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC rounded to 4 places, or None when the labels are all one class."""
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 - lazy: train-only dependency

    if len(set(labels.tolist())) < 2:
        return None
    return round(float(roc_auc_score(labels, scores)), 4)


def _rate(labels: np.ndarray) -> float | None:
    return round(float(labels.mean()), 4) if len(labels) else None


def _toolchain() -> dict[str, str]:
    """Versions that decide the exported bytes: retraining with others may change the sha256."""
    return {p: version(p) for p in ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime")}


def main(argv: list[str] | None = None) -> int:
    """Command line: train a model folder from labeled-traffic files and print its metrics."""
    parser = argparse.ArgumentParser(prog="python -m cascade.training", description=__doc__)
    parser.add_argument("--data", nargs="+", type=Path, required=True, metavar="FILE")
    parser.add_argument(
        "--dev",
        nargs="*",
        type=Path,
        default=[],
        metavar="FILE",
        help="labeled traffic of another distribution, measured only",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--name", help="model name (default: the --out folder's name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--holdout-tasks",
        nargs="*",
        default=list(DEFAULT_HOLDOUT_TASKS),
        metavar="TASK",
        help="tasks kept out of fitting (none given: no holdout)",
    )
    args = parser.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    try:
        manifest = train_model(
            args.data,
            args.out,
            name=args.name or args.out.resolve().name,
            seed=args.seed,
            holdout_tasks=args.holdout_tasks,
            dev_data=args.dev,
            created_by=shlex.join(["python", "-m", "cascade.training", *words]),
        )
    except CascadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"sha256": manifest.sha256, **dataclasses.asdict(manifest.metrics)}
    report["parity_max_abs_diff"] = manifest.parity.max_abs_diff
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
