"""Cache markers per provider: where Anthropic breakpoints go, within the provider's limits, and
OpenAI's cache key; nothing for providers that take neither."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from pydantic import ValidationError

from cascade.core.cache_markers import MAX_BREAKPOINTS, mark, min_prefix_tokens
from cascade.core.prompt import PreparedPrompt, prepare_prompt
from cascade.policy.model import Tier

LONG = " ".join(f"Rule {i}: answer politely and cite the handbook section." for i in range(200))
"""A system prompt of about 2,000 tokens: above every Sonnet's minimum, below Haiku 4.5's."""
DOCUMENT = " ".join(f"Clause {i} of the contract says the tenant pays on time." for i in range(150))


def api_tier(model: str = "anthropic/claude-sonnet-4-5", **cache: Any) -> Tier:
    return Tier.model_validate({"name": "frontier", "model": model, "kind": "api", "cache": cache})


Messages = list[dict[str, Any]]


def payload_for(
    messages: Messages, tools: Messages | None = None
) -> tuple[dict[str, Any], PreparedPrompt]:
    prompt = prepare_prompt(messages, tools)
    payload: dict[str, Any] = {"messages": list(prompt.messages), "max_tokens": 100}
    if prompt.tools:
        payload["tools"] = list(prompt.tools)
    return payload, prompt


def marked(tier: Tier, messages: Messages, tools: Messages | None = None) -> dict[str, Any]:
    payload, prompt = payload_for(messages, tools)
    before = copy.deepcopy(payload)
    out = mark(
        payload, tier, prefix_messages=prompt.prefix_messages, prefix_hash=prompt.prefix_hash
    )
    assert payload == before  # the caller's payload is never changed
    return dict(out)


def controls(payload: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Where cache_control sits: ("messages[i].content[j]" or "tools[i]", the control)."""
    found = []
    for i, tool in enumerate(payload.get("tools") or []):
        if "cache_control" in tool:
            found.append((f"tools[{i}]", tool["cache_control"]))
    for i, message in enumerate(payload["messages"]):
        if isinstance(message["content"], list):
            for j, part in enumerate(message["content"]):
                if "cache_control" in part:
                    found.append((f"messages[{i}].content[{j}]", part["cache_control"]))
    return found


def test_anthropic_breakpoint_closes_the_stable_system_prompt_not_the_volatile_line() -> None:
    """The stable system prompt gets the breakpoint; the per-request line after it (moved into a
    second system message by the prompt step) and the question stay unmarked."""
    out = marked(
        api_tier(),
        [
            {"role": "system", "content": f"{LONG}\nCurrent time: 2026-12-02T17:59:11Z"},
            {"role": "user", "content": "Where is my order?"},
        ],
    )
    assert controls(out) == [("messages[0].content[0]", {"type": "ephemeral"})]
    assert out["messages"][0]["content"][0]["text"] == LONG  # the same text, now a marked part
    assert out["messages"][1] == {"role": "system", "content": "Current time: 2026-12-02T17:59:11Z"}
    assert out["messages"][2] == {"role": "user", "content": "Where is my order?"}


def test_a_prefix_below_the_model_minimum_gets_no_breakpoint() -> None:
    """Anthropic caches nothing shorter than the model's minimum: no marker is wasted on it."""
    short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    payload, prompt = payload_for(short)
    tier = api_tier()
    same = mark(payload, tier, prefix_messages=prompt.prefix_messages, prefix_hash="x")
    assert same is payload
    # ~2,000 tokens clear Sonnet 4.5's 1,024 but not Haiku 4.5's 4,096, unless the policy says.
    long = [{"role": "system", "content": LONG}, {"role": "user", "content": "Hi"}]
    assert controls(marked(api_tier("anthropic/claude-haiku-4-5"), long)) == []
    lowered = api_tier("anthropic/claude-haiku-4-5", min_tokens=1500)
    assert len(controls(marked(lowered, long))) == 1


@pytest.mark.parametrize(
    ("model", "minimum"),
    [
        ("anthropic/claude-sonnet-4-5", 1024),
        ("anthropic/claude-opus-4-1", 1024),
        ("anthropic/claude-3-5-haiku-20241022", 2048),
        ("anthropic/claude-sonnet-4-6", 2048),
        ("anthropic/claude-opus-4-5", 4096),
        ("anthropic/claude-haiku-4-5", 4096),
    ],
)
def test_minimum_prefix_follows_the_model_family(model: str, minimum: int) -> None:
    assert min_prefix_tokens(api_tier(model)) == minimum


def test_tools_alone_are_closed_on_the_last_tool() -> None:
    """Without a system prompt the stable prefix is the tools: the last one is marked."""
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "description": LONG[:4000]}}
        for i in range(2)
    ]
    out = marked(api_tier(), [{"role": "user", "content": "Book a table"}], tools)
    assert controls(out) == [("tools[1]", {"type": "ephemeral"})]


def test_history_breakpoint_only_when_the_policy_asks() -> None:
    """history: true marks the message before the last user turn, so the next turn reads the
    conversation so far from the cache."""
    conversation = [
        {"role": "system", "content": LONG},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
    ]
    assert [c[0] for c in controls(marked(api_tier(), conversation))] == ["messages[0].content[0]"]
    out = marked(api_tier(history=True), conversation)
    assert [c[0] for c in controls(out)] == ["messages[0].content[0]", "messages[2].content[0]"]


