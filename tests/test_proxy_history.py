"""A workload's history cap through the proxy: the tier gets the trimmed conversation, and the
answer's header, the request's log line and its ledger row say what was trimmed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
from sqlalchemy import select

from cascade.cli import main
from cascade.core.tokens import estimate_message_tokens
from cascade.ledger import create_engine
from cascade.ledger.models import Request
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.asgi_app import RunningApp, running_app
from tests.servers import serving
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier

CAPPED = """\
workloads:
  interactive: {{}}
  agent: {{max_history_tokens: {budget}}}
"""

SYSTEM: dict[str, Any] = {"role": "system", "content": "You are ACME's support assistant."}
OLD: list[dict[str, Any]] = [
    {"role": "user", "content": "My order 1234 never arrived. " * 20},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "lost in transit " * 30},
    {"role": "assistant", "content": "I am sorry: it was lost. A new one is on its way. " * 5},
]
RECENT: list[dict[str, Any]] = [
    {"role": "user", "content": "Thanks. When will the new one arrive?"},
    {"role": "assistant", "content": "On Friday."},
    {"role": "user", "content": "Can it come sooner?"},
]
CONVERSATION = [SYSTEM, *OLD, *RECENT]


def _ask(app: RunningApp, workload: str) -> httpx.Response:
    body = {"model": "cascade", "messages": CONVERSATION}
    headers = [
        (b"content-type", b"application/json"),
        (b"x-cascade-workload", workload.encode()),
    ]
    return app.request(
        "POST", "/v1/chat/completions", headers=headers, content=json.dumps(body).encode()
    )


async def _rows(url: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(Request.__table__))
            return {row.request_id: dict(row._mapping) for row in rows}
    finally:
        await engine.dispose()


def test_a_capped_workload_sends_and_reports_the_trimmed_conversation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under the cap's workload the tier receives the conversation without its oldest turn
    (the tool call and its result with it), the answer says ``x-cascade-history-trimmed``, and
    the log line, the ledger row and ``cascade report`` carry the counts; another workload is
    sent whole, silently."""
    budget = estimate_message_tokens(RECENT)
    trimmed_tokens = estimate_message_tokens(OLD)
    small, medium, big = ScriptedTier("small"), ScriptedTier("medium"), ScriptedTier("big")
    url = f"sqlite:///{tmp_path / 'cascade.db'}"
    with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "capped.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b) + CAPPED.format(budget=budget))
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=url,
            spool_path=str(tmp_path / "spool"),
            reload_interval_s=0,
        )
        with structlog.testing.capture_logs() as logs, running_app(create_app(settings)) as app:
            capped = _ask(app, "agent")
            whole = _ask(app, "interactive")
        # The proxy has shut down: its ledger rows are written.
    assert capped.status_code == whole.status_code == 200
    assert [r["messages"] for r in small.requests] == [[SYSTEM, *RECENT], CONVERSATION]

    assert capped.headers["x-cascade-history-trimmed"] == f"messages=4; tokens={trimmed_tokens}"
    assert "x-cascade-history-trimmed" not in whole.headers

    lines = {e["request_id"]: e for e in logs if e["event"] == "request.completed"}
    capped_id = capped.headers["x-cascade-request-id"]
    whole_id = whole.headers["x-cascade-request-id"]
    assert (lines[capped_id]["trimmed_messages"], lines[capped_id]["trimmed_tokens"]) == (
        4,
        trimmed_tokens,
    )
    assert "trimmed_messages" not in lines[whole_id]

    rows = asyncio.run(_rows(url))
    assert (rows[capped_id]["trimmed_messages"], rows[capped_id]["trimmed_tokens"]) == (
        4,
        trimmed_tokens,
    )
    assert (rows[whole_id]["trimmed_messages"], rows[whole_id]["trimmed_tokens"]) == (0, 0)
    assert rows[capped_id]["prefix_hash"] == rows[whole_id]["prefix_hash"]

    assert main(["report", "--url", url, "--policy", str(policy), "--since", "all"]) == 0
    report = capsys.readouterr().out
    total = report[report.index("== total ==") :]
    assert f"history trimmed       1 requests, {trimmed_tokens} estimated tokens not sent" in total
