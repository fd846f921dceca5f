"""``cascade policy diff OLD NEW``: what a policy change changes, field by field, and with
``--url`` its effect replayed on the ledger's logged traffic (``cascade replay``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.ledger.migrate import upgrade_database
from cascade.ledger.replay import replay_policy
from cascade.policy import parse_policy
from tests.conftest import TWO_TIERS
from tests.test_replay import ALL_SMALL, LOGGED, _store, patterned_entries

MEDIUM = """\
  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: http://127.0.0.1:8002/v1
    price: {gpu_usd_per_hour: 2.0, tokens_per_second: 500}
    threshold: 0.4
"""


def test_the_diff_names_every_changed_field_by_section(
    write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A lower threshold, a new tier, another scorer model, a new workload and exploration
    each print as one line under their section, before and after; what did not change is not
    printed."""
    old = write_policy(TWO_TIERS, "old.yaml")
    new_text = (
        TWO_TIERS.replace("threshold: 0.7", "threshold: 0.6").replace(
            "  - name: big\n", MEDIUM + "  - name: big\n"
        )
        + "scorer:\n  model: prompt-features-v1\n"
        + "workloads:\n  interactive: {}\n  batch:\n    tiers: [small, medium]\n"
        + "learning:\n  explore: 0.05\n"
    )
    new = write_policy(new_text, "new.yaml")
    assert main(["policy", "diff", str(old), str(new)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"policy diff: {old} (team-a ")
    assert f"-> {new} (team-a " in lines[0]
    body = [line.split() for line in lines[1:]]
    assert body == [
        ["thresholds:"],
        ["tiers.small.threshold", "0.7", "->", "0.6"],
        ["tiers:"],
        ["tiers.medium", "added:", "tier", "medium", "(self_hosted,", "model", "distill-7b,",
         "threshold", "0.4)"],
        ["models:"],
        ["scorer.model", "prompt-features-v2", "->", "prompt-features-v1"],
        ["workloads:"],
        ["workloads.batch", "added:", '{"tiers":', '["small",', '"medium"]}'],
        ["learning:"],
        ["learning.explore", "0.0", "->", "0.05"],
    ]  # fmt: skip


def test_moved_and_removed_tiers_and_no_change(
    write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiers are matched by name: a removed tier says what it was; the same policy written
    differently (comments, a default spelled out) has no change."""
    three = TWO_TIERS.replace("  - name: big\n", MEDIUM + "  - name: big\n")
    old, new = write_policy(three, "old.yaml"), write_policy(TWO_TIERS, "new.yaml")
    assert main(["policy", "diff", str(old), str(new), "--json"]) == 0
    (change,) = json.loads(capsys.readouterr().out)["changes"]
    assert (change["section"], change["field"], change["removed"]) == (
        "tiers",
        "tiers.medium",
        True,
    )
    assert change["old"]["model"] == "distill-7b"
    same = write_policy("# the same\n" + TWO_TIERS + "default_workload: interactive\n", "s.yaml")
    assert main(["policy", "diff", str(new), str(same)]) == 0
    assert "no change: the two policies route alike" in capsys.readouterr().out


def test_with_a_ledger_the_change_is_replayed(
    tmp_path: Path, write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """With --url the diff is followed by cascade replay's estimate of NEW on the requests
    logged under OLD's name: the same figures replay_policy gives, in text and in JSON."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade_database(url)
    asyncio.run(_store(url, patterned_entries()))
    old, new = write_policy(LOGGED, "old.yaml"), write_policy(ALL_SMALL, "new.yaml")
    args = ["policy", "diff", str(old), str(new), "--url", url, "--tenant", "acme"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    week = datetime.now(UTC) - timedelta(days=7)
    expected = replay_policy(url, parse_policy(ALL_SMALL), since=week, tenant="acme")
    assert [c["field"] for c in data["changes"]] == ["tiers.small.threshold", "learning.explore"]
    replay = data["replay"]
    assert replay["logged_policy"] == "team-a"
    assert (replay["replayed"], replay["tiers"]) == (expected.replayed, {"small": 100})
    assert expected.estimate.candidate is not None
    cost = replay["estimate"]["candidate"]["mean_cost_usd"]
    assert cost["value"] == pytest.approx(expected.estimate.candidate.mean_cost_usd.value)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "tiers.small.threshold  0.7 -> 0.0" in text
    assert "replayed: NEW on the requests logged under policy 'team-a'" in text