def test_documents_are_marked_and_breakpoints_never_exceed_four() -> None:
    """Long document parts before the question get breakpoints, the stable prefix first; a
    fifth candidate is dropped rather than sent to be refused."""
    documents = [{"type": "text", "text": f"Document {i}. {DOCUMENT}"} for i in range(5)]
    question = {"type": "text", "text": "Which clause covers late payment?"}
    messages: Messages = [
        {"role": "system", "content": LONG},
        {"role": "user", "content": [*documents, question]},
    ]
    assert len(controls(marked(api_tier(), messages))) == 1  # documents are opt-in
    out = marked(api_tier(document_min_tokens=500), messages)
    places = [c[0] for c in controls(out)]
    assert len(places) == MAX_BREAKPOINTS
    assert places[0] == "messages[0].content[0]"
    assert "messages[1].content[5]" not in places  # never the question itself


def test_one_hour_ttl_is_sent_on_every_breakpoint() -> None:
    out = marked(
        api_tier(ttl="1h"), [{"role": "system", "content": LONG}, {"role": "user", "content": "q"}]
    )
    assert controls(out) == [("messages[0].content[0]", {"type": "ephemeral", "ttl": "1h"})]


def test_a_request_with_its_own_markers_is_left_as_sent() -> None:
    """The app placed cache_control itself: adding ours could pass the limit of four."""
    own = {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    messages: Messages = [{"role": "system", "content": [own]}, {"role": "user", "content": "q"}]
    payload, prompt = payload_for(messages)
    tier = api_tier()
    assert mark(payload, tier, prefix_messages=prompt.prefix_messages, prefix_hash="h") is payload


def test_openai_gets_a_cache_key_from_the_prefix_hash() -> None:
    """Requests with one stable prefix share one prompt_cache_key; another prefix, another key;
    the caller's own key wins."""
    one = [{"role": "system", "content": "Policy A"}, {"role": "user", "content": "q1"}]
    two = [{"role": "system", "content": "Policy A"}, {"role": "user", "content": "q2"}]
    other = [{"role": "system", "content": "Policy B"}, {"role": "user", "content": "q1"}]
    tier = api_tier("openai/gpt-4o")
    keys = [marked(tier, m)["prompt_cache_key"] for m in (one, two, other)]
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] == f"cascade-{prepare_prompt(one).prefix_hash}"
    payload, prompt = payload_for(one)
    payload["prompt_cache_key"] = "mine"
    kept = mark(payload, tier, prefix_messages=1, prefix_hash=prompt.prefix_hash)
    assert kept["prompt_cache_key"] == "mine"


@pytest.mark.parametrize(
    ("tier", "why"),
    [
        (api_tier("gemini/gemini-2.5-pro"), "a provider that takes neither"),
        (
            api_tier("openai/gpt-4o").model_copy(update={"endpoint": "http://vllm:8000/v1"}),
            "an OpenAI-compatible server elsewhere may refuse the field",
        ),
        (api_tier(markers="off"), "markers: off"),
    ],
)
def test_nothing_is_sent_where_it_is_not_accepted(tier: Tier, why: str) -> None:
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "q"}]
    payload, prompt = payload_for(messages)
    assert mark(payload, tier, prefix_messages=1, prefix_hash=prompt.prefix_hash) is payload, why


def test_explicit_markers_reach_providers_auto_does_not_know() -> None:
    """markers: anthropic for Claude on another route; markers: openai for a server that
    reads prompt_cache_key."""
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "q"}]
    bedrock = api_tier("bedrock/anthropic.claude-sonnet-4-5", markers="anthropic")
    assert len(controls(marked(bedrock, messages))) == 1
    compatible = Tier.model_validate(
        {
            "name": "x",
            "model": "openai/m",
            "kind": "api",
            "endpoint": "http://h/v1",
            "cache": {"markers": "openai"},
        }
    )
    assert "prompt_cache_key" in marked(compatible, messages)


def test_markers_on_a_self_hosted_tier_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"cache\.markers: anthropic is for api tiers"):
        Tier.model_validate(
            {
                "name": "small",
                "model": "m",
                "kind": "self_hosted",
                "endpoint": "http://h/v1",
                "price": {"gpu_usd_per_hour": 2, "tokens_per_second": 1000},
                "cache": {"markers": "anthropic"},
            }
        )


def _junk(draw: random.Random, depth: int = 0) -> Any:
    """Any JSON value, nested a little."""
    pick = draw.random()
    if depth > 3 or pick < 0.3:
        return draw.choice([None, 1, "x" * draw.randint(0, 3000), True, 1.5, [], {}])
    if pick < 0.6:
        return [_junk(draw, depth + 1) for _ in range(draw.randint(0, 4))]
    keys = ("role", "content", "type", "text", "cache_control", "name")
    return {draw.choice(keys): _junk(draw, depth + 1) for _ in range(draw.randint(0, 4))}


def test_malformed_requests_never_make_markers_fail() -> None:
    """Whatever a request holds, adding markers never raises: the provider, not this step, says
    what is wrong with it."""
    draw = random.Random(1)
    tiers = [
        api_tier(model, **cache)
        for model in ("anthropic/claude-sonnet-4-5", "openai/gpt-4o")
        for cache in ({}, {"history": True, "document_min_tokens": 1, "min_tokens": 1})
    ]
    roles = ("system", "user", "assistant", "tool")
    for _ in range(3000):
        messages = [
            {"role": draw.choice(roles), "content": _junk(draw)}
            if draw.random() < 0.8
            else _junk(draw)
            for _ in range(draw.randint(0, 6))
        ]
        payload = {"messages": messages, "tools": _junk(draw)}
        for tier in tiers:
            mark(payload, tier, prefix_messages=draw.randint(0, 7), prefix_hash="h")
