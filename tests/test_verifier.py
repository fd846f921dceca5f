"""The verifier: trained by the real pipeline on real answers, exported, loaded and checked."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import LabeledDataError, ModelIntegrityError, ScorerError, TrainingError
from cascade.model.answer_features import ANSWER_FEATURES_VERSION, answer_features
from cascade.model.manifest import Manifest, load_manifest
from cascade.model.scorer import OnnxScorer
from cascade.model.verifier import OnnxVerifier, Verification
from cascade.resources import model_dir
from cascade.training.answers import load_answers
from cascade.training.train import PARITY_TEXTS
from cascade.training.verifier_data import featurize, first_witnesses, trio_and_random
from cascade.training.verifier_model import Choice, fit_verifier, reference_confidence
from cascade.training.verifier_train import VerifierTraining, train_verifier

FIXTURE = Path(__file__).parent / "data" / "verifier_answers.jsonl"
FIT = ("gsm8k", "mmlu_pro:biology")
SELECTION = ("mmlu_pro:economics",)
HOLDOUT = ("cruxeval_o", "math_l5")
CHOICES = (Choice("logistic", 1.0, "trio", "correct"), Choice("mlp", 1.0, "random", "suffices"))
MC_PROMPT = "Which organ makes insulin?\nA) Liver\nB) Pancreas\nC) Kidney\nD) Spleen"


@dataclass(frozen=True)
class TinyVerifier:
    """A verifier trained by the real pipeline on the 40-row fixture."""

    folder: Path
    manifest: Manifest
    chosen: Choice


def _train_tiny(folder: Path, holdout: tuple[str, ...] = HOLDOUT) -> VerifierTraining:
    """The real pipeline on the fixture, choosing between two settings."""
    return train_verifier(
        [FIXTURE],
        folder,
        name="tiny",
        fit_tasks=FIT,
        selection_tasks=SELECTION,
        holdout_tasks=holdout,
        choices=CHOICES,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyVerifier:
    """Train once per module on the fixture's fit tasks."""
    folder = tmp_path_factory.mktemp("verifier") / "tiny"
    result = _train_tiny(folder)
    return TinyVerifier(folder, result.manifest, result.chosen)


def _messy_items() -> list[Verification]:
    """Candidates and witnesses of every script, emoji, code and control character, with and
    without logprobs and with zero to three witnesses."""
    texts = [*PARITY_TEXTS, "The answer is (B).", '{"answer": "18"}', "\\boxed{3/4}"]
    return [
        Verification(
            texts[(i + 7) % len(texts)] if i % 2 else MC_PROMPT,
            texts[i],
            tuple(texts[(i + j) % len(texts)] for j in range(1, 1 + i % 4)),
            (-0.05 * i, -1.5) if i % 3 == 0 else None,
        )
        for i in range(len(texts))
    ]


def test_onnx_matches_scikit_learn_on_messy_answers(tiny: TinyVerifier) -> None:
    """The served ONNX verifier and the scikit-learn model agree to 1e-5 on messy answers."""
    rows = load_answers([FIXTURE], tasks=set(FIT))
    sampling = first_witnesses(2) if tiny.chosen.sampling == "trio" else trio_and_random(0)
    examples = featurize(rows, sampling)
    labels = examples.good
    if tiny.chosen.target == "suffices":
        scores = np.array([(r.candidate_score >= r.strong_score) for r in rows])
        labels = scores[examples.row]
    model = fit_verifier(examples.features, labels, tiny.chosen)
    items = _messy_items()
    features = np.array(
        [answer_features(i.prompt, i.candidate, i.witnesses, i.logprobs) for i in items]
    )
    served = np.array(OnnxVerifier(tiny.folder).confidence_batch(items))
    assert np.abs(served - reference_confidence(model, features)).max() <= 1e-5
    assert tiny.manifest.parity.max_abs_diff <= 1e-5
    assert np.ptp(served) > 0.01  # the texts exercise the model


def test_training_twice_gives_the_same_bytes(tiny: TinyVerifier, tmp_path: Path) -> None:
    """Retraining on the same file with the same seed writes a byte-identical model.onnx."""
    again = _train_tiny(tmp_path)
    assert again.manifest.sha256 == tiny.manifest.sha256
    assert (tmp_path / "model.onnx").read_bytes() == (tiny.folder / "model.onnx").read_bytes()


def test_manifest_says_what_the_verifier_is_and_how_it_was_measured(tiny: TinyVerifier) -> None:
    """Kind, feature version, data hashes, the three splits and their metrics are recorded."""
    manifest = load_manifest(tiny.folder)
    assert manifest == tiny.manifest
    assert manifest.kind == "verifier"
    assert manifest.feature_version == ANSWER_FEATURES_VERSION
    assert manifest.sha256 == hashlib.sha256((tiny.folder / "model.onnx").read_bytes()).hexdigest()
    (data,) = manifest.training_data
    assert (data.file, data.rows) == (FIXTURE.name, 40)
    assert data.sha256 == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    metrics = manifest.metrics
    assert metrics.holdout_tasks == HOLDOUT
    assert metrics.selection_tasks == SELECTION
    assert (metrics.holdout_rows, metrics.selection_rows, metrics.witnesses) == (16, 8, 2)
    assert metrics.holdout_auroc is not None
    assert metrics.holdout_cost_apgr is not None
    assert manifest.label.startswith("1 when the candidate")
    shares = [point.cheap_share for point in manifest.calibration]
    assert shares == sorted(shares, reverse=True)


