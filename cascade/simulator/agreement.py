"""How a simulated tier's answers to one prompt relate: measured on real models, then kept.

A router that verifies looks at agreement: several samples of one tier (``n``), or a second
cheap tier's answer (a witness). The simulator must not make that evidence stronger than it is,
so its two ingredients come from ``../shared/data/answers/`` (greedy answers of a weak model and
of other 7-9B models of other families to the same prompts), as printed by
``.venv/bin/python -m benchmarks.simulator_agreement``::

    task     acc witness right|right right|wrong agree|right agree|wrong coincide odds attractor
    gsm8k    0.840   0.837       0.896       0.531       0.896       0.145    0.308 7.60     0.555
    math_l5  0.222   0.216       0.494       0.137       0.487       0.082    0.092 6.13     0.303
    mmlu_pro 0.302   0.370       0.619       0.262       0.619       0.203    0.275 4.23     0.416

(acc: the weak model's accuracy; right|right: P(another cheap answer is right | the weak one is
right); agree: their final answers, extracted with the verifier's code, are equal; coincide:
equal given both wrong; odds: the odds ratio of right|right against right|wrong.)

1. **Whether two answers are right together.** Conditional rates depend on the accuracy they were
   measured at (a sample of a 68%-accurate tier cannot be right only 62% of the time when the
   first is, as MMLU-Pro's 30%-accurate models are). What carries over is the dependence: the
   odds ratio of the second being right when the first is (Mantel-Haenszel within MMLU-Pro's
   categories, so that mixing easy and hard subjects does not inflate it). Two answers with
   accuracies ``p1`` and ``p2`` are right together as the 2x2 table with those margins and that
   odds ratio says (:func:`follow`); at the data's accuracies it gives back the measured rates.
2. **Whether two wrong answers are the same.** Each wrong answer goes, with probability
   ``attractor``, to one popular wrong answer of the prompt (shared by every tier and sample),
   and otherwise to any wrong option at random; ``attractor`` is fitted so that two wrong answers
   coincide as often as in the data (:func:`coincidence`; MMLU-Pro has about ten options, so on
   a four-option prompt chance alone makes wrong answers meet more often, as it does for real).

Which row applies: multiple-choice prompts use ``mmlu_pro``; number answers ``math_l5`` for
competition math (task ``math``) and ``gsm8k`` otherwise. Code and free text have no measured
agreement (the answers data has no written code with tests, and word overlap on open-ended
answers measured at random): their right/wrong dependence borrows ``mmlu_pro``'s odds ratio,
the weakest measured, and their wording does not depend on being right. Not measured either:
repeated samples of one model (the data has one greedy answer per model), which likely agree
more than two different models do; the simulator uses the cross-model numbers for both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MEASURED",
    "Agreement",
    "Form",
    "attractor_share",
    "coincidence",
    "follow",
    "form",
    "measured_for",
    "options",
]

Form = Literal["choice", "code", "number", "text"]

_OPTION = re.compile(r"^\s*\(?([A-J])[.)]\s+(.+?)\s*$", re.MULTILINE)
_CODE_TASKS = {"mbpp", "human_eval"}
_MATH_TASKS = {"gsm8k", "math", "agentverse-mgsm"}


@dataclass(frozen=True, slots=True)
class Agreement:
    """One task's row of the table above: a weak model and another cheap model on one prompt."""

    task: str
    accuracy: float
    witness_accuracy: float
    right_given_right: float
    right_given_wrong: float
    agree_given_right: float
    agree_given_wrong: float
    coincide: float
    odds_ratio: float
    attractor: float


MEASURED: dict[str, Agreement] = {
    "gsm8k": Agreement("gsm8k", 0.840, 0.837, 0.896, 0.531, 0.896, 0.145, 0.308, 7.60, 0.555),
    "math_l5": Agreement("math_l5", 0.222, 0.216, 0.494, 0.137, 0.487, 0.082, 0.092, 6.13, 0.303),
    "mmlu_pro": Agreement("mmlu_pro", 0.302, 0.370, 0.619, 0.262, 0.619, 0.203, 0.275, 4.23, 0.416),
}
"""Printed by ``benchmarks/simulator_agreement.py`` (1,319 GSM8K, 721 MATH-L5 and 12,032
MMLU-Pro prompts, two witnesses each); tests read these, never the data."""


def options(prompt: str) -> dict[str, str]:
    """The lettered options of a multiple-choice prompt (``A. …`` or ``B) …`` lines)."""
    return dict(_OPTION.findall(prompt))


def form(prompt: str, task: str = "") -> Form:
    """The form of the answer the prompt asks for: an option, code, a number or free text."""
    if len(options(prompt)) >= 2:
        return "choice"
    if task in _CODE_TASKS or "def " in prompt or re.search(r"\bfunction\b", prompt):
        return "code"
    if task in _MATH_TASKS or (sum(c.isdigit() for c in prompt) >= 2 and "?" in prompt):
        return "number"
    return "text"


def measured_for(kind: Form, task: str = "") -> Agreement:
    """The measured row that stands for answers of this form (and task)."""
    if kind == "number":
        return MEASURED["math_l5" if task == "math" else "gsm8k"]
    return MEASURED["mmlu_pro"]


def follow(first: float, second: float, odds_ratio: float) -> tuple[float, float]:
    """P(the second answer is right | the first is right), and | the first is wrong), for
    answers right with probabilities ``first`` and ``second`` and that odds ratio."""
    both = _both_right(first, second, odds_ratio)
    given_right = both / first if first > 0 else second
    given_wrong = (second - both) / (1.0 - first) if first < 1 else second
    return min(max(given_right, 0.0), 1.0), min(max(given_wrong, 0.0), 1.0)


def _both_right(first: float, second: float, odds_ratio: float) -> float:
    """P(both right): the cell of the 2x2 table with these margins and odds ratio (Plackett)."""
    if abs(odds_ratio - 1.0) < 1e-9:
        return first * second
    k = odds_ratio - 1.0
    b = 1.0 + k * (first + second)
    return (b - math.sqrt(b * b - 4.0 * odds_ratio * k * first * second)) / (2.0 * k)


def coincidence(attractor: float, count: float) -> float:
    """P(two wrong answers are equal) when each goes to the prompt's popular wrong answer with
    probability ``attractor`` and otherwise to any of its wrong options at random (``count``:
    the prompt's options; 0 for an unbounded set such as numbers)."""
    if count == 0:
        return attractor**2
    if count <= 2:
        return 1.0
    wrong = count - 1
    return 1.0 - (wrong - 1) / wrong * (1.0 - attractor**2)


def attractor_share(coincide: float, count: float) -> float:
    """The ``attractor`` whose :func:`coincidence` is ``coincide`` (0 where chance alone makes
    wrong answers meet more often); ``count`` may be a mean over prompts (see the benchmark)."""
    spread = 1.0 if count == 0 else max(count - 2, 0) / max(count - 1, 1)
    if spread <= 0:
        return 0.0
    return math.sqrt(min(max(1.0 - (1.0 - coincide) / spread, 0.0), 1.0))
