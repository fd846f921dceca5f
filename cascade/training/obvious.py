"""Obvious prompts: authored easy and hard families, expanded into labeled-traffic rows.

The routing data holds benchmark questions only, so a model fitted on it alone has never seen a
greeting or a request for a lock-free queue and extrapolates arbitrarily there. The project
authors families of prompts whose tier is obvious (``tests/data/obvious/families.yaml``): each
family is a few templates and the fillers of their ``{slots}``, labeled ``easy`` (any tier
answers it well) or ``hard`` (the smallest tier should not be trusted with it), and assigned to
the ``fit`` split (may train a model) or the ``check`` split (never does; its templates and
fillers share nothing with the fit split's).

``python -m cascade.training.obvious write FAMILIES.yaml --out DIR --data TRAFFIC.jsonl...`` writes
``DIR/fit.jsonl`` and ``DIR/check.jsonl`` in the labeled-traffic format: an easy prompt gets
``weak_score = strong_score = 1`` (the weak tier suffices), a hard one ``weak_score = 0``,
``strong_score = 1``; each row's ``task`` is ``obvious/<family>``. Fit rows carry
``anchor_weight`` (how many traffic rows each counts as when training, see
:mod:`cascade.training.traffic`), chosen by :func:`choose_weight` on the fit families and the
traffic alone (``--weight W`` sets it instead). The costs are nominal (list prices of the
training data's model pair at 4 characters a token, 40 output tokens for an easy prompt and 600
for a hard one): these rows teach the order of prompts, not a cost curve.

``python -m cascade.training.obvious measure --model NAME --thresholds SMALL MEDIUM FILE...``
counts, per file (and per writing round of the hand-written prompts), the easy prompts a model
sends to the frontier and the hard ones it keeps on the smallest tier under those thresholds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import TrainingError
from cascade.training.evaluation import Outcomes
from cascade.training.feature_model import (
    ALPHA,
    Anchors,
    anchor_confidence,
    feature_matrix,
    fit_confidence,
)
from cascade.training.traffic import load_labeled
from cascade.training.train import DEFAULT_HOLDOUT_TASKS

__all__ = [
    "WEIGHTS",
    "Family",
    "Routing",
    "WeightChoice",
    "choose_weight",
    "expand",
    "labeled_rows",
    "load_families",
    "main",
    "read_obvious",
    "route_obvious",
]

_LABELS = ("easy", "hard")
_SPLITS = ("fit", "check")
_SLOT = re.compile(r"\{(\w+)\}")
# nominal prices ($ per token) of the training data's pair: Mixtral 0.60/M, GPT-4 10/M in 30/M out
_WEAK_USD, _STRONG_IN_USD, _STRONG_OUT_USD = 0.6e-6, 10e-6, 30e-6
_OUTPUT_TOKENS = {"easy": 40, "hard": 600}
WEIGHTS = (1.0, 3.0, 10.0, 30.0, 100.0)
"""The anchor weights :func:`choose_weight` compares."""
# The default policy's targets on traffic: 55% on the smallest tier, 85% on the two cheaper ones.
_SMALL_SHARE, _CHEAP_SHARE = 0.55, 0.85


@dataclass(frozen=True)
class Family:
    """Prompts of one phrasing pattern, all with the same label and split."""

    name: str
    label: str
    split: str
    templates: tuple[str, ...]
    fillers: dict[str, tuple[str, ...]]


def load_families(path: Path) -> tuple[list[Family], int]:
    """The families of a YAML file and its ``per_template`` cap, checked."""
    import yaml  # noqa: PLC0415 - only this command reads YAML families

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    families = []
    for name, spec in doc["families"].items():
        family = Family(
            name=name,
            label=spec["label"],
            split=spec["split"],
            templates=tuple(spec["templates"]),
            fillers={slot: tuple(map(str, values)) for slot, values in spec["fillers"].items()},
        )
        if family.label not in _LABELS or family.split not in _SPLITS:
            raise TrainingError(f"{path}: family {name}: label must be easy|hard, split fit|check")
        for template in family.templates:
            if missing := set(_SLOT.findall(template)) - set(family.fillers):
                raise TrainingError(f"{path}: family {name}: no fillers for {sorted(missing)}")
        families.append(family)
    _check_disjoint(path, families)
    return families, int(doc["per_template"])


def _check_disjoint(path: Path, families: Sequence[Family]) -> None:
    """The check split must share no template and no filler with the fit split."""
    parts: dict[str, set[str]] = {split: set() for split in _SPLITS}
    for family in families:
        parts[family.split].update(t.casefold() for t in family.templates)
        for values in family.fillers.values():
            parts[family.split].update(v.casefold() for v in values)
    if shared := parts["fit"] & parts["check"]:
        raise TrainingError(f"{path}: fit and check splits share {sorted(shared)[:5]}")


def expand(family: Family, per_template: int, seed: int = 0) -> list[str]:
    """Every template with every combination of its slots' fillers, at most ``per_template``.

    When a template has more combinations, a draw seeded by ``seed`` and the family's name picks
    which; the result is the same on every run.
    """
    prompts = []
    for number, template in enumerate(family.templates):
        slots = list(dict.fromkeys(_SLOT.findall(template)))
        combos = list(itertools.product(*(family.fillers[s] for s in slots)))
        if len(combos) > per_template:
            rng = random.Random(f"{seed}:{family.name}:{number}")
            combos = sorted(rng.sample(combos, per_template), key=combos.index)
        formatter = string.Formatter()
        for combo in combos:
            prompts.append(formatter.vformat(template, (), dict(zip(slots, combo, strict=True))))
    return list(dict.fromkeys(prompts))


def labeled_rows(
    families: Sequence[Family], per_template: int, *, weight: float | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The families' prompts as labeled-traffic rows (with ``anchor_weight`` when given)."""
    rows = []
    for family in families:
        for number, prompt in enumerate(expand(family, per_template, seed)):
            easy = family.label == "easy"
            tokens_in = len(prompt) / 4
            tokens_out = _OUTPUT_TOKENS[family.label]
            row: dict[str, Any] = {
                "id": f"obvious/{family.name}/{number}",
                "task": f"obvious/{family.name}",
                "prompt": prompt,
                "weak_score": 1.0,
                "strong_score": 1.0,
                "weak_cost_usd": round((tokens_in + tokens_out) * _WEAK_USD, 9),
                "strong_cost_usd": round(
                    tokens_in * _STRONG_IN_USD + tokens_out * _STRONG_OUT_USD, 9
                ),
            }
            if not easy:
                row["weak_score"] = 0.0
            if weight is not None:
                row["anchor_weight"] = weight
            rows.append(row)
    return rows


