"""Authored obvious prompts in training: rows marked ``anchor_weight`` correct the anchored
columns only, stay out of the calibration table and the metrics, and older models are
re-exported for today's columns without changing a score."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import LabeledDataError, TrainingError
from cascade.model.features import ANCHORED_FEATURES, FEATURE_NAMES
from cascade.model.scorer import OnnxScorer
from cascade.resources import model_dir
from cascade.training.evaluation import Outcomes
from cascade.training.feature_model import (
    Anchors,
    anchor_confidence,
    feature_matrix,
    fit_confidence,
    onnx_confidence,
    reference_confidence,
)
from cascade.training.obvious import Family, expand, load_families
from cascade.training.reexport import reexport
from cascade.training.traffic import load_labeled
from cascade.training.train import PARITY_TEXTS, train_model

QUESTIONS = (
    "A train leaves at {n} km/h and another follows at {m} km/h. When does it catch up?",
    "Which of the following best describes the role of {w} in the economy?\nA. one\nB. two",
    "If a shop sells {n} apples for ${m}, how much do {m} apples cost?",
)
EASY = ("Hi!", "Hello there", "Thanks a lot!", "Good morning :)", "Merci beaucoup", "Hey hey")
HARD = (
    "Prove that every compact metric space is complete.",
    "Implement a lock-free queue in Rust with hazard pointers.",
    "Design a consensus protocol that tolerates Byzantine replicas.",
    "Derive the Euler-Lagrange equations from the action principle.",
)
ANCHORED = [FEATURE_NAMES.index(name) for name in ANCHORED_FEATURES]


def _traffic(count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(count):
        prompt = QUESTIONS[i % 3].format(n=rng.randint(2, 90), m=rng.randint(2, 9), w="banks")
        weak = float(rng.random() < (0.5 if "$" in prompt else 0.85))
        rows.append({
            "id": f"t-{i}", "task": f"bench/{i % 3}", "prompt": prompt, "weak_score": weak,
            "strong_score": 1.0, "weak_cost_usd": 1e-5, "strong_cost_usd": 3e-4,
        })  # fmt: skip
    return rows


def _authored(weight: float) -> list[dict[str, object]]:
    return [
        {
            "id": f"a-{i}",
            "task": "obvious/x",
            "prompt": prompt,
            "weak_score": float(easy),
            "strong_score": 1.0,
            "weak_cost_usd": 1e-6,
            "strong_cost_usd": 1e-4,
            "anchor_weight": weight,
        }
        for i, (prompt, easy) in enumerate(
            [*((p, True) for p in EASY), *((p, False) for p in HARD)]
        )
    ]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def test_anchor_weight_is_read_and_checked(tmp_path: Path) -> None:
    """``anchor_weight`` marks an authored row; zero or text is refused with file:line."""
    path = _write(tmp_path / "rows.jsonl", [*_traffic(1, 0), *_authored(5.0)[:1]])
    traffic, authored = load_labeled([path])
    assert (traffic.anchor_weight, authored.anchor_weight) == (None, 5.0)
    for bad in (0, "5"):
        _write(path, [{**_authored(1.0)[0], "anchor_weight": bad}])
        with pytest.raises(LabeledDataError, match=r"rows\.jsonl:1: field 'anchor_weight'"):
            load_labeled([path])


def test_anchoring_moves_only_the_anchored_columns() -> None:
    """The corrected model keeps every other weight; the folded weights equal the fitted steps,
    and authored easy prompts end up above authored hard ones."""
    rows = _traffic(400, 1)
    features = feature_matrix([str(r["prompt"]) for r in rows])
    outcomes = Outcomes(
        np.array([r["weak_score"] for r in rows], dtype=float),
        np.ones(len(rows)),
        np.full(len(rows), 1e-5),
        np.full(len(rows), 3e-4),
    )
    base = fit_confidence(features, outcomes)
    authored = feature_matrix([*EASY, *HARD])
    easy = np.array([1.0] * len(EASY) + [0.0] * len(HARD))
    anchors = Anchors(authored, Outcomes(easy, np.ones(len(easy)), easy, easy), np.full(10, 20.0))
    model = anchor_confidence(base, features, outcomes, anchors)
    others = [i for i in range(len(FEATURE_NAMES)) if i not in ANCHORED]
    assert np.array_equal(model.weights[others], base.weights[others])
    assert not np.allclose(model.weights[ANCHORED], base.weights[ANCHORED])
    texts = feature_matrix([*PARITY_TEXTS, *EASY, *HARD])
    assert np.abs(reference_confidence(model, texts) - model.confidence(texts)).max() < 1e-9
    scores = model.confidence(authored)
    assert scores[: len(EASY)].min() > scores[len(EASY) :].max()


def test_authored_rows_train_but_are_not_traffic(tmp_path: Path) -> None:
    """Authored rows are listed as training data but count in neither the calibration table nor
    the base rate, and the model ranks authored easy prompts above hard ones."""
    traffic = _write(tmp_path / "traffic.jsonl", _traffic(300, 2))
    authored = _write(tmp_path / "obvious.jsonl", _authored(30.0))
    manifest, _ = train_model([traffic, authored], tmp_path / "m", name="m", holdout_tasks=[])
    plain, _ = train_model([traffic], tmp_path / "p", name="p", holdout_tasks=[])
    assert [d.file for d in manifest.training_data] == ["traffic.jsonl", "obvious.jsonl"]
    assert manifest.metrics.base_rate_train == plain.metrics.base_rate_train
    scorer = OnnxScorer(tmp_path / "m", device="cpu")
    assert min(scorer.score_batch(list(EASY))) > max(scorer.score_batch(list(HARD)))
    confidence = np.array(scorer.score_batch([str(r["prompt"]) for r in _traffic(300, 2)]))
    kept = {p.threshold: p.cheap_share for p in manifest.calibration}
    assert kept[0.5] == round(float(np.mean(confidence >= 0.5)), 4)


def test_authored_rows_alone_are_refused(tmp_path: Path) -> None:
    """Authored rows only correct a model fitted on traffic; without traffic training stops."""
    authored = _write(tmp_path / "obvious.jsonl", _authored(3.0))
    with pytest.raises(TrainingError, match="every row is authored"):
        train_model([authored], tmp_path / "m", name="m", holdout_tasks=[])


def test_an_older_model_is_reexported_with_the_same_scores(tmp_path: Path) -> None:
    """A model written for v1's 25 columns loads after re-export and scores exactly as before."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 - test of an export

    folder = tmp_path / "old"
    shutil.copytree(model_dir("prompt-features-v2"), folder)
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.3, (25, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "weights"], ["dot"]),
            helper.make_node("Add", ["dot", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p_weak"]),
            helper.make_node("Sub", ["one", "p_weak"], ["p_strong"]),
            helper.make_node("Concat", ["p_strong", "p_weak"], ["probabilities"], axis=1),
        ],
        "old",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 25])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([0.4], dtype=np.float32), "bias"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    old = onnx_model.SerializeToString()
    (folder / "model.onnx").write_bytes(old)
    raw = json.loads((folder / "manifest.json").read_text("utf-8"))
    raw.update(sha256=hashlib.sha256(old).hexdigest(), feature_version="prompt-features-v1")
    raw["input"]["shape"] = [None, 25]
    (folder / "manifest.json").write_text(json.dumps(raw), "utf-8")
    reexport(folder)
    texts = [*PARITY_TEXTS, *EASY, *HARD]
    before = onnx_confidence(old, feature_matrix(texts)[:, :25])
    after = np.array(OnnxScorer(folder, device="cpu").score_batch(texts))
    assert np.abs(after - before).max() < 1e-6
    assert (
        "re-exported from feature_version prompt-features-v1"
        in json.loads((folder / "manifest.json").read_text("utf-8"))["created_by"]
    )


def test_check_families_share_nothing_with_fit_families(tmp_path: Path) -> None:
    """A filler or template in both splits is refused: the check split would not be held out."""
    path = tmp_path / "families.yaml"
    path.write_text(
        "per_template: 5\nfamilies:\n"
        "  a: {label: easy, split: fit, templates: ['Hi {x}'], fillers: {x: [Ana, Tom]}}\n"
        "  b: {label: easy, split: check, templates: ['Hello {x}'], fillers: {x: [Tom]}}\n",
        "utf-8",
    )
    with pytest.raises(TrainingError, match=r"fit and check splits share \['tom'\]"):
        load_families(path)


def test_expansion_is_capped_and_repeatable() -> None:
    """Each template yields at most ``per_template`` prompts, the same ones on every run."""
    family = Family(
        "f", "hard", "fit", ("Prove {a} for {b}.",), {"a": ("x", "y", "z"), "b": ("1", "2", "3")}
    )
    once = expand(family, 4)
    assert len(once) == 4
    assert once == expand(family, 4)
    assert len(expand(family, 100)) == 9
