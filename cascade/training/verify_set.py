"""What a verify cascade is measured and calibrated on: one candidate per prompt, its witnesses,
and both tiers' outcomes.

Two formats are read, told apart by each file's first row:

- **answers files** (:mod:`cascade.training.answers`: ``weak_response`` and ``other_cheap``):
  the weak answer is the candidate, the first ``witnesses`` other answers its witnesses (default
  :data:`~cascade.training.verifier_data.TRIO`);
- **labeled traffic with answers** (:mod:`cascade.training.traffic` plus ``answers``, the list
  ``cascade verify`` reads: the candidate first, then its witnesses). An answer is a string or
  ``{"content": str, "logprobs": [number, ...], "cost_usd": number}``; every witness gives its
  ``cost_usd``, because the cost-quality curve pays for the evidence. The candidate's cost is the
  row's ``weak_cost_usd``. ``witnesses`` caps how many are read (default: all).
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from cascade.errors import LabeledDataError
from cascade.model.answer_features import ANSWER_FEATURE_NAMES, answer_features
from cascade.training.answers import AnswerRow, load_answers
from cascade.training.evaluation import Outcomes
from cascade.training.traffic import load_labeled
from cascade.training.verifier_data import TRIO, featurize, first_witnesses, outcomes_of

__all__ = ["VerifySet", "load_verify_set", "verify_set_of"]

_ANSWER_KEYS = ("content", "logprobs", "cost_usd")
_SHAPE = (
    "a verifier is measured on a candidate and its witnesses: give answers files (rows with "
    "'weak_response' and 'other_cheap') or labeled traffic whose rows carry 'answers': "
    '[candidate, witness, ...], a witness being {"content": str, "cost_usd": number}'
)


@dataclass(frozen=True)
class VerifySet:
    """One row per prompt: the candidate's features given its witnesses, and the outcomes."""

    tasks: tuple[str, ...]
    prompts: tuple[str, ...]
    features: np.ndarray
    """:func:`~cascade.model.answer_features.answer_features` of each candidate."""
    evidence_cost: np.ndarray
    """What each candidate's witnesses cost: paid whether the candidate is kept or not."""
    outcomes: Outcomes
    good: np.ndarray
    """The candidate is correct (score 1)."""
    rows: tuple[AnswerRow, ...] | None
    """The answers rows behind it (answers files only: traffic has no witness scores)."""

    @property
    def agreement(self) -> np.ndarray:
        """Share of witnesses whose final answer is the candidate's (the plain majority vote)."""
        return np.asarray(self.features[:, ANSWER_FEATURE_NAMES.index("agree_share")])

    def __len__(self) -> int:
        return len(self.tasks)

    def where(self, mask: np.ndarray) -> VerifySet:
        """The rows where ``mask`` (boolean, one per row) is true."""
        o, keep = self.outcomes, np.flatnonzero(mask)
        return VerifySet(
            tasks=tuple(self.tasks[i] for i in keep),
            prompts=tuple(self.prompts[i] for i in keep),
            features=self.features[keep],
            evidence_cost=self.evidence_cost[keep],
            outcomes=Outcomes(
                o.weak_score[keep], o.strong_score[keep], o.weak_cost[keep], o.strong_cost[keep]
            ),
            good=self.good[keep],
            rows=None if self.rows is None else tuple(self.rows[i] for i in keep),
        )

    def of_tasks(self, tasks: Collection[str]) -> VerifySet:
        """The rows of these tasks."""
        return self.where(np.array([t in tasks for t in self.tasks], dtype=bool))


def verify_set_of(rows: Sequence[AnswerRow], witnesses: int = TRIO) -> VerifySet:
    """Each row's candidate with its first ``witnesses`` witnesses."""
    examples = featurize(rows, first_witnesses(witnesses))
    return VerifySet(
        tasks=tuple(r.task for r in rows),
        prompts=tuple(r.prompt for r in rows),
        features=examples.features,
        evidence_cost=examples.evidence_cost,
        outcomes=outcomes_of(rows, examples.row),
        good=examples.good,
        rows=tuple(rows),
    )


def load_verify_set(
    paths: Sequence[Path], *, tasks: set[str] | None = None, witnesses: int | None = None
) -> VerifySet:
    """Read answers files and labeled traffic with answers (see the module's docstring).

    Raises :class:`LabeledDataError` naming the file (and line) for a missing file, a row of
    neither format, a row without ``answers`` or a witness without its cost.
    """
    answer_files = [p for p in paths if _format(Path(p)) == "answers"]
    traffic_files = [p for p in paths if p not in answer_files]
    parts: list[VerifySet] = []
    if answer_files:
        rows = load_answers(answer_files, tasks=tasks)
        parts.append(verify_set_of(rows, TRIO if witnesses is None else witnesses))
    if traffic_files:
        parts.append(_traffic_set(traffic_files, tasks, witnesses))
    if len(parts) == 1:
        return parts[0]
    first, second = parts
    return VerifySet(
        tasks=first.tasks + second.tasks,
        prompts=first.prompts + second.prompts,
        features=np.vstack([first.features, second.features]),
        evidence_cost=np.concatenate([first.evidence_cost, second.evidence_cost]),
        outcomes=Outcomes(
            *(np.concatenate([a, b]) for a, b in zip(_arrays(first), _arrays(second), strict=True))
        ),
        good=np.concatenate([first.good, second.good]),
        rows=None,
    )


