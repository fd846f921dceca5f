"""The simulated tier speaks Anthropic's Messages API, prompt caching included, to litellm.

Every call goes through litellm's ``anthropic/...`` provider (what cascade's API tiers use) to a
real uvicorn server of the simulator, whose simulated clock the tests move forward to let cache
entries expire.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cascade.simulator.engine import Clock
from tests.servers import running_tier

MODEL = "anthropic/claude-sonnet-4-5"
TIME_SCALE = 0.02  # a simulated five minutes is six wall seconds: far longer than any test call


def _system(tag: str, repeats: int = 200) -> str:
    """A system prompt of some 1,400 tokens (200 repeats), unique to ``tag``."""
    return f"[{tag}] " + "You are a careful billing assistant for the finance team. " * repeats


def _marked(text: str, ttl: str | None = None) -> list[dict[str, Any]]:
    """Content of one text part carrying a cache breakpoint."""
    mark = {"type": "ephemeral"} | ({"ttl": ttl} if ttl else {})
    return [{"type": "text", "text": text, "cache_control": mark}]


@pytest.fixture(scope="module")
def litellm() -> Any:
    """litellm, loaded once (it is heavy) from its bundled price map."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # noqa: PLC0415 - heavy, and only these tests call it directly

    return litellm


@pytest.fixture(scope="module")
def clock() -> Clock:
    """The simulated clock of the module's tier, moved forward by the expiry test."""
    return Clock(TIME_SCALE)


@pytest.fixture(scope="module")
def url(clock: Clock) -> Iterator[str]:
    """One frontier tier shared by this module's tests (each test uses its own prompts)."""
    with running_tier("frontier", time_scale=TIME_SCALE, clock=clock) as base:
        yield base


def _call(litellm: Any, url: str, messages: list[Any], **extra: Any) -> Any:
    """One ``litellm.acompletion`` to the tier: the response as a dict, or a stream's chunks."""

    async def go() -> Any:
        try:
            response = await litellm.acompletion(
                model=MODEL, api_base=url, api_key="x", messages=messages, max_retries=0, **extra
            )
            if extra.get("stream"):
                return [c.model_dump(exclude_none=True) async for c in response]
            return response.model_dump(exclude_none=True)
        finally:
            await litellm.close_litellm_async_clients()

    return asyncio.run(go())


def _cache(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt tokens, cached = read, written) as litellm reports an Anthropic answer."""
    details = usage.get("prompt_tokens_details") or {}
    return (
        usage["prompt_tokens"],
        details.get("cached_tokens", 0),
        usage.get("cache_creation_input_tokens", 0),
    )


def test_first_call_writes_the_marked_prefix_and_the_second_reads_it(
    litellm: Any, url: str
) -> None:
    """The system prompt marked with cache_control is written by the first call and read by the
    second; the question after the marker is neither."""
    messages = [
        {"role": "system", "content": _marked(_system("write-read"))},
        {"role": "user", "content": "What is 17 + 25?"},
    ]
    first = _call(litellm, url, messages)
    second = _call(litellm, url, messages)
    prompt, read, written = _cache(first["usage"])
    fresh = first["usage"]["prompt_tokens_details"]["text_tokens"]  # Anthropic's input_tokens
    assert read == 0
    assert written > 1024
    assert 0 < fresh < 20
    assert prompt == written + fresh
    assert _cache(second["usage"]) == (prompt, written, 0)
    assert second["usage"]["cache_read_input_tokens"] == written
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_unmarked_prompt_is_not_cached(litellm: Any, url: str) -> None:
    """The same long prompt twice without cache_control: nothing read, nothing written."""
    messages = [
        {"role": "system", "content": _system("unmarked")},
        {"role": "user", "content": "What is 3 + 4?"},
    ]
    usages = [_cache(_call(litellm, url, messages)["usage"]) for _ in range(2)]
    assert usages[0] == usages[1]
    assert usages[0][1:] == (0, 0)


def test_marked_prefix_below_the_minimum_is_not_cached(litellm: Any, url: str) -> None:
    """A marked prefix shorter than claude-sonnet-4-5's 1,024 tokens is neither written nor
    read, and the request still succeeds."""
    messages = [
        {"role": "system", "content": _marked(_system("short", repeats=40))},
        {"role": "user", "content": "Name a prime number."},
    ]
    usages = [_cache(_call(litellm, url, messages)["usage"]) for _ in range(2)]
    assert usages[0][0] < 1024
    assert [u[1:] for u in usages] == [(0, 0), (0, 0)]


def test_five_minute_entry_expires_while_the_one_hour_entry_is_read(
    litellm: Any, url: str, clock: Clock
) -> None:
    """Past five simulated minutes, the 1h-marked system prompt is still read and the 5m-marked
    question is written again; past another hour, everything is written again."""
    system = _system("expiry")
    messages = [
        {"role": "system", "content": _marked(system, "1h")},
        {"role": "user", "content": _marked("Summarise the last invoice. " * 20, "5m")},
    ]
    first = _call(litellm, url, messages)["usage"]
    details = first["prompt_tokens_details"]["cache_creation_token_details"]
    one_hour, five_minutes = (
        details["ephemeral_1h_input_tokens"],
        details["ephemeral_5m_input_tokens"],
    )
    assert one_hour > 1024
    assert five_minutes > 0
    assert _cache(first)[1:] == (0, one_hour + five_minutes)
    assert _cache(_call(litellm, url, messages)["usage"])[1:] == (one_hour + five_minutes, 0)
    clock.advance(301)
    assert _cache(_call(litellm, url, messages)["usage"])[1:] == (one_hour, five_minutes)
    clock.advance(3601)
    assert _cache(_call(litellm, url, messages)["usage"])[1:] == (0, one_hour + five_minutes)


def test_conversation_reads_the_previous_turn_when_its_marker_moves_forward(
    litellm: Any, url: str
) -> None:
    """Turn two marks its new last message; the lookback finds turn one's cached prefix, so only
    the new assistant and user messages are written."""
    system = {"role": "system", "content": _system("lookback")}
    turn1 = [system, {"role": "user", "content": _marked("How much is owed on account 42?")}]
    first = _call(litellm, url, turn1)
    answer = first["choices"][0]["message"]["content"]
    turn2 = [
        system,
        {"role": "user", "content": "How much is owed on account 42?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": _marked("And on account 43?")},
    ]
    prompt, read, written = _cache(_call(litellm, url, turn2)["usage"])
    assert read == _cache(first["usage"])[2] > 1024
    assert written > 0
    assert prompt == read + written  # the marker is on the last block: nothing after it


def test_more_than_four_breakpoints_is_refused(litellm: Any, url: str) -> None:
    """Five cache_control markers get Anthropic's 400, which litellm raises as BadRequestError."""
    parts = [_marked(f"part {i}")[0] for i in range(5)]
    with pytest.raises(litellm.BadRequestError) as caught:
        _call(litellm, url, [{"role": "user", "content": parts}])
    assert "A maximum of 4 blocks with cache_control may be provided. Found 5." in str(caught.value)


