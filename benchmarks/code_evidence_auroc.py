"""Code evidence on can-ai-code: AUROC of behaviour agreement, word overlap and parsing.

    .venv/bin/python -m benchmarks.code_evidence_auroc \\
        [--data ../shared/data/answers/canaicode_junior_v2.jsonl.xz] \\
        [--cruxeval ../shared/data/answers/zeroeval_cruxeval_o.jsonl.xz]

For the Python prompts of the file, prints each signal of
:mod:`cascade.model.code_evidence` against "the candidate's score is 1", under two protocols:
``weak`` (the weak model's answer is the candidate, the other models' answers are witnesses)
and ``rotate`` (each of the answers of a prompt in turn), with all witnesses and with two.
The JavaScript half is counted only: the sandbox runs Python. Then, for CRUXEval-O, how many
answers would go through the code path (its answers are values, not code). The file has 28
prompts: the numbers are small-sample numbers, and rotated candidates share prompts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cascade.training.answers import load_answers
from cascade.training.code_agreement import (
    SIGNALS,
    CodeSignals,
    code_path_counts,
    code_signals,
)

ANSWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "answers"


def main() -> None:
    """Print the AUROC table and the CRUXEval-O count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=ANSWERS / "canaicode_junior_v2.jsonl.xz")
    parser.add_argument("--cruxeval", type=Path, default=ANSWERS / "zeroeval_cruxeval_o.jsonl.xz")
    args = parser.parse_args()
    rows = load_answers([args.data])
    python = [r for r in rows if r.task.endswith(":python")]
    skipped = ", ".join(sorted({r.task for r in rows} - {r.task for r in python}))
    print(f"{args.data.name}: {len(rows)} prompts, {len(python)} Python ({skipped} not run)")
    print(f"{'protocol':<22}{'cands':>6}{'wrong':>6}  signal: AUROC [90% over prompts] mean")
    for rotate in (False, True):
        for witnesses in (None, 2):
            signals = code_signals(python, rotate=rotate, witnesses=witnesses)
            name = f"{'rotate' if rotate else 'weak'}, {witnesses or 'all'} witnesses"
            wrong = int((~signals.good).sum())
            print(f"{name:<22}{len(signals.good):>6}{wrong:>6}")
            for signal in SIGNALS:
                print(f"{'':<36}{signal:<20} {_cell(signals, signal)}")
    print("mean: over right / over wrong candidates; n/a: every candidate has one label")
    if args.cruxeval.exists():
        total, routed = code_path_counts(load_answers([args.cruxeval]))
        print(f"{args.cruxeval.name}: {routed} of {total} answers would be judged as code")


def _cell(signals: CodeSignals, signal: str) -> str:
    roc, interval = signals.auroc(signal), signals.interval(signal)
    right, wrong = signals.means(signal)
    span = "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"
    return f"{'n/a' if roc is None else f'{roc:.3f}'}{span}  {right:.2f} / {wrong:.2f}"


if __name__ == "__main__":
    main()
