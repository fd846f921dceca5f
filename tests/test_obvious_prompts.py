"""The default policy is not backwards on obvious prompts: greetings, thanks, small talk and
one-step facts never reach the frontier API; proofs, derivations and systems work never stay on
the smallest tier. The prompts are hand-written and never trained any model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.core.planner import Planner
from cascade.training.obvious import labeled_rows, load_families, read_obvious

OBVIOUS = Path(__file__).parent / "data" / "obvious"
HANDWRITTEN = read_obvious(OBVIOUS / "handwritten.jsonl")


@pytest.fixture(scope="module")
def planner() -> Planner:
    """The shipped default policy with its scorer, on the CPU."""
    return Planner("default")


def _tiers(planner: Planner, easy: bool) -> list[tuple[str, str]]:
    return [(planner.plan(p).tier, p) for p, is_easy, _ in HANDWRITTEN if is_easy == easy]


def test_easy_prompts_never_reach_the_frontier(planner: Planner) -> None:
    """Each hand-written greeting, thanks, small talk, fact, conversion, sum or definition goes
    to small or medium."""
    routed = _tiers(planner, easy=True)
    assert len(routed) >= 100
    assert [p for tier, p in routed if tier == "frontier"] == []


def test_hard_prompts_never_stay_on_the_smallest_tier(planner: Planner) -> None:
    """Each hand-written proof, derivation, concurrency, systems, compiler, distributed-systems,
    verification, cryptography or optimization request goes to medium or frontier."""
    routed = _tiers(planner, easy=False)
    assert len(routed) >= 100
    assert [p for tier, p in routed if tier == "small"] == []


def test_most_easy_prompts_stay_on_the_smallest_tier(planner: Planner) -> None:
    """The cheapest tier takes the bulk of the easy prompts, not just "anything but frontier"."""
    routed = _tiers(planner, easy=True)
    assert sum(tier == "small" for tier, _ in routed) >= 0.9 * len(routed)


def test_handwritten_prompts_are_held_out() -> None:
    """No hand-written prompt is among the authored rows a model trains or is checked on."""
    authored = {
        json.loads(line)["prompt"].casefold()
        for name in ("fit.jsonl", "check.jsonl")
        for line in (OBVIOUS / name).read_text("utf-8").splitlines()
    }
    assert not {p.casefold() for p, _, _ in HANDWRITTEN} & authored


def test_committed_rows_are_the_families_expanded() -> None:
    """fit.jsonl and check.jsonl are exactly what families.yaml expands to (rerun
    ``python -m cascade.training.obvious write`` after editing the families)."""
    families, per_template = load_families(OBVIOUS / "families.yaml")
    fit_rows = [
        json.loads(line) for line in (OBVIOUS / "fit.jsonl").read_text("utf-8").split("\n") if line
    ]
    weight = fit_rows[0]["anchor_weight"]
    expected_fit = labeled_rows(
        [f for f in families if f.split == "fit"], per_template, weight=weight
    )
    check_rows = [
        json.loads(line)
        for line in (OBVIOUS / "check.jsonl").read_text("utf-8").split("\n")
        if line
    ]
    expected_check = labeled_rows([f for f in families if f.split == "check"], per_template)
    assert fit_rows == expected_fit
    assert check_rows == expected_check