def test_a_damaged_model_fails_the_sha256_check(tiny: TinyVerifier, tmp_path: Path) -> None:
    """A verifier whose file differs from its manifest's sha256 refuses to load."""
    copy = Path(shutil.copytree(tiny.folder, tmp_path / "copy"))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxVerifier(copy)


def test_verifiers_and_scorers_are_not_interchangeable(tiny: TinyVerifier) -> None:
    """A scorer refuses a verifier folder and a verifier refuses a scorer, saying which is which."""
    with pytest.raises(ScorerError, match="is a verifier, not a scorer"):
        OnnxScorer(tiny.folder)
    with pytest.raises(ScorerError, match="is a scorer, not a verifier"):
        OnnxVerifier("prompt-features-v1")


def test_a_kind_that_contradicts_the_input_is_refused(tiny: TinyVerifier, tmp_path: Path) -> None:
    """A manifest saying "scorer" over answer features names the field and what it feeds."""
    copy = Path(shutil.copytree(tiny.folder, tmp_path / "copy"))
    raw = json.loads((copy / "manifest.json").read_text("utf-8"))
    raw["kind"] = "scorer"
    (copy / "manifest.json").write_text(json.dumps(raw), "utf-8")
    with pytest.raises(ScorerError, match=r"field 'kind': .* feeds a 'verifier'"):
        load_manifest(copy)


def test_splits_must_be_disjoint_and_present(tmp_path: Path) -> None:
    """A task in two splits, or one the data lacks, is refused before anything is fitted."""
    with pytest.raises(TrainingError, match="in both the fit and the holdout"):
        _train_tiny(tmp_path, holdout=("gsm8k",))
    with pytest.raises(TrainingError, match="not in the data: mmlu_pro:law"):
        _train_tiny(tmp_path, holdout=("mmlu_pro:law",))


def test_answers_files_read_compressed_and_name_bad_lines(tmp_path: Path) -> None:
    """xz files read like plain ones; an invalid row names file, line and field."""
    packed = tmp_path / "answers.jsonl.xz"
    packed.write_bytes(lzma.compress(FIXTURE.read_bytes()))
    assert load_answers([packed]) == load_answers([FIXTURE])
    row = json.loads(FIXTURE.read_text("utf-8").split("\n")[0])
    row["weak_score"] = 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n" + json.dumps(row) + "\n", "utf-8")
    with pytest.raises(LabeledDataError, match=r"bad\.jsonl:2: field 'weak_score'"):
        load_answers([bad])


def test_shipped_verifier_matches_its_manifest() -> None:
    """The shipped verifier's file has its manifest's sha256, today's features, and parity."""
    folder = model_dir("verifier-v2")
    manifest = load_manifest(folder)
    assert manifest.kind == "verifier"
    assert manifest.sha256 == hashlib.sha256((folder / manifest.file).read_bytes()).hexdigest()
    assert manifest.feature_version == ANSWER_FEATURES_VERSION
    assert manifest.parity.max_abs_diff <= 1e-5


def test_agreeing_witnesses_raise_the_shipped_verifiers_confidence() -> None:
    """Witnesses that reach the candidate's answer make it likelier to be accepted; a single
    call and a batch agree."""
    verifier = OnnxVerifier()
    agree = verifier.confidence(MC_PROMPT, "The answer is (B).", ["The answer is (B).", "B"])
    split = verifier.confidence(MC_PROMPT, "The answer is (B).", ["The answer is (A).", "C"])
    assert 0.0 <= split < agree <= 1.0
    batch = verifier.confidence_batch(
        [Verification(MC_PROMPT, "The answer is (B).", ("The answer is (B).", "B"))]
    )
    assert batch == [pytest.approx(agree, abs=1e-7)]
    assert verifier.confidence_batch([]) == []


def test_importing_the_verifier_runtime_is_cheap() -> None:
    """``import cascade.model.verifier`` loads neither onnxruntime nor scikit-learn."""
    heavy = "('sklearn', 'onnx', 'onnxruntime')"
    code = f"import sys, cascade.model.verifier; print(sorted(set({heavy}) & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("prompt", "candidate", "judged"),
    [
        ("What is 17*3?", "17*3 = 51", True),  # a number
        (MC_PROMPT, "I think it is B.", True),  # an option letter
        ("Give the output.", '{"reasoning": "...", "answer": "abc"}', True),  # stated
        ("Write f(x) returning x+1.", "```python\ndef f(x):\n    return x + 1\n```", True),
        ("Capital of France?", "The capital of France is Paris.", False),  # open-ended
        (
            "Write a haiku about rain.",
            "Soft rain on the roof\nwhispers to the sleeping town",
            False,
        ),
    ],
)
def test_the_verifier_says_which_answers_it_can_judge(
    prompt: str, candidate: str, judged: bool
) -> None:
    assert OnnxVerifier().can_judge(prompt, candidate) is judged
