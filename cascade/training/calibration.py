"""Turn a routing target into a tier threshold on a team's own labeled traffic.

A tier keeps a prompt when its confidence is at least the tier's threshold; the rest goes to the
stronger side. :func:`threshold_for` picks the threshold that meets a target (at most this share
of calls to the strong side, or at least this PGR) on labeled rows, and reports what it achieves
there. :func:`write_threshold` puts it into a policy file's YAML text in place, so comments and
layout survive, with a provenance comment above the threshold line, and validates the result
with :func:`cascade.policy.parse_policy` before anyone writes it. :func:`write_verify_threshold`
does the same for a tier's ``verify.threshold`` (the verifier's, ``cascade calibrate --kind
verifier``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import yaml

from cascade.errors import LabeledDataError, PolicyError, PolicyProblem
from cascade.training.evaluation import Outcomes

__all__ = ["Calibration", "threshold_for", "write_threshold", "write_verify_threshold"]

PROVENANCE_MARK = "# calibrated:"
"""Comment lines starting with this, directly above a threshold, are replaced on each write."""


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it achieves on the data it was chosen on."""

    threshold: float
    strong_share: float
    pgr: float
    cost_ratio: float
    rows: int


def threshold_for(
    confidence: np.ndarray,
    outcomes: Outcomes,
    *,
    max_strong_share: float | None = None,
    min_pgr: float | None = None,
    evidence_cost: np.ndarray | None = None,
) -> Calibration:
    """The threshold meeting exactly one target, with fewest strong calls for ``min_pgr``.

    ``max_strong_share``: the highest threshold sending at most that share to the strong side.
    ``min_pgr``: the lowest threshold whose performance gap recovered reaches it. Raises
    :class:`LabeledDataError` when the target cannot be met on this data.
    ``evidence_cost``: for a verify threshold, what each row's witnesses cost; then every row
    pays the cheap answer and its witnesses, and the rows below the threshold the strong answer
    too (a scorer's threshold routes before any call: the strong side pays the strong answer
    alone).
    """
    if (max_strong_share is None) == (min_pgr is None):
        raise ValueError("give exactly one of max_strong_share and min_pgr")
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(confidence)
    gap = float(outcomes.strong_score.mean() - outcomes.weak_score.mean())
    # candidate thresholds: each distinct confidence (strong side = everything below it), then 1
    candidates = np.unique(np.concatenate([[0.0], np.round(confidence, 6), [1.0]]))
    results = [_achieved(float(t), confidence, outcomes, gap, evidence_cost) for t in candidates]
    if max_strong_share is not None:
        if not 0.0 <= max_strong_share <= 1.0:
            raise ValueError(f"max_strong_share must be in [0, 1], got {max_strong_share}")
        fitting = [r for r in results if r.strong_share <= max_strong_share + 1e-12]
        return max(fitting, key=lambda r: r.threshold)
    assert min_pgr is not None
    if abs(gap) < 1e-12:
        raise LabeledDataError(
            f"both tiers score the same on these {n} rows: no PGR target can be calibrated"
        )
    reaching = [r for r in results if r.pgr >= min_pgr - 1e-12]
    if not reaching:
        best = max(r.pgr for r in results)
        raise LabeledDataError(
            f"no threshold reaches PGR {min_pgr} on these {n} rows (the best is {best:.3f}); "
            "ask for a lower --min-pgr"
        )
    return min(reaching, key=lambda r: (r.strong_share, r.threshold))


def _achieved(
    threshold: float,
    confidence: np.ndarray,
    outcomes: Outcomes,
    gap: float,
    evidence_cost: np.ndarray | None,
) -> Calibration:
    strong = confidence < threshold
    chosen = np.where(strong, outcomes.strong_score, outcomes.weak_score)
    if evidence_cost is None:
        cost = np.where(strong, outcomes.strong_cost, outcomes.weak_cost).sum()
    else:
        cost = (outcomes.weak_cost + evidence_cost).sum() + outcomes.strong_cost[strong].sum()
    pgr = (chosen.mean() - outcomes.weak_score.mean()) / gap if abs(gap) >= 1e-12 else 1.0
    return Calibration(
        threshold=threshold,
        strong_share=float(strong.mean()),
        pgr=float(pgr),
        cost_ratio=float(cost / max(outcomes.strong_cost.sum(), 1e-300)),
        rows=len(confidence),
    )


