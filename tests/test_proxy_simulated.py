"""The proxy against simulated tiers: the default policy's shape, the OpenAI SDK unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import running_tier, serving

# The default policy's tiers, pointed at simulated servers (frontier through litellm).
POLICY = """\
name: simulated
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, max_concurrency: {cap},
      overflow: frontier, threshold: 0.818}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}, overflow: frontier,
      threshold: 0.734}}
  - {{name: frontier, model: openai/gpt-4o, kind: api, endpoint: "{frontier}/v1",
      api_key_env: CASCADE_SIMULATED_KEY, max_concurrency: 512}}
escalation:
  checks: [length, empty, invalid_json, invalid_tool_call]
"""
EASY = "What is 7 times 8?"  # the shipped model keeps this on the small tier


def _proxy(tmp_path: Path, cap: int, time_scale: float) -> Iterator[str]:
    with (
        running_tier("1.5b", time_scale=time_scale) as small,
        running_tier("7b", time_scale=time_scale) as medium,
        running_tier("frontier", time_scale=0.001) as frontier,
    ):
        policy = tmp_path / "simulated.yaml"
        policy.write_text(POLICY.format(small=small, medium=medium, frontier=frontier, cap=cap))
        with serving(create_app(ServerSettings(policies=(str(policy),)))) as url:
            yield url


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Simulated 1.5B, 7B and frontier tiers behind a running proxy."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CASCADE_SIMULATED_KEY", "sk-simulated")
        yield from _proxy(tmp_path_factory.mktemp("sim"), cap=64, time_scale=0.001)


@pytest.fixture
def sdk(proxy: str) -> Iterator[openai.OpenAI]:
    """The official OpenAI SDK pointed at the proxy (closed after the test: no leaked sockets)."""
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_sdk_plain_completion_from_a_simulated_tier(sdk: openai.OpenAI) -> None:
    """A plain request is answered by the small simulated tier, with usage and cost headers."""
    raw = sdk.chat.completions.with_raw_response.create(
        model="cascade", messages=[{"role": "user", "content": EASY}]
    )
    completion = raw.parse()
    assert raw.headers["x-cascade-tier"] == "small"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert float(raw.headers["x-cascade-cost-usd"]) > 0


def test_sdk_stream_with_usage_from_a_simulated_tier(sdk: openai.OpenAI) -> None:
    """A streamed request arrives in chunks with usage at the end."""
    chunks = list(
        sdk.chat.completions.create(
            model="cascade",
            messages=[{"role": "user", "content": EASY}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None


def test_sdk_tool_calls_are_valid_and_malformed_ones_escalated(sdk: openai.OpenAI) -> None:
    """Every tool call reaches the client with JSON arguments; the simulated cheap tiers'
    malformed ones were escalated, all the way to the frontier API tier through litellm."""
    tools: list[ChatCompletionFunctionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    attempts = []
    for i in range(40):
        raw = sdk.chat.completions.with_raw_response.create(
            model="cascade",
            messages=[{"role": "user", "content": f"What is the weather in city number {i}?"}],
            tools=tools,
        )
        calls = raw.parse().choices[0].message.tool_calls or []
        assert calls
        assert calls[0].type == "function"
        assert isinstance(json.loads(calls[0].function.arguments), dict)
        attempts.append(raw.headers["x-cascade-attempts"])
    escalated = [a for a in attempts if "rejected(invalid_tool_call)" in a]
    assert escalated  # the simulator's draws are fixed per prompt: some of these 40 are malformed
    assert all(a.endswith(":ok") for a in attempts)
    assert any(a.endswith("frontier:ok") for a in escalated)


def test_sdk_json_mode_always_returns_json(sdk: openai.OpenAI) -> None:
    """In JSON mode every answer parses: invalid JSON from a cheap tier is escalated."""
    attempts = []
    for i in range(40):
        raw = sdk.chat.completions.with_raw_response.create(
            model="cascade",
            messages=[{"role": "user", "content": f"Give me item {i} as a JSON object."}],
            response_format={"type": "json_object"},
        )
        json.loads(raw.parse().choices[0].message.content or "")
        attempts.append(raw.headers["x-cascade-attempts"])
    assert all(a.endswith(":ok") for a in attempts)


async def _burst(url: str, count: int) -> list[httpx.Response]:
    body = {"model": "cascade", "messages": [{"role": "user", "content": EASY}], "max_tokens": 64}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(count))
        )


def test_burst_above_self_hosted_capacity_spills_to_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst beyond the small tier's capacity overflows to the frontier API; all succeed."""
    monkeypatch.setenv("CASCADE_SIMULATED_KEY", "sk-simulated")
    for url in _proxy(tmp_path, cap=4, time_scale=0.05):
        responses = asyncio.run(_burst(url, 24))
    assert [r.status_code for r in responses] == [200] * 24
    tiers = [r.headers["x-cascade-tier"] for r in responses]
    assert 1 <= tiers.count("small") <= 24 - tiers.count("frontier")
    assert tiers.count("frontier") >= 1
