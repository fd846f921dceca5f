"""``cascade calibrate``: a tier threshold that meets a target, written only if the policy stays
valid and its probes still route where they must."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def calibrate(ns: argparse.Namespace, labeled: Callable[[], tuple[Any, ...]]) -> int:
    """Run the command; ``labeled`` scores the data (called once the arguments check out): it
    returns (confidence, outcomes) for a scorer, (confidence, outcomes, evidence cost) for a
    verifier (``ns.kind``)."""
    from cascade.training.calibration import threshold_for, write_threshold, write_verify_threshold

    verifier = ns.kind == "verifier"
    if ns.write and not (ns.policy and ns.tier):
        print(
            "cascade calibrate: error: --write needs --policy FILE and --tier NAME", file=sys.stderr
        )
        return 2
    confidence, outcomes, *evidence = labeled()
    result = threshold_for(
        confidence,
        outcomes,
        max_strong_share=ns.max_strong_share,
        min_pgr=ns.min_pgr,
        evidence_cost=evidence[0] if evidence else None,
    )
    target = (
        f"max-strong-share {ns.max_strong_share}"
        if ns.max_strong_share is not None
        else f"min-pgr {ns.min_pgr}"
    )
    if verifier:
        print(
            f"verify threshold {result.threshold:.6g}: {result.strong_share:.1%} of "
            f"{result.rows} candidates escalated ({1 - result.strong_share:.1%} kept), PGR "
            f"{result.pgr:.3f}, cost {result.cost_ratio:.1%} of all-strong with the witnesses "
            f"paid (target {target}, model {ns.model})"
        )
    else:
        print(
            f"threshold {result.threshold:.6g}: {result.strong_share:.1%} of {result.rows} "
            f"calls to the strong side, PGR {result.pgr:.3f}, cost {result.cost_ratio:.1%} of "
            f"all-strong (target {target}, model {ns.model})"
        )
    if not ns.write:
        if verifier:
            where = f"tiers[{ns.tier or 'NAME'}].verify.threshold"
            print(f"in the policy: {where}: {result.threshold:.6g} (--write sets it)")
        return 0
    text = ns.policy.read_text(encoding="utf-8")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in ns.data)).hexdigest()
    provenance = (
        f"{result.threshold:.6g} from {', '.join(p.name for p in ns.data)} "
        f"(sha256 {digest[:16]}, {result.rows} rows), target {target}, model {ns.model}, "
        f"{datetime.date.today().isoformat()}"
    )
    if verifier:  # no tier order or probes: the verify threshold changes no routing up front
        new = write_verify_threshold(
            text, ns.tier, result.threshold, provenance, source=str(ns.policy)
        )
        ns.policy.write_text(new, encoding="utf-8")
        print(f"wrote tiers[{ns.tier}].verify.threshold in {ns.policy}")
        return 0
    _check_order(ns.policy, ns.tier, result.threshold)
    new = write_threshold(text, ns.tier, result.threshold, provenance, source=str(ns.policy))
    if not _probes_pass(new, ns.policy):
        print(f"not written: {ns.policy} is unchanged", file=sys.stderr)
        return 1
    ns.policy.write_text(new, encoding="utf-8")
    print(f"wrote tiers[{ns.tier}].threshold in {ns.policy}")
    return 0


def verified_confidence(data: Sequence[Path], model: str, witnesses: int | None) -> tuple[Any, ...]:
    """(confidence, outcomes, evidence cost) of a verifier on answers files or labeled traffic
    with answers (:mod:`cascade.training.verify_set`)."""
    from cascade.model.verifier import OnnxVerifier
    from cascade.training.verify_set import load_verify_set

    rows = load_verify_set(data, witnesses=witnesses)
    confidence = OnnxVerifier(model, device="cpu").confidence_of_features(rows.features)
    return confidence, rows.outcomes, rows.evidence_cost


def _check_order(policy_file: Path, tier: str, threshold: float) -> None:
    """Refuse a threshold that breaks the policy's order (thresholds fall from the cheapest tier
    to the strongest), saying what else to change."""
    from cascade.errors import CascadeError
    from cascade.policy import load_policy

    tiers = [t for t in load_policy(policy_file).tiers if t.threshold is not None]
    names = [t.name for t in tiers]
    if tier not in names:
        return  # write_threshold says what is wrong with the tier
    at = names.index(tier)
    cheaper, stronger = (
        tiers[at - 1] if at else None,
        tiers[at + 1] if at + 1 < len(tiers) else None,
    )
    value = f"{threshold:.6g}"
    rule = "thresholds must not rise from the cheapest tier to the strongest"
    if stronger is not None and stronger.threshold is not None and threshold < stronger.threshold:
        raise CascadeError(
            f"{policy_file}: {tier}'s threshold {value} would be below {stronger.name}'s "
            f"{stronger.threshold:g} ({rule}), and {stronger.name} would get none of {tier}'s "
            f"traffic. Calibrate {stronger.name} first, to at most {value}, or set a stricter "
            f"target for {tier}; nothing was written"
        )
    if cheaper is not None and cheaper.threshold is not None and threshold > cheaper.threshold:
        raise CascadeError(
            f"{policy_file}: {tier}'s threshold {value} would be above {cheaper.name}'s "
            f"{cheaper.threshold:g} ({rule}). Calibrate {cheaper.name} first, to at least "
            f"{value}, or set a looser target for {tier}; nothing was written"
        )


def _probes_pass(text: str, policy_file: Path) -> bool:
    """Run the new policy's probes and print them; True when all route where they must."""
    from cascade.core.planner import Planner
    from cascade.core.probes import run_probes
    from cascade.policy import parse_policy

    results = run_probes(Planner(parse_policy(text, source=str(policy_file))))
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        detail = f"-> {r.actual}" if r.passed else f"expected {r.expected}, got {r.actual}"
        print(f"  probe {mark} {r.label!r} {detail} (confidence {r.confidence:.3f})")
    failed = [r for r in results if not r.passed]
    if failed:
        print(
            f"{len(failed)} of {len(results)} probes would route elsewhere with this threshold: "
            "if the new routing is what you want, update those probes; else choose another target",
            file=sys.stderr,
        )
    return not failed