def write_threshold(
    text: str, tier: str, threshold: float, provenance: str, *, source: str = "<policy>"
) -> str:
    """``text`` with ``tiers[name=tier].threshold`` set and a provenance comment above it.

    Only that line (and the comment lines directly above it that start with
    :data:`PROVENANCE_MARK`) changes; a tier without a threshold gets one after its ``name``.
    Raises :class:`PolicyError` when the tier is absent or the result is not a valid policy.
    """
    from cascade.policy import parse_policy  # noqa: PLC0415 - pydantic models load on use

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    item = _tier_node(root, tier, source)
    lines = text.split("\n")
    value = f"{threshold:.6g}" if threshold not in (0.0, 1.0) else f"{threshold:.1f}"
    keys = {k.value: (k, v) for k, v in item.value if isinstance(k, yaml.ScalarNode)}
    if "threshold" in keys:
        key, node = keys["threshold"]
        row = node.start_mark.line
        line = lines[row]
        lines[row] = line[: node.start_mark.column] + value + line[node.end_mark.column :]
        indent = key.start_mark.column
    else:
        name_key = keys["name"][0]
        row, indent = name_key.start_mark.line + 1, name_key.start_mark.column
        lines.insert(row, " " * indent + f"threshold: {value}")
    start = row
    while start > 0 and lines[start - 1].strip().startswith(PROVENANCE_MARK):
        start -= 1
    lines[start:row] = [" " * indent + f"{PROVENANCE_MARK} {provenance}"]
    result = "\n".join(lines)
    parsed = parse_policy(result, source=source)
    if parsed.tier(tier).threshold != float(value):
        raise PolicyError([PolicyProblem(source, row + 1, f"tiers[{tier}].threshold", "not set")])
    return result


def _tier_node(root: yaml.Node | None, tier: str, source: str) -> yaml.MappingNode:
    tiers = None
    if isinstance(root, yaml.MappingNode):
        tiers = next((v for k, v in root.value if getattr(k, "value", None) == "tiers"), None)
    if isinstance(tiers, yaml.SequenceNode):
        for item in tiers.value:
            if isinstance(item, yaml.MappingNode) and any(
                getattr(k, "value", None) == "name" and getattr(v, "value", None) == tier
                for k, v in item.value
            ):
                return item
    raise PolicyError(
        [PolicyProblem(source, None, "tiers", f"no tier named {tier!r} to set a threshold on")]
    )


def write_verify_threshold(
    text: str, tier: str, threshold: float, provenance: str, *, source: str = "<policy>"
) -> str:
    """``text`` with ``tiers[name=tier].verify.threshold`` set, a provenance comment above the
    line that holds it; block (``verify:`` then indented keys) and flow (``verify: {...}``)
    style. Raises :class:`PolicyError` when the tier or its verify block is absent or the result
    is not a valid policy."""
    from cascade.policy import parse_policy  # noqa: PLC0415 - pydantic models load on use

    item = _tier_node(yaml.compose(text, Loader=yaml.SafeLoader), tier, source)
    keys = {k.value: (k, v) for k, v in item.value if isinstance(k, yaml.ScalarNode)}
    if not isinstance(keys.get("verify", (None, None))[1], yaml.MappingNode):
        line = keys["name"][0].start_mark.line + 1
        problem = "no verify block to set a threshold in; add one (samples or witness) first"
        raise PolicyError([PolicyProblem(source, line, f"tiers[{tier}].verify", problem)])
    block = keys["verify"][1]
    inner = {k.value: v for k, v in block.value if isinstance(k, yaml.ScalarNode)}
    lines = text.split("\n")
    value = f"{threshold:.6g}" if threshold not in (0.0, 1.0) else f"{threshold:.1f}"
    if "threshold" in inner:  # replace the value where it stands
        node = inner["threshold"]
        row, line = node.start_mark.line, lines[node.start_mark.line]
        lines[row] = line[: node.start_mark.column] + value + line[node.end_mark.column :]
    elif block.flow_style:  # add it before the closing brace
        row, column = block.end_mark.line, block.end_mark.column - 1
        line = lines[row]
        lines[row] = line[:column].rstrip() + f", threshold: {value}" + line[column:]
    else:  # a line of its own, at the first key's indent
        first = block.value[0][0].start_mark
        row = first.line + 1
        lines.insert(row, " " * first.column + f"threshold: {value}")
    indent = len(lines[row]) - len(lines[row].lstrip())
    start = row
    while start > 0 and lines[start - 1].strip().startswith(PROVENANCE_MARK):
        start -= 1
    lines[start:row] = [" " * indent + f"{PROVENANCE_MARK} {provenance}"]
    result = "\n".join(lines)
    verify = parse_policy(result, source=source).tier(tier).verify
    if verify is None or verify.threshold != float(value):
        where = f"tiers[{tier}].verify.threshold"
        raise PolicyError([PolicyProblem(source, row + 1, where, "not set")])
    return result
