"""The labeled data the simulated tiers answer from, shipped inside the package.

``data/labels.jsonl.xz`` is a compact copy of the team's labeled routing data (not shipped):
every row of the dev file (LLMRouter, 13 tasks), the GSM8K file (with both models' answers) and
the MMLU file, keeping ``id``, ``task``, ``prompt``, ``weak_score``, ``strong_score`` and, where
present, ``weak_response`` and ``strong_response``. xz keeps all of it under 2.5 MB. Rebuild it
with::

    python -m cascade.simulator.dataset /path/to/routing-data
"""

from __future__ import annotations

import json
import lzma
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_FILE", "LabeledRow", "build", "iter_rows"]

DATA_FILE = Path(__file__).with_name("data") / "labels.jsonl.xz"

_SOURCES = ("dev/llmrouter.jsonl", "train/routellm_gsm8k.jsonl", "train/routellm_mmlu.jsonl")
_KEPT = ("id", "task", "prompt", "weak_score", "strong_score", "weak_response", "strong_response")


@dataclass(frozen=True, slots=True)
class LabeledRow:
    """One prompt with both models' scores (0..1) and, where the source has them, answers."""

    id: str
    task: str
    prompt: str
    weak_score: float
    strong_score: float
    weak_response: str | None = None
    strong_response: str | None = None


def iter_rows(path: Path = DATA_FILE) -> Iterator[LabeledRow]:
    """Read the shipped rows (or another file in the same format)."""
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            yield LabeledRow(
                id=row["id"],
                task=row["task"],
                prompt=row["prompt"],
                weak_score=float(row["weak_score"]),
                strong_score=float(row["strong_score"]),
                weak_response=row.get("weak_response"),
                strong_response=row.get("strong_response"),
            )


def build(source_dir: Path, out: Path = DATA_FILE) -> int:
    """Write the compact copy of ``source_dir``'s labeled files to ``out``; returns the rows."""
    count = 0
    with lzma.open(out, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as sink:
        for name in _SOURCES:
            with (source_dir / name).open(encoding="utf-8") as lines:
                for line in lines:
                    row = json.loads(line)
                    kept = {key: row[key] for key in _KEPT if row.get(key) is not None}
                    sink.write(json.dumps(kept, ensure_ascii=False) + "\n")
                    count += 1
    return count


def main(argv: Sequence[str]) -> int:
    """Rebuild the shipped file from the routing data's directory (``dev/``, ``train/``)."""
    if len(argv) != 1:
        print("usage: python -m cascade.simulator.dataset ROUTING_DATA_DIR", file=sys.stderr)
        return 2
    print(f"{build(Path(argv[0]))} rows -> {DATA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
