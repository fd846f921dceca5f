"""Which answers a simulated tier gets right: the labeled data, then a calibrated coin.

A request's last user message is looked up by the hash of its whitespace-normalized text. A
known prompt is answered correctly or wrongly as the data says for the profile's score column
(a fractional score is the chance of a correct answer); an unknown prompt gets a coin weighted
by the column's accuracy on prompts of its form (multiple choice, number, code, text). Every
draw is a hash of the prompt text, so the same prompt always gets the same verdict, and all
profiles following one column share it.

A profile with an ``extra_fail_share`` (the 1.5B) is a weaker model beside the column's: its
accuracy is the column's times ``1 - extra_fail_share``, and whether it is right depends on
whether the column is right with the odds ratio measured between two cheap models
(:mod:`cascade.simulator.agreement`). So it is usually right where the 7B is, but not always, and
sometimes right where the 7B is wrong -- as two real cheap models are; a witness tier that
agreed whenever the candidate was right would be a signal no real pair gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cascade.simulator.agreement import Form, follow, form, measured_for
from cascade.simulator.dataset import DATA_FILE, LabeledRow, iter_rows
from cascade.simulator.profiles import Quality

__all__ = ["Label", "LabelTable", "draw", "normalize", "prompt_key"]

_MIN_ROWS = 100
"""Prompts of one form needed before its own accuracy is used."""


def normalize(text: str) -> str:
    """The text with runs of whitespace collapsed to one space and the ends stripped."""
    return " ".join(text.split())


def prompt_key(text: str) -> bytes:
    """The lookup key of a prompt: 8 bytes of the SHA-256 of its normalized text."""
    return hashlib.sha256(normalize(text).encode("utf-8")).digest()[:8]


def draw(text: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the prompt text and ``salt``."""
    digest = hashlib.sha256(f"{salt}\x00{normalize(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class Label:
    """What the data says about one prompt."""

    task: str
    weak_score: float
    strong_score: float
    weak_response: str | None
    strong_response: str | None

    def score(self, column: str) -> float:
        """The score in the named column (``weak_score`` or ``strong_score``)."""
        return self.weak_score if column == "weak_score" else self.strong_score


class LabelTable:
    """Prompts and their labels, keyed by :func:`prompt_key`; built once, then read-only."""

    def __init__(self, rows: Iterable[LabeledRow]) -> None:
        self._labels: dict[bytes, Label] = {}
        sums: dict[Form | None, list[float]] = {}
        for row in rows:
            self._labels[prompt_key(row.prompt)] = Label(
                row.task, row.weak_score, row.strong_score, row.weak_response, row.strong_response
            )
            for kind in (None, form(row.prompt, row.task)):
                total = sums.setdefault(kind, [0.0, 0.0, 0.0])
                total[0] += row.weak_score
                total[1] += row.strong_score
                total[2] += 1
        weak, strong, count = sums.get(None, [0.0, 0.0, 0.0])
        overall = {"weak_score": weak / max(count, 1), "strong_score": strong / max(count, 1)}
        self._mean: dict[Form | None, dict[str, float]] = {None: overall}
        for kind, (weak, strong, count) in sums.items():
            if kind is not None and count >= _MIN_ROWS:  # else the overall accuracy stands in
                self._mean[kind] = {"weak_score": weak / count, "strong_score": strong / count}

    @classmethod
    def load(cls, path: Path = DATA_FILE) -> LabelTable:
        """Read the shipped labeled data (about half a second)."""
        return cls(iter_rows(path))

    def __len__(self) -> int:
        return len(self._labels)

    def lookup(self, prompt: str) -> Label | None:
        """The label of a known prompt, or ``None``."""
        return self._labels.get(prompt_key(prompt))

    def accuracy(self, quality: Quality, kind: Form | None = None) -> float:
        """The share of the data (of prompts of form ``kind``) a profile answers correctly."""
        mean = self._mean.get(kind, self._mean[None])
        return mean[quality.score] * (1.0 - quality.extra_fail_share)

    def is_correct(
        self, quality: Quality, prompt: str, label: Label | None, kind: Form | None = None
    ) -> bool:
        """Whether a profile answers ``prompt`` correctly (deterministic per prompt); ``kind``:
        the prompt's :func:`~cascade.simulator.agreement.form`, when the caller has it."""
        task = label.task if label is not None else ""
        kind = kind or form(prompt, task)
        column = self._mean.get(kind, self._mean[None])[quality.score]
        score = label.score(quality.score) if label is not None else column
        right = draw(prompt, "correct") < score
        if quality.extra_fail_share <= 0.0:
            return right
        own = column * (1.0 - quality.extra_fail_share)
        given_right, given_wrong = follow(column, own, measured_for(kind, task).odds_ratio)
        return draw(prompt, "follow") < (given_right if right else given_wrong)
