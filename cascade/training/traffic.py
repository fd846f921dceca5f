"""Labeled traffic: prompts with the real outcome of a weak and a strong tier on each.

JSONL, one object per line: ``id``, ``task``, ``prompt``, ``weak_score``, ``strong_score``,
``weak_cost_usd``, ``strong_cost_usd``. The team's routing data comes in it, ``cascade train``,
``eval`` and ``calibrate`` read it, and ``cascade export`` writes the ledger's traffic in it.

An optional ``anchor_weight`` (a number > 0) marks an **authored** row rather than observed
traffic: a prompt whose outcome is known by construction (a greeting any tier answers, a proof
the smallest one should not be trusted with; see :mod:`cascade.training.obvious`). ``cascade
train`` fits such rows only into the columns traffic barely exercises
(:data:`~cascade.model.features.ANCHORED_FEATURES`), each counting ``anchor_weight`` traffic
rows, and leaves them out of the calibration table and the metrics.

Rows ``cascade export`` writes from the ledger carry no prompt (the ledger never keeps one) but
the numbers the scorer saw: ``features`` (a list of numbers) with their ``feature_version``.
``cascade train``, ``eval`` and ``calibrate`` read such rows (``stored_features=True``) and use
the numbers as they are; readers that need the text (the verifier's data) refuse them. An
optional ``propensity`` (in (0, 1]) is the probability that the logged routing choice was made:
training weighs the row by its inverse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade.errors import LabeledDataError

__all__ = ["LabeledExample", "load_labeled"]


@dataclass(frozen=True)
class LabeledExample:
    """One prompt with the real outcome of the weak and the strong tier on it."""

    id: str
    task: str
    prompt: str
    weak_score: float
    strong_score: float
    weak_cost_usd: float
    strong_cost_usd: float
    anchor_weight: float | None = None
    features: tuple[float, ...] | None = None
    """The scorer's numbers for the prompt, from the ledger (then ``prompt`` is empty)."""
    feature_version: str | None = None
    """The version of the function that made ``features``."""
    propensity: float | None = None
    """The probability the logged routing choice had (None: not logged; weight 1)."""

    @property
    def weak_suffices(self) -> bool:
        """The label: the weak tier's answer is at least as good as the strong tier's."""
        return self.weak_score >= self.strong_score


def load_labeled(paths: Sequence[Path], *, stored_features: bool = False) -> list[LabeledExample]:
    """Read labeled-traffic JSONL files in order; blank lines are skipped.

    ``stored_features``: a row may have ``features`` (and ``feature_version``) instead of a
    prompt. Raises :class:`LabeledDataError` naming ``file:line`` and the field for any invalid
    row.
    """
    examples: list[LabeledExample] = []
    for path in paths:
        try:
            # split on "\n" only: str.splitlines() also splits on U+2028, \x0c and others that
            # JSON strings may hold raw
            lines = Path(path).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeError) as exc:
            raise LabeledDataError(f"{path}: cannot read labeled traffic: {exc}") from exc
        for number, line in enumerate(lines, start=1):
            if line.strip():
                examples.append(_parse_row(line, f"{path}:{number}", stored_features))
    if not examples:
        raise LabeledDataError(f"no labeled rows in {', '.join(map(str, paths)) or '(no files)'}")
    return examples


def _parse_row(line: str, where: str, stored_features: bool) -> LabeledExample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LabeledDataError(f"{where}: not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict):
        raise LabeledDataError(f"{where}: expected a JSON object, got {type(row).__name__}")

    def field(name: str, kind: type, low: float = -math.inf, high: float = math.inf) -> Any:
        if name not in row:
            raise LabeledDataError(f"{where}: field {name!r}: missing")
        value = row[name]
        numeric = kind is float and isinstance(value, int | float) and not isinstance(value, bool)
        if not (numeric and low <= value <= high) and not (kind is str and isinstance(value, str)):
            bounds = f"in [{low}, {high}]" if high < math.inf else f">= {low}"
            allowed = f"a number {bounds}" if kind is float else "a string"
            raise LabeledDataError(
                f"{where}: field {name!r}: expected {allowed}, got {value!r:.60}"
            )
        return float(value) if kind is float else value

    features = _features(row, where) if row.get("prompt") is None else None
    if features is not None and not stored_features:
        raise LabeledDataError(
            f"{where}: field 'prompt': missing; this row has only the scorer's features (as "
            "`cascade export` writes them: the ledger keeps no prompts), and this reader needs "
            "the prompt's text; join prompts with `cascade export --prompts`"
        )
    return LabeledExample(
        id=field("id", str),
        task=field("task", str),
        prompt="" if features is not None else field("prompt", str),
        weak_score=field("weak_score", float, 0.0, 1.0),
        strong_score=field("strong_score", float, 0.0, 1.0),
        weak_cost_usd=field("weak_cost_usd", float, 0.0),
        strong_cost_usd=field("strong_cost_usd", float, 0.0),
        anchor_weight=field("anchor_weight", float, 1e-9) if "anchor_weight" in row else None,
        features=features,
        feature_version=field("feature_version", str) if features is not None else None,
        propensity=field("propensity", float, 1e-9, 1.0)
        if row.get("propensity") is not None
        else None,
    )


def _features(row: dict[str, Any], where: str) -> tuple[float, ...] | None:
    """A row's ``features``: a non-empty list of finite numbers, or None when it has none."""
    value = row.get("features")
    if value is None:
        return None
    numbers = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or not value:
        raise LabeledDataError(
            f"{where}: field 'features': expected a non-empty list of finite numbers, got "
            f"{json.dumps(value)[:60]}"
        )
    return tuple(float(v) for v in value)
