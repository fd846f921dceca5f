"""Which answers a simulated tier gets right: the labeled data, then a calibrated coin.

A request's last user message is looked up by the hash of its whitespace-normalized text. A
known prompt is answered correctly or wrongly as the data says for the profile's score column
(a fractional score is the chance of a correct answer); a profile with an ``extra_fail_share``
also fails that share of the prompts the column marks correct. An unknown prompt gets a coin
weighted by the profile's accuracy over the whole data set. Every draw is a hash of the prompt
text, so the same prompt always gets the same verdict, and because all profiles share the
draw a weaker profile is never right where a stronger one following the same column is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cascade.simulator.dataset import DATA_FILE, LabeledRow, iter_rows
from cascade.simulator.profiles import Quality

__all__ = ["Label", "LabelTable", "draw", "normalize", "prompt_key"]


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
        weak = strong = 0.0
        for row in rows:
            self._labels[prompt_key(row.prompt)] = Label(
                row.task, row.weak_score, row.strong_score, row.weak_response, row.strong_response
            )
            weak += row.weak_score
            strong += row.strong_score
        count = max(len(self._labels), 1)
        self._mean = {"weak_score": weak / count, "strong_score": strong / count}

    @classmethod
    def load(cls, path: Path = DATA_FILE) -> LabelTable:
        """Read the shipped labeled data (about half a second)."""
        return cls(iter_rows(path))

    def __len__(self) -> int:
        return len(self._labels)

    def lookup(self, prompt: str) -> Label | None:
        """The label of a known prompt, or ``None``."""
        return self._labels.get(prompt_key(prompt))

    def accuracy(self, quality: Quality) -> float:
        """The share of the data a profile answers correctly: its coin for unknown prompts."""
        return self._mean[quality.score] * (1.0 - quality.extra_fail_share)

    def is_correct(self, quality: Quality, prompt: str, label: Label | None) -> bool:
        """Whether a profile answers ``prompt`` correctly (deterministic per prompt)."""
        if label is None:
            return draw(prompt, "correct") < self.accuracy(quality)
        if draw(prompt, "correct") >= label.score(quality.score):
            return False
        return draw(prompt, "extra-fail") >= quality.extra_fail_share
