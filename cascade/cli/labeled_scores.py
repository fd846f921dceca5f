"""Scores for ``cascade eval``, ``score`` and ``calibrate``: a model's confidence on labeled rows
(prompts, or the scorer's numbers as ``cascade export`` writes them) and on prompt files."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_BATCH = 512


def labeled_confidence(data: Sequence[Path], model: str) -> tuple[Any, Any]:
    """(confidence array, Outcomes) of a model on labeled-traffic files."""
    import numpy as np

    from cascade.errors import LabeledDataError
    from cascade.model.scorer import OnnxScorer
    from cascade.training.evaluation import Outcomes
    from cascade.training.traffic import load_labeled

    examples = load_labeled(data, stored_features=True)
    scorer = OnnxScorer(model, device="cpu")
    stored = [e for e in examples if e.features is not None]
    if stored and len(stored) < len(examples):
        raise LabeledDataError(
            f"{', '.join(map(str, data))}: {len(stored)} rows carry the scorer's features and "
            f"{len(examples) - len(stored)} a prompt; calibrate on one kind at a time"
        )
    if stored:  # rows of `cascade export`: the ledger's numbers, scored as they are
        version = scorer.feature_version
        wrong = next((e for e in stored if e.feature_version != version), None)
        if wrong is not None:
            raise LabeledDataError(
                f"row {wrong.id!r}: its features are of version {wrong.feature_version!r}; model "
                f"{model!r} reads {version!r}: calibrate a model of the rows' version"
            )
        rows = np.array([e.features for e in stored], dtype=np.float32)
        return scorer.score_rows(rows), Outcomes.from_examples(examples)
    prompts = [e.prompt for e in examples]
    scores = [
        s
        for i in range(0, len(prompts), _BATCH)
        for s in scorer.score_batch(prompts[i : i + _BATCH])
    ]
    return np.array(scores), Outcomes.from_examples(examples)


def read_prompts(path: Path) -> list[str]:
    """The text to score of each non-blank JSONL line: ``prompt``, or the last user message.

    A bad line raises :class:`~cascade.errors.LabeledDataError` naming ``file:line``.
    """
    from cascade.core.prompt import prepare_prompt
    from cascade.errors import CascadeError, LabeledDataError

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise LabeledDataError(f"{path}: cannot read prompts: {exc}") from exc
    lines = text.split("\n")
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabeledDataError(f"{where}: not valid JSON: {exc.msg}") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            texts.append(row["prompt"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            try:
                texts.append(prepare_prompt(row["messages"]).scoring_text)
            except CascadeError as exc:
                raise LabeledDataError(f"{where}: {exc}") from None
        else:
            raise LabeledDataError(
                f"{where}: expected an object with a string 'prompt' or a list 'messages' "
                "(OpenAI chat messages)"
            )
    return texts
