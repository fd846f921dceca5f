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

Anchoring (:func:`anchor_confidence`): benchmark traffic never greets, thanks or asks for a
lock-free queue, so the columns that describe such prompts
(:data:`~cascade.model.features.ANCHORED_FEATURES`) get almost nothing from it. Authored
obvious prompts (``anchor_weight`` rows) fit a correction on those columns only, on top of the
fitted model: a logistic regression on the label over traffic and authored rows together (each
authored row counting ``anchor_weight`` traffic rows), with the fitted model's logit as a fixed
offset. The other columns keep the weights traffic gave them, so traffic is ranked as before
wherever the anchored columns are zero. (A label, not the gain: an authored easy prompt is
"weak suffices", with no measured gain to regress on.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade.errors import TrainingError
from cascade.model.features import ANCHORED_FEATURES, FEATURE_NAMES, prompt_features
from cascade.training.evaluation import Outcomes

__all__ = [
    "ALPHA",
    "ANCHOR_ALPHA",
    "Anchors",
    "LinearConfidence",
    "anchor_confidence",
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
ANCHOR_ALPHA = 10.0
"""L2 penalty on the anchored columns' (standardized) correction weights."""
_ANCHORED = [FEATURE_NAMES.index(name) for name in ANCHORED_FEATURES]
_NEWTON_STEPS = 100
_BASE_SCALE = 100.0
_INPUT, _OUTPUT = "features", "probabilities"


@dataclass(frozen=True)
class LinearConfidence:
    """P(weak suffices) = sigmoid(features @ weights + bias); ``reference`` is sklearn's path."""

    weights: np.ndarray
    bias: float
    # scikit-learn's own logit through the fitted, unfolded objects (for the parity check)
    reference: Callable[[np.ndarray], np.ndarray] | None = None

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """P(the weak tier suffices) for a feature matrix, in float64."""
        return _sigmoid(features @ self.weights + self.bias)

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
    row_weights: np.ndarray | None = None,
) -> LinearConfidence:
    """Fit the model (or, with ``base``, a correction of it) on rows with known outcomes;
    ``row_weights``: how much each row counts (importance weights; None: each row once)."""
    from sklearn.linear_model import LogisticRegression, Ridge  # noqa: PLC0415 - train-only
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415 - train-only

    labels = outcomes.weak_suffices
    if len(set(labels.tolist())) != 2:
        raise TrainingError(f"need prompts of both labels to train, got only {set(labels)}")
    inputs = _inputs(features, base)
    scaler = StandardScaler().fit(inputs)
    if base is not None:  # the base logit enters scaled up, so its coefficient is barely shrunk
        scaler.mean_[0], scaler.scale_[0] = 0.0, 1.0 / _BASE_SCALE
    gain = outcomes.weak_score - outcomes.strong_score
    ridge = Ridge(alpha=alpha).fit(scaler.transform(inputs), gain, sample_weight=row_weights)
    raw = ridge.predict(scaler.transform(inputs)).reshape(-1, 1)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(
        raw, labels.astype(np.int64), sample_weight=row_weights
    )
    a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    scaled = ridge.coef_ / scaler.scale_
    weights = a * scaled
    bias = a * (float(ridge.intercept_) - float(scaled @ scaler.mean_)) + b
    if base is not None:  # fold the base logit's term into the raw-feature weights
        bias += float(weights[0] * base.bias)
        weights = weights[1:] + weights[0] * base.weights

    def reference(x: np.ndarray) -> np.ndarray:
        return _platt(platt, ridge.predict(scaler.transform(_inputs(x, base))))

    return LinearConfidence(np.asarray(weights, dtype=np.float64), bias, reference)


@dataclass(frozen=True)
class Anchors:
    """Authored rows: their features, outcomes and how many traffic rows each counts as."""

    features: np.ndarray
    outcomes: Outcomes
    weights: np.ndarray


def anchor_confidence(
    model: LinearConfidence,
    features: np.ndarray,
    outcomes: Outcomes,
    anchors: Anchors,
    *,
    alpha: float = ANCHOR_ALPHA,
    traffic_weights: np.ndarray | None = None,
) -> LinearConfidence:
    """``model`` corrected on the anchored columns by authored rows, traffic weighing in too
    (each traffic row once, or by ``traffic_weights``).

    ``features`` and ``outcomes`` are the traffic ``model`` was fitted on. A logistic
    regression on the label (the weak tier suffices) over traffic and authored rows, with
    ``model``'s logit as a fixed offset, fits an intercept and one weight per standardized
    anchored column (L2 penalty ``alpha``); ``model``'s other weights stay as they are.
    """
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415 - train-only

    both = np.vstack([features, anchors.features])
    offset = model.logit(both)
    labels = np.concatenate([outcomes.weak_suffices, anchors.outcomes.weak_suffices]) * 1.0
    traffic = np.ones(len(features)) if traffic_weights is None else traffic_weights
    row_weights = np.concatenate([traffic, anchors.weights])
    scaler = StandardScaler().fit(both[:, _ANCHORED], sample_weight=row_weights)
    columns = np.column_stack([np.ones(len(both)), scaler.transform(both[:, _ANCHORED])])
    penalty = np.full(columns.shape[1], alpha)
    penalty[0] = 0.0  # the intercept is not shrunk

    def loss(theta: np.ndarray) -> float:
        eta = offset + columns @ theta
        log_loss = row_weights @ (np.logaddexp(0.0, eta) - labels * eta)
        return float(log_loss + 0.5 * penalty @ theta**2)

    theta = np.zeros(columns.shape[1])
    current = loss(theta)
    for _ in range(_NEWTON_STEPS):  # damped Newton: the penalized log-loss is convex
        p = _sigmoid(offset + columns @ theta)
        gradient = columns.T @ (row_weights * (p - labels)) + penalty * theta
        hessian = (columns * (row_weights * p * (1.0 - p))[:, None]).T @ columns
        step = np.linalg.solve(hessian + np.diag(penalty), gradient)
        size = 1.0
        while (trial := loss(theta - size * step)) > current and size > 1e-6:
            size /= 2
        theta, previous, current = theta - size * step, current, trial
        if previous - current <= 1e-12 * max(1.0, abs(current)):
            break
    else:
        raise TrainingError("the anchored correction did not converge; lower anchor_weight")
    correction = np.zeros(len(FEATURE_NAMES))
    correction[_ANCHORED] = theta[1:] / scaler.scale_
    weights = model.weights + correction
    bias = model.bias + float(theta[0]) - float(correction[_ANCHORED] @ scaler.mean_)
    stage_one = model.reference

    def reference(x: np.ndarray) -> np.ndarray:  # unfolded: the offset, then the correction
        logit = model.logit(x) if stage_one is None else stage_one(x)
        return np.asarray(logit + theta[0] + scaler.transform(x[:, _ANCHORED]) @ theta[1:])

    return LinearConfidence(np.asarray(weights, dtype=np.float64), bias, reference)


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-logit)) without overflow for logits far from 0."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logit)))


