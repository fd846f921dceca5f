"""Labeled answers: prompts with a candidate answer, the strong tier's outcome and witnesses.

The verifier learns from the ``answers/`` format of the routing data: labeled traffic
(:mod:`cascade.training.traffic`) plus the answers themselves, one JSON object per line::

    {"id", "task", "prompt", "weak_score", "strong_score", "weak_cost_usd", "strong_cost_usd",
     "weak_response", "other_cheap": [{"model", "response", "score", "cost_usd"}, ...]}

The weak tier's answer is the candidate; ``other_cheap`` answers are its witnesses, in the file's
order (the first two make the "trio" with the candidate). Files may be xz-compressed
(``.xz``). Extra fields (``strong_response``, ``gold``, ...) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade.errors import LabeledDataError
from cascade.model.manifest import DataFile

__all__ = ["AnswerRow", "Witness", "describe_file", "load_answers"]


@dataclass(frozen=True)
class Witness:
    """Another cheap model's answer to the same prompt, with its score and cost."""

    model: str
    text: str
    score: float
    cost: float


@dataclass(frozen=True)
class AnswerRow:
    """One prompt: the candidate (weak) answer and its outcome, the strong outcome, witnesses."""

    id: str
    task: str
    prompt: str
    candidate: str
    candidate_score: float
    candidate_cost: float
    strong_score: float
    strong_cost: float
    witnesses: tuple[Witness, ...]

    @property
    def good(self) -> bool:
        """The verifier's label: the candidate answer is correct (score 1)."""
        return self.candidate_score >= 1.0


def load_answers(paths: Sequence[Path], *, tasks: set[str] | None = None) -> list[AnswerRow]:
    """Read answers files (plain or ``.xz`` JSONL) in order; blank lines are skipped.

    ``tasks``: keep only rows of these tasks (others are not parsed further). Raises
    :class:`LabeledDataError` naming ``file:line`` and the field for an invalid row.
    """
    rows: list[AnswerRow] = []
    for path in paths:
        for number, line in enumerate(_lines(Path(path)), start=1):
            if line.strip():
                row = _parse(line, f"{path}:{number}", tasks)
                if row is not None:
                    rows.append(row)
    if not rows:
        wanted = f" of tasks {', '.join(sorted(tasks))}" if tasks else ""
        raise LabeledDataError(f"no answer rows{wanted} in {', '.join(map(str, paths))}")
    return rows


def describe_file(path: Path) -> DataFile:
    """Name, row count and sha256 (of the bytes on disk, compressed or not) of a data file."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    rows = sum(1 for line in _lines(Path(path)) if line.strip())
    return DataFile(Path(path).name, rows, digest)


def _lines(path: Path) -> list[str]:
    try:
        if path.suffix == ".xz":
            with lzma.open(path, "rt", encoding="utf-8", newline="\n") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError, lzma.LZMAError) as exc:
        raise LabeledDataError(f"{path}: cannot read answers: {exc}") from exc
    # "\n" only: JSON strings may hold U+2028 and other characters str.splitlines() splits on
    return text.split("\n")


def _parse(line: str, where: str, tasks: set[str] | None) -> AnswerRow | None:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LabeledDataError(f"{where}: not valid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise LabeledDataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    task = _text(raw, "task", where)
    if tasks is not None and task not in tasks:
        return None
    others = raw.get("other_cheap")
    if not isinstance(others, list):
        raise LabeledDataError(f"{where}: field 'other_cheap': expected a list of answers")
    witnesses = tuple(
        Witness(
            model=_text(o, "model", f"{where}: other_cheap[{i}]"),
            text=_text(o, "response", f"{where}: other_cheap[{i}]"),
            score=_number(o, "score", f"{where}: other_cheap[{i}]", high=1.0),
            cost=_number(o, "cost_usd", f"{where}: other_cheap[{i}]"),
        )
        for i, o in enumerate(_objects(others, where))
    )
    return AnswerRow(
        id=_text(raw, "id", where),
        task=task,
        prompt=_text(raw, "prompt", where),
        candidate=_text(raw, "weak_response", where),
        candidate_score=_number(raw, "weak_score", where, high=1.0),
        candidate_cost=_number(raw, "weak_cost_usd", where),
        strong_score=_number(raw, "strong_score", where, high=1.0),
        strong_cost=_number(raw, "strong_cost_usd", where),
        witnesses=witnesses,
    )


def _objects(items: list[Any], where: str) -> list[dict[str, Any]]:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise LabeledDataError(f"{where}: other_cheap[{i}]: expected an object")
    return items


def _text(row: dict[str, Any], name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise LabeledDataError(f"{where}: field {name!r}: expected a string, got {value!r:.60}")
    return value


def _number(row: dict[str, Any], name: str, where: str, high: float = math.inf) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        bounds = f"in [0, {high:g}]" if high < math.inf else ">= 0"
        raise LabeledDataError(
            f"{where}: field {name!r}: expected a number {bounds}, got {value!r:.60}"
        )
    return float(value)
