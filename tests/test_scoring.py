"""The ONNX scorer runtime: integrity checks, manifest errors and scores of the shipped model."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cascade.errors import (
    ModelIntegrityError,
    ResourceNotFoundError,
    RuntimeMissingError,
    ScorerError,
)
from cascade.model.features import FEATURE_VERSION
from cascade.model.manifest import load_manifest
from cascade.model.scorer import OnnxScorer, choose_providers
from cascade.resources import model_dir
from cascade.training.train import PARITY_TEXTS

SHIPPED = "tfidf-lr-v1"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def scorer() -> OnnxScorer:
    """The shipped model on the CPU, loaded once."""
    return OnnxScorer(SHIPPED, device="cpu")


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped model folder."""
    return Path(shutil.copytree(model_dir(SHIPPED), tmp_path / SHIPPED))


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "manifest.json"
    raw = json.loads(path.read_text("utf-8"))
    edit(raw)
    path.write_text(json.dumps(raw), "utf-8")


def test_shipped_manifest_matches_its_file() -> None:
    """The shipped manifest parses, records the model file's real sha256 and today's features."""
    folder = model_dir(SHIPPED)
    manifest = load_manifest(folder)
    assert manifest.name == SHIPPED
    assert manifest.sha256 == hashlib.sha256((folder / manifest.file).read_bytes()).hexdigest()
    assert manifest.feature_version == FEATURE_VERSION
    assert manifest.parity.max_abs_diff <= 1e-5


def test_scores_are_probabilities_and_deterministic(scorer: OnnxScorer) -> None:
    """Every score is a float in [0, 1], and the same prompt always gets the same score."""
    texts = [*PARITY_TEXTS, "What is 2 + 2?"]
    first = scorer.score_batch(texts)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in first)
    assert scorer.score_batch(texts) == first
    assert OnnxScorer(SHIPPED, device="cpu").score_batch(texts) == first


def test_batch_scores_equal_single_scores(scorer: OnnxScorer) -> None:
    """Scoring prompts of mixed lengths together gives each the score it gets alone."""
    texts = [*PARITY_TEXTS, "C# or F#? ## ### #### heading", "#"]
    batch = scorer.score_batch(texts)
    for text, together in zip(texts, batch, strict=True):
        assert scorer.score(text) == pytest.approx(together, abs=1e-6)
    assert scorer.score_batch([]) == []


def test_scoring_normalizes_the_prompt(scorer: OnnxScorer) -> None:
    """Case, width and whitespace differences in a prompt do not change its score."""
    assert scorer.score("  What IS\t\tthe capital\n\nof  France? ") == scorer.score(
        "what is the capital of france?"
    )
    assert scorer.score("\uff37\uff48\uff41\uff54 is 2+2?") == scorer.score("what is 2+2?")


def test_scorer_reports_what_it_runs_on(scorer: OnnxScorer) -> None:
    """A CPU scorer says it uses only the CPU provider."""
    assert scorer.device == "cpu"
    assert scorer.providers == (CPU,)


def test_provider_choice() -> None:
    """'auto' asks for CUDA first when offered, 'cpu' never does, 'cuda' fails without it."""
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("cuda", ["AzureExecutionProvider", CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(ScorerError, match=r"device='cuda'.*cascade-router\[gpu\]"):
        choose_providers("cuda", [CPU])


def test_cuda_without_cuda_is_an_error() -> None:
    """Asking for CUDA where onnxruntime cannot run it fails instead of silently using the CPU."""
    import onnxruntime  # noqa: PLC0415 - only to learn whether this machine offers CUDA

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this machine offers CUDA: the error case cannot happen here")
    with pytest.raises(ScorerError, match="device='cuda'"):
        OnnxScorer(SHIPPED, device="cuda")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_model_fails_integrity_check(model_copy: Path, damage: str) -> None:
    """A corrupted or truncated model file is refused with the file, both hashes and a remedy."""
    path = model_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3 :]
    path.write_bytes(bytes(data))
    expected = load_manifest(model_copy).sha256
    with pytest.raises(ModelIntegrityError) as caught:
        OnnxScorer(model_copy, device="cpu")
    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert "Reinstall" in message
    assert "re-train" in message


def test_unloadable_model_is_a_scorer_error(model_copy: Path) -> None:
    """A file that matches its manifest but is not ONNX fails as a ScorerError, not a raw trace."""
    (model_copy / "model.onnx").write_bytes(b"not an onnx model")
    digest = hashlib.sha256(b"not an onnx model").hexdigest()
    _edit_manifest(model_copy, lambda raw: raw.update(sha256=digest))
    with pytest.raises(ScorerError, match="onnxruntime cannot load the model") as caught:
        OnnxScorer(model_copy, device="cpu")
    assert not isinstance(caught.value, ModelIntegrityError)


@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        (lambda raw: raw.pop("sha256"), "sha256", "missing"),
        (lambda raw: raw["input"].pop("name"), "input.name", "missing"),
        (lambda raw: raw["output"].update(column="1"), "output.column", "expected int"),
        (
            lambda raw: raw["calibration"][2].pop("cheap_share"),
            "calibration[2].cheap_share",
            "missing",
        ),
        (lambda raw: raw.update(metrics=[]), "metrics", "expected an object"),
        (lambda raw: raw.update(feature_version="norm-v0"), "feature_version", "norm-v0"),
        (lambda raw: raw.update(file="../model.onnx"), "file", "inside the model folder"),
        (lambda raw: raw["input"].update(shape=[None, 2]), "input.shape", "expected [null, 1]"),
    ],
)
def test_bad_manifest_names_the_field(
    model_copy: Path, edit: Callable[[dict[str, Any]], None], field: str, problem: str
) -> None:
    """A manifest with a missing or wrong field fails with the file, the field and the problem."""
    _edit_manifest(model_copy, edit)
    with pytest.raises(ScorerError) as caught:
        OnnxScorer(model_copy, device="cpu")
    message = str(caught.value)
    assert str(model_copy / "manifest.json") in message
    assert f"field {field!r}" in message
    assert problem in message


def test_missing_or_broken_manifest(model_copy: Path) -> None:
    """A folder without a manifest, or with one that is not JSON, fails naming the file."""
    manifest = model_copy / "manifest.json"
    manifest.write_text("{ not json", "utf-8")
    with pytest.raises(ScorerError, match=r"manifest\.json: not readable JSON"):
        OnnxScorer(model_copy)
    manifest.unlink()
    with pytest.raises(ScorerError, match=r"manifest\.json: missing"):
        OnnxScorer(model_copy)


def test_unknown_model_name_lists_the_shipped_ones() -> None:
    """An unknown model name fails and says which models are shipped."""
    with pytest.raises(ResourceNotFoundError, match=SHIPPED):
        OnnxScorer("no-such-model")


def test_missing_onnxruntime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime the scorer says to install the cpu or gpu extra."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(RuntimeMissingError, match=r'pip install "cascade-router\[cpu\]"'):
        OnnxScorer(SHIPPED)


def test_invalid_arguments_are_refused() -> None:
    """An unknown device or a negative thread count is a ValueError before anything loads."""
    with pytest.raises(ValueError, match="device"):
        OnnxScorer(SHIPPED, device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxScorer(SHIPPED, intra_op_threads=-1)
