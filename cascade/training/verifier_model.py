"""The verifier model: P(candidate good) from :func:`answer_features`, fitted and exported to ONNX.

Two families, chosen between by :mod:`cascade.training.verifier_train` on held-out tasks:
logistic regression, and a one-hidden-layer perceptron (16 ReLU units), both on standardized
features. Columns that never vary in the fitting data (the logprob features, on data without
logprobs) are left out of the fit and get weight 0: a model must not react to evidence it never
saw. The scaler is folded into the first layer, so the ONNX graph is MatMul, Add (ReLU, MatMul,
Add), Sigmoid, and its output ``probabilities`` [N, 2] holds P(good) in column 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cascade.errors import TrainingError
from cascade.model.answer_features import ANSWER_FEATURE_NAMES

__all__ = [
    "Choice",
    "LayeredVerifier",
    "export_onnx",
    "fit_verifier",
    "onnx_confidence",
    "reference_confidence",
]

HIDDEN = 16
_INPUT, _OUTPUT = "features", "probabilities"


@dataclass(frozen=True)
class Choice:
    """One candidate setting: model family, its regularization, and how witnesses were drawn."""

    family: Literal["logistic", "mlp"]
    strength: float
    """``C`` of the logistic regression (smaller: stronger shrinkage), ``alpha`` of the MLP."""
    sampling: Literal["trio", "random"]
    """Training examples: the trio only, or the trio plus a random 1-3 witness draw per row."""
    target: Literal["correct", "suffices"] = "correct"
    """The label: the candidate is correct, or it is at least as good as the strong answer."""

    @property
    def label(self) -> str:
        """Short name, as the card's selection table prints it."""
        knob = "C" if self.family == "logistic" else "alpha"
        return (
            f"{self.family} {knob}={self.strength:g}, {self.sampling} witnesses, "
            f"label {self.target}"
        )


@dataclass(frozen=True)
class LayeredVerifier:
    """Dense layers on raw features (ReLU between), a sigmoid at the end."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    reference: Any = None  # (column mask, fitted sklearn pipeline), for the parity check

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """P(good) for a feature matrix, in float64."""
        hidden = np.asarray(features, dtype=np.float64)
        for i, (weights, bias) in enumerate(self.layers):
            hidden = hidden @ weights + bias
            if i < len(self.layers) - 1:
                hidden = np.maximum(hidden, 0.0)
        return np.asarray(1.0 / (1.0 + np.exp(-hidden[:, 0])))


def fit_verifier(
    features: np.ndarray, good: np.ndarray, choice: Choice, *, seed: int = 0
) -> LayeredVerifier:
    """Fit ``choice`` on examples; the scaler is folded into the first layer."""
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415 - train-only
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - train-only
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415 - train-only
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415 - train-only
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415 - train-only

    labels = np.asarray(good, dtype=np.int64)
    if len(set(labels.tolist())) != 2:
        raise TrainingError(f"need good and bad candidates to train, got only {set(labels)}")
    mask = features.std(axis=0) > 0
    classifier: Any = (
        LogisticRegression(C=choice.strength, max_iter=5000)
        if choice.family == "logistic"
        else MLPClassifier(
            hidden_layer_sizes=(HIDDEN,),
            alpha=choice.strength,
            solver="lbfgs",
            max_iter=2000,
            random_state=seed,
        )
    )
    pipeline = make_pipeline(StandardScaler(), classifier)
    with warnings.catch_warnings():
        # lbfgs may stop at max_iter on small or separable data; the selection split, not the
        # optimizer's tolerance, judges the result
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(features[:, mask], labels)
    scaler = pipeline[0]
    if choice.family == "logistic":
        raw = [(classifier.coef_.T, classifier.intercept_)]
    else:
        raw = list(zip(classifier.coefs_, classifier.intercepts_, strict=True))
    first_w, first_b = raw[0]
    scaled = first_w / scaler.scale_[:, None]
    folded = np.zeros((len(ANSWER_FEATURE_NAMES), first_w.shape[1]))
    folded[mask] = scaled
    layers = [(folded, first_b - scaler.mean_ @ scaled), *raw[1:]]
    return LayeredVerifier(
        tuple((np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in layers),
        (mask, pipeline),
    )


def reference_confidence(model: LayeredVerifier, features: np.ndarray) -> np.ndarray:
    """scikit-learn's own P(good) through the fitted, unfolded pipeline."""
    mask, pipeline = model.reference
    column = list(pipeline.classes_).index(1)
    return np.asarray(pipeline.predict_proba(features[:, mask])[:, column])


def export_onnx(model: LayeredVerifier, opset: int = 17) -> bytes:
    """ONNX graph: ``features`` float [N, K] -> ``probabilities`` float [N, 2] (column 1 = P)."""
    from onnx import TensorProto, checker, helper, numpy_helper  # noqa: PLC0415 - train-only

    nodes, initializers, current = [], [], _INPUT
    for i, (weights, bias) in enumerate(model.layers):
        initializers += [
            numpy_helper.from_array(weights.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(bias.astype(np.float32).reshape(-1), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"dot{i}"], f"dot{i}"),
            helper.make_node("Add", [f"dot{i}", f"b{i}"], [f"pre{i}"], f"add{i}"),
        ]
        current = f"pre{i}"
        if i < len(model.layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"act{i}"], f"relu{i}"))
            current = f"act{i}"
    initializers.append(numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"))
    nodes += [
        helper.make_node("Sigmoid", [current], ["p_good"], "sigmoid"),
        helper.make_node("Sub", ["one", "p_good"], ["p_bad"], "complement"),
        helper.make_node("Concat", ["p_bad", "p_good"], [_OUTPUT], "columns", axis=1),
    ]
    k = len(ANSWER_FEATURE_NAMES)
    graph = helper.make_graph(
        nodes,
        "cascade_verifier",
        [helper.make_tensor_value_info(_INPUT, TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info(_OUTPUT, TensorProto.FLOAT, [None, 2])],
        initializers,
    )
    onnx_model = helper.make_model(
        graph, producer_name="cascade", opset_imports=[helper.make_opsetid("", opset)]
    )
    onnx_model.ir_version = 8  # readable by onnxruntime releases of the last years
    checker.check_model(onnx_model)
    return bytes(onnx_model.SerializeToString())


def onnx_confidence(data: bytes, features: np.ndarray) -> np.ndarray:
    """onnxruntime's P(good) for a feature matrix, on CPU."""
    import onnxruntime  # noqa: PLC0415 - train-only

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run([_OUTPUT], {_INPUT: features.astype(np.float32)})
    return np.asarray(out[:, 1], dtype=np.float64)
