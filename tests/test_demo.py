"""``cascade demo`` runs end to end: simulated tiers, the proxy, a workload, a full ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cascade.cli import main


def test_demo_answers_every_request_and_records_each_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small demo run answers all requests and leaves one ledger row per request."""
    database = tmp_path / "demo.db"
    args = ["demo", "--database", str(database), "--steady", "24", "--burst", "24"]
    assert main([*args, "--time-scale", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "48 requests in " in out
    assert "48 answered, 0 failed" in out
    with sqlite3.connect(database) as conn:
        (requests,) = conn.execute("select count(*) from requests").fetchone()
        (attempts,) = conn.execute("select count(*) from attempts").fetchone()
        tiers = {t for (t,) in conn.execute("select distinct final_tier from requests")}
    assert requests == 48
    assert attempts >= 48
    assert tiers <= {"small", "medium", "frontier"}
    assert len(tiers) >= 2
