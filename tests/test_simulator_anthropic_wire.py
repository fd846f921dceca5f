"""``POST /v1/messages`` answers, streams and refuses in Anthropic's wire format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cascade.simulator.profiles import Overload
from tests.servers import running_tier

MODEL = "claude-sonnet-4-5"
QUESTION = "What is 17 + 25?"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client on one fast frontier tier shared by this module's tests."""
    with running_tier("frontier", time_scale=0.01) as url, httpx.Client(base_url=url) as http:
        yield http


def _body(content: Any = QUESTION, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; the data's type must match the name."""
    events = []
    for chunk in text.strip().split("\n\n"):
        name_line, data_line = chunk.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


def test_message_has_anthropics_shape(client: httpx.Client) -> None:
    """A non-streamed answer is a message with one text block, end_turn and the four usage
    counts, plus the simulator's correctness and timing headers."""
    response = client.post("/v1/messages", json=_body())
    assert response.status_code == 200
    message = response.json()
    assert message["id"].startswith("msg_")
    assert (message["type"], message["role"], message["model"]) == ("message", "assistant", MODEL)
    (block,) = message["content"]
    assert block["type"] == "text"
    assert block["text"]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    usage = message["usage"]
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 5
    assert (usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]) == (0, 0)
    assert response.headers["x-simulated-correct"] in ("true", "false")
    assert float(response.headers["x-simulated-latency-ms"]) > 0


def test_stream_sends_anthropics_events_in_order(client: httpx.Client) -> None:
    """A streamed answer is message_start (with the usage so far), content_block_start, ping,
    text deltas that add up to the plain answer, content_block_stop, message_delta (stop
    reason, output tokens) and message_stop."""
    plain = client.post("/v1/messages", json=_body()).json()
    response = client.post("/v1/messages", json=_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"]) == ([], None)
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == plain["content"][0]["text"]
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == plain["usage"]["output_tokens"]


def test_stop_sequence_and_max_tokens_end_the_answer(client: httpx.Client) -> None:
    """A stop sequence found in the answer cuts it there (stop_reason stop_sequence, naming
    it); max_tokens cuts it at that many tokens (stop_reason max_tokens)."""
    whole = client.post("/v1/messages", json=_body()).json()["content"][0]["text"]
    word = whole.split()[3]
    stopped = client.post("/v1/messages", json=_body(stop_sequences=["@@", word])).json()
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", word)
    assert stopped["content"][0]["text"] == whole[: whole.index(word)]
    short = client.post("/v1/messages", json=_body(max_tokens=3)).json()
    assert (short["stop_reason"], short["usage"]["output_tokens"]) == ("max_tokens", 3)


def test_tool_use_answer_and_a_tool_result_turn(client: httpx.Client) -> None:
    """With tools the answer is a tool_use block (stop_reason tool_use) whose input follows the
    schema; a following turn carrying the tool_result is accepted; tool_choice none answers in
    text."""
    tools = [
        {
            "name": "lookup_invoice",
            "description": "Find an invoice.",
            "input_schema": {
                "type": "object",
                "properties": {"invoice_id": {"type": "integer"}},
                "required": ["invoice_id"],
            },
        }
    ]
    asked = client.post("/v1/messages", json=_body("Find invoice 7.", tools=tools)).json()
    assert asked["stop_reason"] == "tool_use"
    (call,) = asked["content"]
    assert (call["type"], call["name"]) == ("tool_use", "lookup_invoice")
    assert isinstance(call["input"]["invoice_id"], int)
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "Invoice 7: $40."}
    turn = {
        "model": MODEL,
        "max_tokens": 512,
        "tools": tools,
        "tool_choice": {"type": "none"},
        "messages": [
            {"role": "user", "content": "Find invoice 7."},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ],
    }
    answered = client.post("/v1/messages", json=turn)
    assert answered.status_code == 200
    assert answered.json()["content"][0]["type"] == "text"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(stop="x"), "stop: Extra inputs are not permitted"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field"),
        (
            _body([{"type": "image", "source": {"type": "base64", "data": ""}}]),
            "messages.0.content.0: the simulated tier reads 'text', 'tool_use', 'tool_result'",
        ),
        (
            {"model": MODEL, "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role:",
        ),
        (_body(temperature=1.5), "temperature: Input should be less than or equal to 1"),
        (
            _body(
                [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]
            ),
            "messages.0.content.0.cache_control.ttl: Input should be '5m' or '1h'",
        ),
        (
            _body(
                "hi",
                system=[
                    {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "text",
                        "text": "b",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    },
                ],
            ),
            "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block",
        ),
        (
            _body(
                tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "tool", "name": "g"}
            ),
            "tool_choice.name: 'g' is not among the tools",
        ),
    ],
)
def test_malformed_requests_get_anthropics_400(
    client: httpx.Client, body: dict[str, Any], message: str
) -> None:
    """A request Anthropic would refuse gets a 400 invalid_request_error saying where."""
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_unknown_model_too_large_body_and_nested_path(client: httpx.Client) -> None:
    """An unknown model is a 404 not_found_error naming the served ones; a body over the limit
    a 413 request_too_large; an api_base ending in /v1 (litellm then posts /v1/v1/messages) a
    404 that says to use the server's root."""
    unknown = client.post("/v1/messages", json={**_body(), "model": "claude-nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert "claude-sonnet-4-5" in unknown.json()["error"]["message"]
    huge = client.post("/v1/messages", json=_body("x" * (4 * 1024 * 1024 + 1)))
    assert huge.status_code == 413
    assert huge.json()["error"]["type"] == "request_too_large"
    nested = client.post("/v1/v1/messages", json=_body())
    assert nested.status_code == 404
    assert "without /v1" in nested.json()["error"]["message"]


@pytest.mark.parametrize(
    ("overload", "status", "kind"),
    [("429", 429, "rate_limit_error"), ("503", 529, "overloaded_error")],
)
def test_full_tier_refuses_like_anthropic(overload: Overload, status: int, kind: str) -> None:
    """A request beyond a full batch gets 429 rate_limit_error (or 529 overloaded_error in the
    503 mode) with Retry-After; every profile serves /v1/messages."""
    body = {**_body(), "model": "distill-7b"}
    # Slower than real time, so the first stream surely still runs when the second arrives.
    with (
        running_tier("7b", time_scale=5.0, max_concurrency=1, overload=overload) as url,
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("POST", "/v1/messages", json={**body, "stream": True}) as first,
    ):
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a discarded line iterator closes the connection
        assert next(lines) == "event: message_start"
        refused = http.post("/v1/messages", json=body)
    assert refused.status_code == status
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["type"] == "error"
    error = refused.json()["error"]
    assert error["type"] == kind
    assert "concurrency limit" in error["message"]
