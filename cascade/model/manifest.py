"""A router model's manifest: ``router_models/<name>/manifest.json``, parsed and checked.

The manifest says what the model file is (sha256, opset), what it expects (input name, shape and
the preprocessing function, with its feature version), what it outputs, what it was trained on,
how its thresholds translate into traffic kept on the cheap tier, and what was measured.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args

from cascade.errors import ScorerError
from cascade.model.answer_features import ANSWER_FEATURE_NAMES, ANSWER_FEATURES_VERSION
from cascade.model.features import FEATURE_NAMES, FEATURE_VERSION, PROMPT_FEATURES_VERSION

FORMAT_VERSION = 1
ModelKind = Literal["scorer", "verifier"]
"""A scorer reads a prompt (P(the weak tier suffices)); a verifier reads a candidate answer and
its witnesses (P(the candidate is good enough))."""
# Stable names of the input contracts, written into every manifest: they name the functions
# by where they lived when the contract was made (now cascade.model.features) and never change.
PREPROCESSING = "cascade.features.normalize"
FEATURES_PREPROCESSING = "cascade.features.prompt_features"
"""The float-input contract: each prompt becomes one row of ``prompt_features`` values."""
ANSWER_PREPROCESSING = "cascade.model.answer_features.answer_features"
"""The verifier's contract: each candidate with its witnesses becomes one row of features."""
# what each preprocessing function feeds the graph: (kind, dtype, shape, feature version)
INPUT_CONTRACTS: dict[str, tuple[ModelKind, str, tuple[int | None, ...], str]] = {
    PREPROCESSING: ("scorer", "string", (None, 1), FEATURE_VERSION),
    FEATURES_PREPROCESSING: (
        "scorer",
        "float",
        (None, len(FEATURE_NAMES)),
        PROMPT_FEATURES_VERSION,
    ),
    ANSWER_PREPROCESSING: (
        "verifier",
        "float",
        (None, len(ANSWER_FEATURE_NAMES)),
        ANSWER_FEATURES_VERSION,
    ),
}


@dataclass(frozen=True)
class ModelInput:
    """The model's input tensor: prompts after ``preprocessing``, one per row.

    ``string`` ``[N, 1]`` with :func:`~cascade.model.features.normalize`, or ``float``
    ``[N, K]`` with :func:`~cascade.model.features.prompt_features`.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    preprocessing: str


@dataclass(frozen=True)
class ModelOutput:
    """The probability tensor and the column holding P(the weak tier suffices)."""

    name: str
    column: int


@dataclass(frozen=True)
class DataFile:
    """One labeled-traffic file the model was trained on."""

    file: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class CalibrationPoint:
    """Share of training prompts whose confidence is >= ``threshold`` (kept on the cheap tier)."""

    threshold: float
    cheap_share: float


@dataclass(frozen=True)
class Metrics:
    """Measured quality: AUROC of the confidence against the label, and label base rates."""

    holdout_tasks: tuple[str, ...]
    holdout_rows: int
    holdout_auroc: float | None
    dev_files: tuple[str, ...]
    dev_rows: int
    dev_auroc: float | None
    base_rate_train: float
    base_rate_holdout: float | None
    base_rate_dev: float | None
    holdout_apgr: float | None = None
    dev_apgr: float | None = None
    selection_tasks: tuple[str, ...] = ()
    """Tasks the model and its settings were chosen on (neither fitted nor reported on)."""
    selection_rows: int | None = None
    selection_auroc: float | None = None
    selection_apgr: float | None = None
    holdout_cost_apgr: float | None = None
    """Verifiers: area under PGR against total cost (witnesses always paid) / all-strong cost."""
    witnesses: int | None = None
    """Verifiers: witnesses per candidate in the measured numbers."""


@dataclass(frozen=True)
class Parity:
    """Largest |ONNX - scikit-learn| confidence over ``texts`` messy prompts at export time."""

    max_abs_diff: float
    texts: int


@dataclass(frozen=True)
class Manifest:
    """A model folder's ``manifest.json``: what the file is, how to feed it, how good it is."""

    name: str
    format_version: int
    file: str
    sha256: str
    opset: int
    feature_version: str
    input: ModelInput
    output: ModelOutput
    label: str
    training_data: tuple[DataFile, ...]
    calibration: tuple[CalibrationPoint, ...]
    metrics: Metrics
    parity: Parity
    created_by: str
    toolchain: dict[str, str]
    base_model: str | None = None
    """The model this one adapts (``cascade train --base``), or None when trained from scratch."""
    kind: ModelKind = "scorer"
    """What the model reads and estimates (absent in manifests written before verifiers)."""

    def to_json(self) -> str:
        """The manifest as written to ``manifest.json`` (stable key order, trailing newline)."""
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"


def load_manifest(directory: Path) -> Manifest:
    """Read and check ``directory/manifest.json``; a :class:`ScorerError` names any bad field."""
    path = directory / "manifest.json"
    try:
        raw: object = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScorerError(
            f"{path}: missing; a model folder holds model.onnx and manifest.json"
        ) from None
    except (OSError, UnicodeError, json.JSONDecodeError) as exc:
        raise ScorerError(
            f"{path}: not readable JSON ({exc}); restore or retrain the model"
        ) from exc
    return _parse_manifest(_Fields(raw, str(path), ""))


