"""The prompt-features confidence model: a linear score of :func:`prompt_features`, as ONNX.

Fitting (scikit-learn): the features are standardized and a ridge regression predicts the
**quality the strong tier adds** (``strong_score - weak_score``), the quantity whose ordering
decides the cost-quality curve; heavy shrinkage (``alpha``) keeps it from leaning on any one
feature. A one-dimensional logistic regression then maps that score to P(the weak tier
suffices) (Platt scaling), which is monotone and so leaves the routing order unchanged. The
three steps fold into one logit ``x @ weights + bias``: the ONNX graph is MatMul, Add, Sigmoid.

Adapting (``base=``): the base model's logit becomes one more feature, barely penalized, next to
the standardized features, so a few hundred rows of a team's own traffic fit a correction on
top of what the base model knows rather than a model from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade.errors import TrainingError
from cascade.model.features import FEATURE_NAMES, prompt_features
from cascade.training.evaluation import Outcomes

__all__ = [
    "ALPHA",
    "LinearConfidence",
    "export_onnx",
    "feature_matrix",
    "fit_confidence",
    "onnx_confidence",
    "read_onnx",
    "reference_confidence",
]

ALPHA = 3000.0
"""Ridge shrinkage, picked by grouped cross-validation over held-out training tasks (see CARD)."""
ADAPT_ALPHA = 300.0
"""Shrinkage of the correction fitted on a team's rows on top of a base model."""
_BASE_SCALE = 100.0
_INPUT, _OUTPUT = "features", "probabilities"


@dataclass(frozen=True)
class LinearConfidence:
    """P(weak suffices) = sigmoid(features @ weights + bias); ``reference`` is sklearn's path."""

    weights: np.ndarray
    bias: float
    reference: Any = None  # the fitted scikit-learn objects, for the parity check

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """P(the weak tier suffices) for a feature matrix, in float64."""
        return np.asarray(1.0 / (1.0 + np.exp(-(features @ self.weights + self.bias))))

    def logit(self, features: np.ndarray) -> np.ndarray:
        """The score before the sigmoid."""
        return np.asarray(features @ self.weights + self.bias)


def feature_matrix(prompts: list[str]) -> np.ndarray:
    """:func:`prompt_features` of each prompt, one row each (float64)."""
    rows = [prompt_features(p) for p in prompts]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def fit_confidence(
    features: np.ndarray,
    outcomes: Outcomes,
    *,
    alpha: float = ALPHA,
    base: LinearConfidence | None = None,
) -> LinearConfidence:
    """Fit the model (or, with ``base``, a correction of it) on rows with known outcomes."""
    from sklearn.linear_model import LogisticRegression, Ridge  # noqa: PLC0415 - train-only
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415 - train-only

    labels = outcomes.weak_suffices
    if len(set(labels.tolist())) != 2:
        raise TrainingError(f"need prompts of both labels to train, got only {set(labels)}")
    inputs = _inputs(features, base)
    scaler = StandardScaler().fit(inputs)
    if base is not None:  # the base logit enters scaled up, so its coefficient is barely shrunk
        scaler.mean_[0], scaler.scale_[0] = 0.0, 1.0 / _BASE_SCALE
    ridge = Ridge(alpha=alpha).fit(
        scaler.transform(inputs), outcomes.weak_score - outcomes.strong_score
    )
    raw = ridge.predict(scaler.transform(inputs)).reshape(-1, 1)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(raw, labels.astype(np.int64))
    a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    scaled = ridge.coef_ / scaler.scale_
    weights = a * scaled
    bias = a * (float(ridge.intercept_) - float(scaled @ scaler.mean_)) + b
    if base is not None:  # fold the base logit's term into the raw-feature weights
        bias += float(weights[0] * base.bias)
        weights = weights[1:] + weights[0] * base.weights
    return LinearConfidence(
        np.asarray(weights, dtype=np.float64), bias, (scaler, ridge, platt, base)
    )


def _inputs(features: np.ndarray, base: LinearConfidence | None) -> np.ndarray:
    return features if base is None else np.column_stack([base.logit(features), features])


def reference_confidence(model: LinearConfidence, features: np.ndarray) -> np.ndarray:
    """scikit-learn's own P(weak suffices) through the fitted, unfolded objects."""
    scaler, ridge, platt, base = model.reference
    raw = ridge.predict(scaler.transform(_inputs(features, base))).reshape(-1, 1)
    column = list(platt.classes_).index(1)
    return np.asarray(platt.predict_proba(raw)[:, column])


def export_onnx(model: LinearConfidence, opset: int = 17) -> bytes:
    """ONNX graph: ``features`` float [N, K] -> ``probabilities`` float [N, 2] (column 1 = P)."""
    from onnx import TensorProto, checker, helper, numpy_helper  # noqa: PLC0415 - train-only

    k = len(FEATURE_NAMES)
    weights = model.weights.astype(np.float32).reshape(k, 1)
    nodes = [
        helper.make_node("MatMul", [_INPUT, "weights"], ["dot"], "dot"),
        helper.make_node("Add", ["dot", "bias"], ["logit"], "add_bias"),
        helper.make_node("Sigmoid", ["logit"], ["p_weak"], "sigmoid"),
        helper.make_node("Sub", ["one", "p_weak"], ["p_strong"], "complement"),
        helper.make_node("Concat", ["p_strong", "p_weak"], [_OUTPUT], "columns", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cascade_prompt_features",
        [helper.make_tensor_value_info(_INPUT, TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info(_OUTPUT, TensorProto.FLOAT, [None, 2])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([model.bias], dtype=np.float32), "bias"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    onnx_model = helper.make_model(
        graph, producer_name="cascade", opset_imports=[helper.make_opsetid("", opset)]
    )
    onnx_model.ir_version = 8  # readable by onnxruntime releases of the last years
    checker.check_model(onnx_model)
    return bytes(onnx_model.SerializeToString())


def read_onnx(data: bytes) -> LinearConfidence:
    """The weights and bias of a model :func:`export_onnx` wrote (to adapt it)."""
    import onnx  # noqa: PLC0415 - train-only
    from onnx import numpy_helper  # noqa: PLC0415 - train-only

    found = {
        i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer
    }
    if "weights" not in found or found["weights"].shape != (len(FEATURE_NAMES), 1):
        raise TrainingError(
            "the base model is not a prompt-features model of this version "
            f"({len(FEATURE_NAMES)} weights); adapt a model trained by `cascade train`"
        )
    return LinearConfidence(
        found["weights"].astype(np.float64).ravel(), float(found["bias"].astype(np.float64)[0])
    )


def onnx_confidence(data: bytes, features: np.ndarray) -> np.ndarray:
    """onnxruntime's P(weak suffices) for a feature matrix, on CPU."""
    import onnxruntime  # noqa: PLC0415 - train-only

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run([_OUTPUT], {_INPUT: features.astype(np.float32)})
    return np.asarray(out[:, 1], dtype=np.float64)