def test_streamed_answer_reports_cache_usage(litellm: Any, url: str) -> None:
    """A streamed call's text matches the plain call's, and its usage (from message_start and
    message_delta) reports the cache read."""
    messages = [
        {"role": "system", "content": _marked(_system("stream"))},
        {"role": "user", "content": "Which planet is largest?"},
    ]
    plain = _call(litellm, url, messages)
    chunks = _call(litellm, url, messages, stream=True, stream_options={"include_usage": True})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert [r for r in reasons if r] == ["stop"]
    usage = next(c["usage"] for c in reversed(chunks) if c.get("usage"))
    prompt, _, written = _cache(plain["usage"])
    assert _cache(usage) == (prompt, written, 0)
    assert usage["completion_tokens"] == plain["usage"]["completion_tokens"]


def test_tools_get_a_tool_use_answer(litellm: Any, url: str) -> None:
    """With a tool, the answer is a tool_use block: litellm returns a tool call whose arguments
    follow the schema, streamed or not."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    plain = _call(litellm, url, messages, tools=tools)
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["id"].startswith("toolu_")
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    chunks = _call(litellm, url, messages, tools=tools, stream=True)
    calls = [
        t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls[0]["function"]["name"] == "get_weather"
    streamed = "".join(t["function"].get("arguments") or "" for t in calls)
    assert json.loads(streamed) == json.loads(call["function"]["arguments"])


def test_metrics_count_cache_read_and_creation_tokens(litellm: Any, url: str) -> None:
    """/metrics counts the tokens written and read, as the usage fields report them."""

    def counters() -> tuple[float, float]:
        text = httpx.get(f"{url}/metrics").text
        values = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("simulator_cache_")
        }
        return (
            values["simulator_cache_read_input_tokens_total"],
            values["simulator_cache_creation_input_tokens_total"],
        )

    messages = [
        {"role": "system", "content": _marked(_system("metrics"))},
        {"role": "user", "content": "Is 91 prime?"},
    ]
    before = counters()
    _, _, written = _cache(_call(litellm, url, messages)["usage"])
    _call(litellm, url, messages)
    after = counters()
    assert (after[0] - before[0], after[1] - before[1]) == (written, written)


def test_cascade_api_tier_reads_the_cache_through_litellm(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cascade's own API-tier client, pointed at the simulator as an anthropic/... tier, reports
    the first call's cache write and the second call's cache read in its usage."""
    from cascade.policy.model import Tier  # noqa: PLC0415 - beside the heavy import below
    from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

    monkeypatch.setenv("CASCADE_TEST_ANTHROPIC_KEY", "sk-ant-test")
    tier = Tier.model_validate(
        {
            "name": "claude",
            "model": MODEL,
            "kind": "api",
            "endpoint": url,
            "api_key_env": "CASCADE_TEST_ANTHROPIC_KEY",
        }
    )
    payload = {
        "messages": [
            {"role": "system", "content": _marked(_system("cascade-client"))},
            {"role": "user", "content": "What is 6 times 7?"},
        ],
        "max_tokens": 300,
    }

    async def twice() -> list[Any]:
        client = LiteLLMClient()
        try:
            return [(await client.complete(tier, payload)).usage for _ in range(2)]
        finally:
            await client.aclose()

    first, second = asyncio.run(twice())
    assert second.prompt_tokens == first.prompt_tokens > 1024
    assert (first.cached_tokens, first.cache_write_tokens) == (0, second.cached_tokens)
    assert (second.cached_tokens, second.cache_write_tokens) == (first.cache_write_tokens, 0)
    assert 1024 < second.cached_tokens < second.prompt_tokens
    assert second.completion_tokens == first.completion_tokens > 0