def _arrays(data: VerifySet) -> tuple[np.ndarray, ...]:
    o = data.outcomes
    return o.weak_score, o.strong_score, o.weak_cost, o.strong_cost


def _format(path: Path) -> str:
    """``answers`` or ``traffic``, from the file's first row."""
    number, line = 0, ""
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, start=1):  # noqa: B007 - read after the loop
                if line.strip():
                    break
    except (OSError, UnicodeError, lzma.LZMAError) as exc:
        raise LabeledDataError(f"{path}: cannot read answers or labeled traffic: {exc}") from exc
    if not line.strip():
        raise LabeledDataError(f"{path}: no rows")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LabeledDataError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
    if isinstance(row, dict) and "answers" in row:
        return "traffic"
    if isinstance(row, dict) and {"weak_response", "other_cheap"} & set(row):
        return "answers"
    raise LabeledDataError(f"{path}:{number}: no 'answers' field; {_SHAPE}")


def _open(path: Path) -> IO[str]:
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _traffic_set(paths: Sequence[Path], tasks: set[str] | None, cap: int | None) -> VerifySet:
    features: list[list[float]] = []
    evidence: list[float] = []
    kept = []
    for path in paths:
        examples = load_labeled([path])
        lines = [(n, line) for n, line in enumerate(_text(path).split("\n"), 1) if line.strip()]
        for example, (number, line) in zip(examples, lines, strict=True):
            if tasks is not None and example.task not in tasks:
                continue
            answers = json.loads(line).get("answers")
            parsed = _answers(answers, f"{path}:{number}")[: None if cap is None else cap + 1]
            (candidate, logprobs, _), witnesses = parsed[0], parsed[1:]
            texts = [text for text, _, _ in witnesses]
            features.append(answer_features(example.prompt, candidate, texts, logprobs))
            evidence.append(sum(cost for _, _, cost in witnesses))
            kept.append(example)
    if not kept:
        wanted = f" of tasks {', '.join(sorted(tasks))}" if tasks else ""
        raise LabeledDataError(f"no rows{wanted} in {', '.join(map(str, paths))}")
    outcomes = Outcomes.from_examples(kept)
    return VerifySet(
        tasks=tuple(e.task for e in kept),
        prompts=tuple(e.prompt for e in kept),
        features=np.array(features, dtype=np.float64),
        evidence_cost=np.array(evidence, dtype=np.float64),
        outcomes=outcomes,
        good=outcomes.weak_score >= 1.0,
        rows=None,
    )


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise LabeledDataError(f"{path}: cannot read labeled traffic: {exc}") from exc


def _answers(value: Any, where: str) -> list[tuple[str, tuple[float, ...] | None, float]]:
    """(text, logprobs, cost) of each answer; the candidate's cost is not read (0 here)."""
    if not isinstance(value, list) or not value:
        raise LabeledDataError(f"{where}: field 'answers': missing or empty; {_SHAPE}")
    parsed: list[tuple[str, tuple[float, ...] | None, float]] = []
    for i, answer in enumerate(value):
        field = f"{where}: answers[{i}]"
        if isinstance(answer, str):
            if i:
                raise LabeledDataError(f"{field}: a witness needs its cost; {_SHAPE}")
            parsed.append((answer, None, 0.0))
            continue
        if not isinstance(answer, dict):
            raise LabeledDataError(f"{field}: expected a string or an object")
        if unknown := sorted(set(answer) - set(_ANSWER_KEYS)):
            raise LabeledDataError(
                f"{field}: unknown key {unknown[0]!r} (allowed: content, logprobs, cost_usd)"
            )
        if not isinstance(answer.get("content"), str):
            raise LabeledDataError(f"{field}.content: missing or not a string")
        parsed.append((answer["content"], _logprobs(answer, field), _cost(answer, field, i)))
    return parsed


def _logprobs(answer: dict[str, Any], field: str) -> tuple[float, ...] | None:
    values = answer.get("logprobs")
    if values is None:
        return None
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise LabeledDataError(f"{field}.logprobs: must be a list of numbers or null")
    return tuple(float(v) for v in values)


def _cost(answer: dict[str, Any], field: str, index: int) -> float:
    cost = answer.get("cost_usd")
    if index == 0:
        return 0.0  # the candidate's cost is the row's weak_cost_usd
    if isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0:
        raise LabeledDataError(
            f"{field}.cost_usd: expected a number >= 0, got {cost!r:.40}; the cost-quality "
            "curve pays for every witness"
        )
    return float(cost)