def _platt(platt: Any, raw: np.ndarray) -> np.ndarray:
    """The Platt scaling's logit of P(label = 1) (classes 0 and 1, in that order)."""
    return np.asarray(platt.decision_function(raw.reshape(-1, 1)), dtype=np.float64)


def _inputs(features: np.ndarray, base: LinearConfidence | None) -> np.ndarray:
    return features if base is None else np.column_stack([base.logit(features), features])


def reference_confidence(model: LinearConfidence, features: np.ndarray) -> np.ndarray:
    """scikit-learn's own P(weak suffices) through the fitted, unfolded objects."""
    if model.reference is None:
        raise TrainingError("no scikit-learn objects behind this model (read from ONNX?)")
    return _sigmoid(model.reference(features))


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
    """The weights and bias of a model :func:`export_onnx` wrote (to adapt or re-export it).

    A model of an earlier feature version, whose columns are a prefix of today's, gets weight 0
    on the columns added since: it scores as it always did.
    """
    import onnx  # noqa: PLC0415 - train-only
    from onnx import numpy_helper  # noqa: PLC0415 - train-only

    found = {
        i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer
    }
    weights = found.get("weights")
    if weights is None or weights.ndim != 2 or not 0 < len(weights) <= len(FEATURE_NAMES):
        raise TrainingError(
            "the base model is not a prompt-features model of this version "
            f"(up to {len(FEATURE_NAMES)} weights); adapt a model trained by `cascade train`"
        )
    padded = np.zeros(len(FEATURE_NAMES))
    padded[: len(weights)] = weights.astype(np.float64).ravel()
    return LinearConfidence(padded, float(found["bias"].astype(np.float64)[0]))


def onnx_confidence(data: bytes, features: np.ndarray) -> np.ndarray:
    """onnxruntime's P(weak suffices) for a feature matrix, on CPU."""
    import onnxruntime  # noqa: PLC0415 - train-only

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run([_OUTPUT], {_INPUT: features.astype(np.float32)})
    return np.asarray(out[:, 1], dtype=np.float64)
