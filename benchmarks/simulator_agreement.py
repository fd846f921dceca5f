"""How often cheap answers agree on real data: the numbers the simulated tiers are set from.

    .venv/bin/python -m benchmarks.simulator_agreement [--data ../shared/data/answers] [--json]

Reads the ``answers/`` sets of the two answer families the simulator builds -- numbers (GSM8K,
MATH level 5) and multiple choice (MMLU-Pro) -- and pairs the weak model's answer with each of
the two other cheap models of the README's "trio" (7-9B models of other families). Final
answers are extracted with the verifier's own code
(:func:`cascade.model.final_answer.extract_final_answer`); two answers agree when both state one
and their keys are equal, so a reply with no final answer agrees with nothing. Per task and per
family, over all (weak, witness) pairs:

* ``acc`` and ``witness_acc``: the weak model's and the witnesses' accuracy;
* ``right|right``, ``right|wrong``: P(the witness is right | the weak answer is right / wrong);
* ``agree|right``, ``agree|wrong``: P(the witness's final answer equals the weak one's | ...);
* ``coincide``: P(equal final answers | both wrong): how often two wrong answers are the same;
* ``same|both_right``: P(equal | both right), below 1 only through extraction;
* ``odds_ratio``: of the witness being right when the weak model is, the dependence between the
  two that the simulator keeps at its own profiles' accuracies (Mantel-Haenszel over MMLU-Pro's
  categories and over a family's tasks, so that mixing easy and hard subjects does not inflate
  it);
* ``attractor``: the simulator's parameter fitted to ``coincide`` -- the share of wrong answers
  that go to one popular wrong answer per prompt
  (:func:`cascade.simulator.agreement.attractor_share`, at each prompt's option count).

:data:`cascade.simulator.agreement.MEASURED` holds the per-task rows as constants; rerun this when
the data or the extractor changes, and update them there.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cascade.model.final_answer import extract_final_answer, has_choices
from cascade.simulator.agreement import attractor_share
from cascade.training.answers import AnswerRow, load_answers

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "answers"
FAMILIES = {
    "number": ("zeroeval_gsm8k.jsonl.xz", "zeroeval_math_l5.jsonl.xz"),
    "choice": ("mmlu_pro.jsonl.xz",),
}
WITNESSES = 2
"""The first two ``other_cheap`` models: with the weak model they make the README's trio."""
_OPTION = re.compile(r"(?m)^[ \t]*\(?([A-J])[.)][ \t]")


@dataclass
class Counts:
    """Pair counts of one stratum (an MMLU-Pro category, a ZeroEval task)."""

    rows: int = 0
    weak_right: int = 0
    table: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    """(weak, witness) pairs: right-right, right-wrong, wrong-right, wrong-wrong."""
    agree_given_right: int = 0
    agree_given_wrong: int = 0
    same_both_right: int = 0
    same_both_wrong: int = 0
    spreads: list[float] = field(default_factory=list)
    """Per both-wrong pair, the share of wrong-answer pairs that differ at random."""

    def add(self, row: AnswerRow) -> None:
        """Count ``row``'s (weak, witness) pairs."""
        choices = has_choices(row.prompt)
        options = len(set(_OPTION.findall(row.prompt))) if choices else 0
        weak = extract_final_answer(row.candidate, choices=choices)
        right = row.candidate_score >= 1.0
        self.rows += 1
        self.weak_right += right
        for witness in row.witnesses[:WITNESSES]:
            other = extract_final_answer(witness.text, choices=choices)
            same = weak is not None and other is not None and weak.key == other.key
            witness_right = witness.score >= 1.0
            self.table[2 * (not right) + (not witness_right)] += 1
            if right:
                self.agree_given_right += same
                self.same_both_right += same and witness_right
            else:
                self.agree_given_wrong += same
                if not witness_right:
                    self.same_both_wrong += same
                    self.spreads.append(1.0 if options < 3 else (options - 2) / (options - 1))

    def merge(self, other: Counts) -> None:
        """Add ``other``'s counts to these."""
        self.rows += other.rows
        self.weak_right += other.weak_right
        self.table = [a + b for a, b in zip(self.table, other.table, strict=True)]
        self.agree_given_right += other.agree_given_right
        self.agree_given_wrong += other.agree_given_wrong
        self.same_both_right += other.same_both_right
        self.same_both_wrong += other.same_both_wrong
        self.spreads += other.spreads


def _summary(strata: list[Counts]) -> dict[str, float | int]:
    """The rates over ``strata`` pooled, the odds ratio within them."""
    total = Counts()
    for stratum in strata:
        total.merge(stratum)
    rr, rw, wr, ww = total.table
    coincide = total.same_both_wrong / ww
    # coincidence is 1 - spread * (1 - attractor**2), so its mean over these pairs is the
    # coincidence at the option count whose spread is the mean spread (numbers: spread 1)
    spread = sum(total.spreads) / len(total.spreads)
    count = 0.0 if spread >= 1.0 else (2.0 - spread) / (1.0 - spread)
    return {
        "rows": total.rows,
        "acc": round(total.weak_right / total.rows, 3),
        "witness_acc": round((rr + wr) / sum(total.table), 3),
        "right|right": round(rr / (rr + rw), 3),
        "right|wrong": round(wr / (wr + ww), 3),
        "agree|right": round(total.agree_given_right / (rr + rw), 3),
        "agree|wrong": round(total.agree_given_wrong / (wr + ww), 3),
        "coincide": round(coincide, 3),
        "same|both_right": round(total.same_both_right / rr, 3),
        "both_wrong_pairs": ww,
        "odds_ratio": round(_mantel_haenszel(strata), 2),
        "attractor": round(attractor_share(coincide, count), 3),
    }


def _mantel_haenszel(strata: list[Counts]) -> float:
    top = sum(c.table[0] * c.table[3] / sum(c.table) for c in strata if sum(c.table))
    bottom = sum(c.table[1] * c.table[2] / sum(c.table) for c in strata if sum(c.table))
    return top / bottom


def measure(data: Path) -> dict[str, dict[str, float | int]]:
    """The rates per task (``gsm8k``, ``math_l5``, ``mmlu_pro``) and per family."""
    result: dict[str, dict[str, float | int]] = {}
    for family, files in FAMILIES.items():
        strata: dict[str, Counts] = defaultdict(Counts)
        for row in load_answers([data / name for name in files]):
            strata[row.task].add(row)
        tasks: dict[str, list[Counts]] = defaultdict(list)
        for name, counts in strata.items():
            tasks[name.split(":")[0]].append(counts)
        for task, parts in tasks.items():
            result[task] = _summary(parts)
        if len(tasks) > 1:
            result[f"{family} (all)"] = _summary(list(strata.values()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the answers/ directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = measure(args.data)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    columns = list(next(iter(result.values())))
    print(f"{'task':<13}" + "".join(f"{c:>17}" for c in columns))
    for task, values in result.items():
        print(f"{task:<13}" + "".join(f"{v!s:>17}" for v in values.values()))


if __name__ == "__main__":
    main()
