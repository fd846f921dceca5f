"""``cascade demo`` runs end to end: simulated tiers, the proxy, a workload, a full ledger."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


def test_demo_answers_every_request_and_records_each_one(tmp_path: Path) -> None:
    """A small demo run, as a user starts it, answers all requests, leaves one ledger row per
    request, and prints its story: the per-request log lines go to the file it names."""
    database = tmp_path / "demo.db"
    args = ["demo", "--database", str(database), "--steady", "24", "--burst", "24"]
    done = subprocess.run(
        [sys.executable, "-m", "cascade", *args, "--time-scale", "0.05"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "72 requests in " in out  # 24 steady + 24 burst, then the 24 steady with verify
    assert "72 answered, 0 failed" in out
    assert "same 24 steady prompts, without and with the verify step:" in out
    assert "  demo-verify  right " in out
    assert "the verifier escalated " in out
    assert "request.completed" not in out + done.stderr
    assert "simulator.request" not in out + done.stderr
    log_file = database.with_suffix(".log")
    assert f"logs: {log_file}" in out
    assert log_file.read_text().count('"event":"request.completed"') == 72
    assert "cascade plan for the demo's traffic" in out
    assert "  its 48 requests as a whole day: cheapest small 0, medium 0 at $" in out
    assert "a minute of traffic is a tiny day: one " in out
    assert len(out.splitlines()) < 90
    with sqlite3.connect(database) as conn:
        (requests,) = conn.execute("select count(*) from requests").fetchone()
        (attempts,) = conn.execute("select count(*) from attempts").fetchone()
        tiers = {t for (t,) in conn.execute("select distinct final_tier from requests")}
    assert requests == 72
    assert attempts >= 72
    assert tiers <= {"small", "medium", "frontier"}
    assert len(tiers) >= 2