class _Fields:
    """Typed access to one JSON object; failures name the file and the dotted field path."""

    def __init__(self, value: object, source: str, path: str) -> None:
        self.source, self.path = source, path
        if not isinstance(value, dict):
            self.fail(path or "manifest", f"expected an object, got {type(value).__name__}")
        self.value: dict[str, Any] = value

    def fail(self, field: str, problem: str) -> NoReturn:
        raise ScorerError(
            f"{self.source}: field {field!r}: {problem}; retrain or reinstall the model"
        )

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        field = f"{self.path}.{key}".lstrip(".")
        if key not in self.value:
            self.fail(field, "missing")
        value = self.value[key]
        # bool passes isinstance(_, int) but is never a valid count, index or rate here
        if isinstance(value, bool) or not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            self.fail(field, f"expected {wanted}, got {json.dumps(value)[:60]}")
        return value

    def text(self, key: str) -> str:
        return str(self.get(key, str))

    def integer(self, key: str) -> int:
        return int(self.get(key, int))

    def number(self, key: str) -> float:
        return float(self.get(key, (int, float)))

    def optional_number(self, key: str) -> float | None:
        value = self.get(key, (int, float, type(None)))
        return None if value is None else float(value)

    def texts(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list)
        if not all(isinstance(v, str) for v in values):
            self.fail(f"{self.path}.{key}".lstrip("."), "expected a list of strings")
        return tuple(values)

    def child(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), self.source, f"{self.path}.{key}".lstrip("."))

    def children(self, key: str) -> list[_Fields]:
        field = f"{self.path}.{key}".lstrip(".")
        return [_Fields(v, self.source, f"{field}[{i}]") for i, v in enumerate(self.get(key, list))]


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", type(None): "null"}


def _parse_manifest(m: _Fields) -> Manifest:
    if (version := m.integer("format_version")) != FORMAT_VERSION:
        m.fail("format_version", f"this cascade reads version {FORMAT_VERSION}, got {version}")
    inp = m.child("input")
    if (preprocessing := inp.text("preprocessing")) not in INPUT_CONTRACTS:
        known = " or ".join(map(repr, INPUT_CONTRACTS))
        inp.fail("input.preprocessing", f"only {known} is known, got {preprocessing!r}")
    kind, dtype, shape, computed = INPUT_CONTRACTS[preprocessing]
    if (stated := m.value.get("kind", "scorer")) != kind:
        allowed = " or ".join(map(repr, get_args(ModelKind)))
        m.fail("kind", f"{preprocessing} feeds a {kind!r} (kinds: {allowed}), got {stated!r}")
    if (feature_version := m.text("feature_version")) != computed:
        m.fail(
            "feature_version",
            f"the model needs features {feature_version!r}, this cascade computes {computed!r}",
        )
    if Path(file := m.text("file")).name != file or file in {"", ".", ".."}:
        m.fail("file", f"must name a file inside the model folder, got {file!r}")
    out, metrics, parity = (
        m.child("output"),
        m.child("metrics"),
        m.child("parity"),
    )
    if (got := inp.text("dtype")) != dtype:
        inp.fail("input.dtype", f"{preprocessing} feeds {dtype!r}, got {got!r}")
    if (got_shape := tuple(inp.get("shape", list))) != shape:
        wanted = str(list(shape)).replace("None", "null")
        inp.fail("input.shape", f"expected {wanted}, got {list(got_shape)}")
    return Manifest(
        name=m.text("name"),
        format_version=version,
        file=file,
        sha256=m.text("sha256").lower(),
        opset=m.integer("opset"),
        feature_version=feature_version,
        input=ModelInput(inp.text("name"), dtype, shape, preprocessing),
        output=ModelOutput(out.text("name"), out.integer("column")),
        label=m.text("label"),
        training_data=tuple(
            DataFile(d.text("file"), d.integer("rows"), d.text("sha256"))
            for d in m.children("training_data")
        ),
        calibration=tuple(
            CalibrationPoint(c.number("threshold"), c.number("cheap_share"))
            for c in m.children("calibration")
        ),
        metrics=Metrics(
            holdout_tasks=metrics.texts("holdout_tasks"),
            holdout_rows=metrics.integer("holdout_rows"),
            holdout_auroc=metrics.optional_number("holdout_auroc"),
            dev_files=metrics.texts("dev_files"),
            dev_rows=metrics.integer("dev_rows"),
            dev_auroc=metrics.optional_number("dev_auroc"),
            base_rate_train=metrics.number("base_rate_train"),
            base_rate_holdout=metrics.optional_number("base_rate_holdout"),
            base_rate_dev=metrics.optional_number("base_rate_dev"),
            holdout_apgr=_optional(metrics, "holdout_apgr"),
            dev_apgr=_optional(metrics, "dev_apgr"),
            selection_tasks=metrics.texts("selection_tasks")
            if "selection_tasks" in metrics.value
            else (),
            selection_rows=_optional_int(metrics, "selection_rows"),
            selection_auroc=_optional(metrics, "selection_auroc"),
            selection_apgr=_optional(metrics, "selection_apgr"),
            holdout_cost_apgr=_optional(metrics, "holdout_cost_apgr"),
            witnesses=_optional_int(metrics, "witnesses"),
        ),
        parity=Parity(parity.number("max_abs_diff"), parity.integer("texts")),
        created_by=m.text("created_by"),
        toolchain={k: str(v) for k, v in m.get("toolchain", dict).items()},
        base_model=m.get("base_model", (str, type(None))) if "base_model" in m.value else None,
        kind=kind,
    )


def _optional(fields: _Fields, key: str) -> float | None:
    """A number added after format 1 was first written: absent in older manifests."""
    return fields.optional_number(key) if key in fields.value else None


def _optional_int(fields: _Fields, key: str) -> int | None:
    """A count added after format 1 was first written: absent or null when not measured."""
    if key not in fields.value or fields.value[key] is None:
        return None
    return fields.integer(key)
