"""The JSON log lines of long-running commands (cascade serve, simulate-tier)."""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import decimal, structlog
from cascade.logs import configure_json_logs
configure_json_logs("info")
log = structlog.get_logger("cascade.proxy")
log.debug("hidden")
log.info("request.completed", request_id="req_1", cost_usd=decimal.Decimal("0.5"))
try:
    {}["missing"]
except KeyError:
    log.exception("request.crashed", request_id="req_2")
"""


def test_one_json_object_per_line_with_level_time_and_traceback() -> None:
    """Each event is one JSON line at or above the level; a logged exception keeps its
    traceback, so a 500's request id leads to the code that failed."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["request.completed", "request.crashed"]
    completed, crashed = lines
    assert completed["level"] == "info"
    assert completed["cost_usd"] == "Decimal('0.5')"
    assert completed["timestamp"].endswith("Z")
    assert crashed["level"] == "error"
    assert crashed["request_id"] == "req_2"
    assert "Traceback" in crashed["exception"]
    assert "KeyError: 'missing'" in crashed["exception"]