@dataclass(frozen=True)
class WeightChoice:
    """The chosen weight and, per weight, the misrouted prompts of left-out fit families."""

    weight: float
    easy_to_frontier: dict[float, int]
    hard_to_small: dict[float, int]
    prompts: int


def choose_weight(
    traffic: Sequence[Path],
    families: Sequence[Family],
    per_template: int,
    *,
    weights: Sequence[float] = WEIGHTS,
    seed: int = 0,
) -> WeightChoice:
    """The smallest anchor weight that misroutes fewest prompts of fit families left out.

    The form model is fitted on ``traffic`` minus the default held-out tasks, as ``cascade
    train`` does; then for each weight and each fit family, the anchored correction is fitted on
    the other fit families and that family is routed with thresholds that keep 55% and 85% of
    the traffic on the two cheaper tiers (the default policy's targets): an easy prompt below
    the second misroutes to the frontier, a hard one at or above the first stays on the
    smallest tier. Check families are never read.
    """
    examples = [e for e in load_labeled(traffic) if e.task not in DEFAULT_HOLDOUT_TASKS]
    features = feature_matrix([e.prompt for e in examples])
    outcomes = Outcomes.from_examples(examples)
    model = fit_confidence(features, outcomes, alpha=ALPHA)
    fit = [f for f in families if f.split == "fit"]
    prompts = {f.name: expand(f, per_template, seed) for f in fit}
    matrices = {name: feature_matrix(p) for name, p in prompts.items()}
    easy = {f.name: f.label == "easy" for f in fit}
    frontier: dict[float, int] = {}
    small: dict[float, int] = {}
    for weight in weights:
        frontier[weight] = small[weight] = 0
        for left_out in prompts:
            others = [name for name in prompts if name != left_out]
            rows = np.vstack([matrices[name] for name in others])
            is_easy = np.concatenate([np.full(len(prompts[n]), easy[n]) for n in others])
            anchors = Anchors(
                rows,
                Outcomes(
                    is_easy * 1.0, np.ones(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
                ),
                np.full(len(rows), weight),
            )
            anchored = anchor_confidence(model, features, outcomes, anchors)
            on_traffic = anchored.confidence(features)
            small_from = np.quantile(on_traffic, 1 - _SMALL_SHARE)
            cheap_from = np.quantile(on_traffic, 1 - _CHEAP_SHARE)
            held = anchored.confidence(matrices[left_out])
            if easy[left_out]:
                frontier[weight] += int((held < cheap_from).sum())
            else:
                small[weight] += int((held >= small_from).sum())
    chosen = min(weights, key=lambda w: (frontier[w] + small[w], w))
    return WeightChoice(chosen, frontier, small, sum(map(len, prompts.values())))


@dataclass(frozen=True)
class Routing:
    """Where easy and hard obvious prompts went under a model and two tier thresholds."""

    easy: int
    easy_to_frontier: int
    easy_to_small: int
    hard: int
    hard_to_small: int
    hard_to_frontier: int


def route_obvious(
    confidence: np.ndarray, easy: np.ndarray, small_from: float, cheap_from: float
) -> Routing:
    """Count prompts by tier: small from ``small_from`` up, medium from ``cheap_from`` up."""
    small, frontier = confidence >= small_from, confidence < cheap_from
    return Routing(
        int(easy.sum()),
        int((easy & frontier).sum()),
        int((easy & small).sum()),
        int((~easy).sum()),
        int((~easy & small).sum()),
        int((~easy & frontier).sum()),
    )


def read_obvious(path: Path) -> list[tuple[str, bool, str]]:
    """``(prompt, easy, group)`` of each line: hand-written rows (``label``, ``round``) or rows
    this module wrote (``weak_score`` 1 is easy, grouped by file)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            easy = row["label"] == "easy" if "label" in row else row["weak_score"] == 1.0
            group = f"round {row['round']}" if "round" in row else "all"
            rows.append((row["prompt"], easy, group))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Write the obvious prompts' labeled rows, or measure where a model routes them."""
    parser = argparse.ArgumentParser(
        prog="python -m cascade.training.obvious", description=main.__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write fit.jsonl and check.jsonl from families")
    write.add_argument("families", type=Path, help="the YAML families file")
    write.add_argument("--out", type=Path, required=True, help="the folder to write into")
    weight = write.add_mutually_exclusive_group(required=True)
    weight.add_argument(
        "--data",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="labeled traffic to choose the fit rows' anchor_weight on",
    )
    weight.add_argument("--weight", type=float, help="the fit rows' anchor_weight")
    write.add_argument("--seed", type=int, default=0, help="seed of the draw of combinations")
    measure = commands.add_parser("measure", help="count misrouted easy and hard prompts")
    measure.add_argument("files", nargs="+", type=Path, help="obvious prompts (JSONL)")
    measure.add_argument("--model", required=True, help="a shipped scorer's name or folder")
    measure.add_argument(
        "--thresholds",
        nargs=2,
        type=float,
        required=True,
        metavar=("SMALL", "MEDIUM"),
        help="the smallest and the middle tier's thresholds",
    )
    ns = parser.parse_args(argv)
    return _write(ns) if ns.command == "write" else _measure(ns)


def _write(ns: argparse.Namespace) -> int:
    families, per_template = load_families(ns.families)
    chosen = ns.weight
    if ns.data:
        choice = choose_weight(ns.data, families, per_template, seed=ns.seed)
        print(
            f"left-out fit families ({choice.prompts} prompts): weight, easy->frontier, hard->small"
        )
        for w in choice.easy_to_frontier:
            print(f"  {w:g}\t{choice.easy_to_frontier[w]}\t{choice.hard_to_small[w]}")
        chosen = choice.weight
        print(f"chosen anchor_weight: {chosen:g}")
    ns.out.mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        chosen_families = [f for f in families if f.split == split]
        rows = labeled_rows(
            chosen_families,
            per_template,
            weight=chosen if split == "fit" else None,
            seed=ns.seed,
        )
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (ns.out / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        print(f"{ns.out / f'{split}.jsonl'}: {len(rows)} rows from {len(chosen_families)} families")
    return 0


def _measure(ns: argparse.Namespace) -> int:
    from cascade.model.scorer import OnnxScorer  # noqa: PLC0415 - loads onnxruntime

    scorer = OnnxScorer(ns.model, device="cpu")
    small_from, cheap_from = ns.thresholds
    print("file group: easy ->frontier ->small | hard ->small ->frontier")
    for path in ns.files:
        rows = read_obvious(path)
        confidence = np.array(scorer.score_batch([prompt for prompt, _, _ in rows]))
        easy = np.array([e for _, e, _ in rows])
        groups = np.array([g for _, _, g in rows])
        for group in ["all", *sorted(set(groups) - {"all"})]:
            chosen = np.ones(len(rows), dtype=bool) if group == "all" else groups == group
            r = route_obvious(confidence[chosen], easy[chosen], small_from, cheap_from)
            print(
                f"{path.name} {group}: {r.easy} {r.easy_to_frontier} {r.easy_to_small} | "
                f"{r.hard} {r.hard_to_small} {r.hard_to_frontier}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
