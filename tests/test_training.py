"""Training: labeled-traffic loading, the ONNX export's parity with scikit-learn, the manifest,
adapting a model to new rows."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import LabeledDataError, TrainingError
from cascade.model.manifest import Manifest, load_manifest
from cascade.model.scorer import OnnxScorer
from cascade.training.evaluation import Outcomes
from cascade.training.feature_model import feature_matrix, fit_confidence, reference_confidence
from cascade.training.traffic import load_labeled
from cascade.training.train import PARITY_TEXTS, train_model

# Messy prompts that are NOT in the training rows below: out-of-vocabulary n-grams must agree too.
# RUF001 is silenced on some lines: their confusable characters are what the test is about.
UNSEEN_MESSY = (
    "Ελληνικά: Πόσο κάνει δύο συν δύο;",  # noqa: RUF001
    "हिन्दी में उत्तर दीजिए: भारत की राजधानी क्या है?",
    "ภาษาไทย สวัสดีครับ 🙏🏻",
    "Zürich → München: ¿cuánto cuesta? «très cher» — naïve façade",
    "import re; re.compile(r'(?P<year>\\d{4})-(?P<m>\\d\\d)') # 🐍\n\n\n\t\treturn None",
    '[{"a":1},{"b":[true,false,null]},"\\u00e9"]',
    "...!!!...???,,,;;;'''\"\"\"",
    "Дайте ответ кратко.\t\t\tСпасибо!!!",  # noqa: RUF001
    "東京タワーの高さは？" * 300,  # noqa: RUF001
)

EASY_WORDS = ("what", "is", "the", "capital", "color", "name", "hello", "simple", "add", "two")
HARD_WORDS = ("prove", "derive", "integral", "theorem", "statute", "diagnosis", "eigenvalue")
HARD_TAIL = "Let x = 3^2 + 4*5 - 7/2; compute 12 * (x - 1) = ? given 2 < x <= 99."


def _synthetic_rows(count: int, seed: int) -> list[dict[str, object]]:
    """Rows whose label follows the words (with noise), carrying messy text so the character
    vocabulary holds accents, CJK, Cyrillic, Arabic and emoji n-grams."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(count):
        easy = rng.random() < 0.6
        words = rng.sample(EASY_WORDS if easy else HARD_WORDS, 4)
        messy = PARITY_TEXTS[i % len(PARITY_TEXTS)][: rng.randint(0, 300)]
        weak_ok = easy != (rng.random() < 0.1)
        tail = "" if easy else HARD_TAIL  # digits and math symbols: what prompt features see
        rows.append({
            "id": f"syn-{i}",
            "task": ("synthetic/a", "synthetic/b", "synthetic/held")[i % 3],
            "prompt": f"{' '.join(words).title()}?\n\n{messy}{tail}",
            "weak_score": 1.0 if weak_ok else 0.0,
            "strong_score": 1.0,
            "weak_cost_usd": 1e-5,
            "strong_cost_usd": 3e-4,
        })  # fmt: skip
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@dataclass(frozen=True)
class TinyModel:
    """A small model trained by the real pipeline on synthetic rows."""

    data: Path
    folder: Path
    manifest: Manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Train once per module: ~300 rows, held-out task ``synthetic/held``."""
    root = tmp_path_factory.mktemp("tiny")
    data = _write_jsonl(root / "train.jsonl", _synthetic_rows(300, seed=1))
    dev = _write_jsonl(root / "dev.jsonl", _synthetic_rows(60, seed=2))
    manifest, _ = train_model(
        [data], root / "model", name="tiny", holdout_tasks=["synthetic/held"], dev_data=[dev]
    )
    return TinyModel(data, root / "model", manifest)


def test_onnx_matches_scikit_learn_on_messy_text(tiny: TinyModel) -> None:
    """The served ONNX model and the scikit-learn pipeline agree to 1e-5 on messy prompts."""
    fit = [e for e in load_labeled([tiny.data]) if e.task != "synthetic/held"]
    model = fit_confidence(feature_matrix([e.prompt for e in fit]), Outcomes.from_examples(fit))
    texts = [*PARITY_TEXTS, *UNSEEN_MESSY]
    expected = reference_confidence(model, feature_matrix(texts))
    served = np.array(OnnxScorer(tiny.folder, device="cpu").score_batch(texts))
    assert np.abs(served - expected).max() <= 1e-5
    assert tiny.manifest.parity.max_abs_diff <= 1e-5
    # the texts must exercise the model, not all land on one value
    assert np.ptp(served) > 0.01


def test_training_twice_gives_the_same_bytes(tiny: TinyModel, tmp_path: Path) -> None:
    """Retraining on the same files with the same seed writes a byte-identical model.onnx."""
    again, _ = train_model([tiny.data], tmp_path, name="tiny", holdout_tasks=["synthetic/held"])
    assert again.sha256 == tiny.manifest.sha256
    assert (tmp_path / "model.onnx").read_bytes() == (tiny.folder / "model.onnx").read_bytes()


def test_manifest_records_what_a_policy_author_needs(tiny: TinyModel) -> None:
    """The manifest on disk has the file's hash, the data's hashes, metrics and a calibration."""
    manifest = load_manifest(tiny.folder)
    assert manifest == tiny.manifest
    model_bytes = (tiny.folder / "model.onnx").read_bytes()
    assert manifest.sha256 == hashlib.sha256(model_bytes).hexdigest()
    data_bytes = tiny.data.read_bytes()
    (trained_on,) = manifest.training_data
    assert (trained_on.file, trained_on.rows) == ("train.jsonl", 300)
    assert trained_on.sha256 == hashlib.sha256(data_bytes).hexdigest()
    assert [p.threshold for p in manifest.calibration] == [round(0.05 * i, 2) for i in range(1, 20)]
    shares = [p.cheap_share for p in manifest.calibration]
    assert shares == sorted(shares, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in shares)
    metrics = manifest.metrics
    assert (metrics.holdout_tasks, metrics.holdout_rows, metrics.dev_rows) == (
        ("synthetic/held",),
        100,
        60,
    )
    assert metrics.holdout_auroc is not None
    assert metrics.dev_auroc is not None
    # the synthetic label follows the prompt's form, so the model must find it
    assert metrics.holdout_auroc > 0.8
    assert metrics.holdout_apgr is not None
    assert metrics.holdout_apgr > 0.7
    assert manifest.input.preprocessing == "cascade.features.prompt_features"


def test_missing_holdout_task_is_refused(tiny: TinyModel, tmp_path: Path) -> None:
    """Asking to hold out a task the data lacks fails instead of silently measuring nothing."""
    with pytest.raises(TrainingError, match="mmlu/typo"):
        train_model([tiny.data], tmp_path, name="x", holdout_tasks=["mmlu/typo"])


def test_data_with_one_label_is_refused(tmp_path: Path) -> None:
    """Training needs both labels; data where the weak tier always suffices is an error."""
    rows = _synthetic_rows(20, seed=3)
    for row in rows:
        row["weak_score"] = 1.0
    data = _write_jsonl(tmp_path / "one.jsonl", rows)
    with pytest.raises(TrainingError, match="both labels"):
        train_model([data], tmp_path / "out", name="x", holdout_tasks=[])


def test_adapting_keeps_or_improves_the_base(tiny: TinyModel, tmp_path: Path) -> None:
    """``base=`` fits a correction on new rows, records its base, and stays a loadable model."""
    rows = _synthetic_rows(200, seed=5)
    for row in rows:  # the new traffic: the weak tier fails on the long prompts instead
        long = len(str(row["prompt"])) > 150
        row["weak_score"] = 0.0 if long else 1.0
    data = _write_jsonl(tmp_path / "team.jsonl", rows)
    manifest, adaptation = train_model(
        [data], tmp_path / "adapted", name="adapted", holdout_tasks=[], base=tiny.folder
    )
    assert adaptation is not None
    assert set(adaptation.cv_apgr) >= {"base", "100"}
    best = max(adaptation.cv_apgr.values())
    chosen = "base" if adaptation.alpha is None else f"{adaptation.alpha:g}"
    assert adaptation.cv_apgr[chosen] == best
    assert manifest.base_model == str(tiny.folder)
    scores = OnnxScorer(tmp_path / "adapted", device="cpu").score_batch(
        [str(r["prompt"]) for r in rows]
    )
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_adapting_a_text_model_is_refused(tmp_path: Path) -> None:
    """Only prompt-features models can be adapted; the TF-IDF baseline is named as the problem."""
    data = _write_jsonl(tmp_path / "team.jsonl", _synthetic_rows(30, seed=6))
    with pytest.raises(TrainingError, match=r"only models on cascade\.features\.prompt_features"):
        train_model([data], tmp_path / "x", name="x", holdout_tasks=[], base="tfidf-lr-v1")


def test_labels_come_from_the_scores(tmp_path: Path) -> None:
    """A row is labeled 'weak suffices' when weak_score >= strong_score, ties included."""
    rows = _synthetic_rows(3, seed=0)
    for row, (weak, strong) in zip(rows, [(1.0, 1.0), (0.0, 1.0), (0.5, 0.25)], strict=True):
        row["weak_score"], row["strong_score"] = weak, strong
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    path.write_text(path.read_text("utf-8") + "\n\n", "utf-8")  # blank lines are skipped
    examples = load_labeled([path])
    assert [e.weak_suffices for e in examples] == [True, False, True]
    assert examples[0].id == "syn-0"


def _row_with(**fields: object) -> str:
    row = {**_synthetic_rows(1, seed=0)[0], **fields}
    return json.dumps({k: v for k, v in row.items() if v is not ...})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"rows\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"rows\.jsonl:2: expected a JSON object, got list"),
        (_row_with(task=...), r"rows\.jsonl:2: field 'task': missing"),
        (_row_with(weak_score=1.5), r"rows\.jsonl:2: field 'weak_score': expected a number in \[0"),
        (_row_with(strong_score=True), r"rows\.jsonl:2: field 'strong_score': expected a number"),
        (_row_with(prompt=3), r"rows\.jsonl:2: field 'prompt': expected a string, got 3"),
        (_row_with(strong_cost_usd=-1), r"rows\.jsonl:2: field 'strong_cost_usd': expected"),
    ],
)
def test_invalid_rows_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    """A bad row fails with ``file:line``, the field, and what the field allows."""
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{_row_with()}\n{line}\n", "utf-8")
    with pytest.raises(LabeledDataError, match=message):
        load_labeled([path])


def test_missing_or_empty_files_are_errors(tmp_path: Path) -> None:
    """A missing file and a file without rows both fail, naming the file."""
    with pytest.raises(LabeledDataError, match=r"nope\.jsonl: cannot read"):
        load_labeled([tmp_path / "nope.jsonl"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", "utf-8")
    with pytest.raises(LabeledDataError, match=r"no labeled rows in .*empty\.jsonl"):
        load_labeled([empty])


def test_importing_training_does_not_import_scikit_learn() -> None:
    """``import cascade.training.train`` stays cheap: scikit-learn and onnx load only to train."""
    heavy = "('sklearn', 'skl2onnx', 'onnx', 'onnxruntime')"
    code = f"import sys, cascade.training.train; print(sorted(set({heavy}) & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
