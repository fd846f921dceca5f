"""An API tier whose key is missing is unavailable, and says which variable to set."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving
from tests.test_proxy_load import API_POLICY
from tests.upstreams import ScriptedTier


def test_a_missing_api_key_makes_the_tier_unavailable_and_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its key an API tier is named at start-up and never called: the request gets a
    503 naming the unset variable (no provider 'Missing credentials' 502); with the key set, it
    answers."""
    monkeypatch.delenv("CASCADE_TEST_FRONTIER_KEY", raising=False)
    small, frontier = ScriptedTier("small", mode="503"), ScriptedTier("frontier")
    body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
    with serving(small.app()) as s, serving(frontier.app()) as f:
        policy = tmp_path / "api.yaml"
        policy.write_text(API_POLICY.format(small=s, frontier=f) + "    cooldown_s: 0.01\n")
        with (
            capture_logs() as logs,
            serving(create_app(ServerSettings(policies=(str(policy),)))) as url,
        ):
            refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            ready = httpx.get(f"{url}/readyz", timeout=10)
            monkeypatch.setenv("CASCADE_TEST_FRONTIER_KEY", "sk-test-123")
            small.mode = "503"
            answered = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert refused.status_code == 503
    assert "$CASCADE_TEST_FRONTIER_KEY is not set" in refused.json()["error"]["message"]
    assert refused.headers["x-cascade-request-id"]
    assert answered.status_code == 200, answered.text
    assert frontier.calls == 1
    assert ready.status_code == 200  # the self-hosted tier can still answer
    assert ready.json()["status"] == "degraded"
    assert ready.json()["tiers"] == {"apitest/frontier": "$CASCADE_TEST_FRONTIER_KEY is not set"}
    warned = [e for e in logs if e["event"] == "tier.key_missing"]
    assert [(e["tier"], e["variable"]) for e in warned] == [
        ("frontier", "CASCADE_TEST_FRONTIER_KEY")
    ]
