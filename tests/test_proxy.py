"""The proxy end to end: real tiers on loopback, the real app under uvicorn, the OpenAI SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import structlog.testing
from openai.types.chat import ChatCompletionFunctionToolParam

from cascade.core.request import ChatRequest
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier

POLICY = """\
name: proxytest
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
    overflow: big
    max_failures: 2
    cooldown_s: 60
  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: {medium}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
  - name: big
    model: frontier-x
    kind: self_hosted
    endpoint: {big}/v1
    price: {{input_usd_per_mtok: 2, cached_input_usd_per_mtok: 1, output_usd_per_mtok: 10}}
escalation:
  checks: [length, empty, invalid_json, invalid_tool_call]
"""


@dataclass
class Stack:
    """Three scripted tiers behind a running proxy."""

    url: str
    small: ScriptedTier
    medium: ScriptedTier
    big: ScriptedTier
    policy_file: Path

    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self) -> openai.OpenAI:
        """The official OpenAI SDK pointed at the proxy (closed with the stack)."""
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)
        self.clients.append(client)
        return client

    def post(self, body: object) -> httpx.Response:
        """A raw POST to the chat endpoint (declared JSON, whatever the bytes are)."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        return httpx.post(
            f"{self.url}/v1/chat/completions", content=content, headers=headers, timeout=30
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Scripted small/medium/big tiers and a proxy routing between them (small goes first)."""
    yield from _stack(tmp_path, extra="")


def _stack(tmp_path: Path, *, extra: str) -> Iterator[Stack]:
    small, medium, big = ScriptedTier("small"), ScriptedTier("medium"), ScriptedTier("big")
    with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b) + extra)
        settings = ServerSettings(policies=(str(policy),), reload_interval_s=0.05)
        with serving(create_app(settings)) as url:
            stack = Stack(url, small, medium, big, policy)
            yield stack
            for client in stack.clients:
                client.close()


def _ask(stack: Stack, **extra: object) -> httpx.Response:
    body = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}], **extra}
    return stack.post(body)


def test_openai_sdk_plain_completion_with_headers(stack: Stack) -> None:
    """The SDK gets a normal completion; headers name the tier, model, cost and request id."""
    raw = stack.client().chat.completions.with_raw_response.create(
        model="cascade", messages=[{"role": "user", "content": "What is 2+2?"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "answer from small"
    assert raw.headers["x-cascade-tier"] == "small"
    assert raw.headers["x-cascade-model"] == "distill-1.5b"
    assert 0 <= float(raw.headers["x-cascade-confidence"]) <= 1
    assert raw.headers["x-cascade-request-id"].startswith("req_")
    # 60 uncached prompt tokens at 10,000 tok/s prefill + 20 output tokens at 1,000 tok/s on a
    # $3.60/hour GPU (= $0.001/s): 0.006 s + 0.02 s of GPU time.
    assert raw.headers["x-cascade-cost-usd"] == "0.0000260000"
    assert stack.small.requests[0]["model"] == "distill-1.5b"


def test_openai_sdk_streaming_with_usage(stack: Stack) -> None:
    """A streamed request yields the answer in chunks and the usage in the last one."""
    stream = stack.client().chat.completions.create(
        model="cascade",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "answer from small"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20


def test_length_cut_answer_is_escalated(stack: Stack) -> None:
    """An answer cut at max_tokens goes up a tier; the client gets the stronger tier's answer."""
    stack.small.mode = "length"
    response = _ask(stack)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "answer from medium"
    assert response.headers["x-cascade-attempts"] == "small:rejected(length),medium:ok"
    # Both calls are paid for: the rejected one counts in the request's cost.
    assert response.headers["x-cascade-cost-usd"] == "0.0000520000"


def test_invalid_json_is_escalated_in_json_mode(stack: Stack) -> None:
    """With response_format json_object, an answer that is not JSON is escalated."""
    stack.small.mode = "bad_json"
    stack.medium.mode = "json"
    response = _ask(stack, response_format={"type": "json_object"})
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"answer": "medium"}
    assert response.headers["x-cascade-attempts"] == "small:rejected(invalid_json),medium:ok"


def test_malformed_tool_call_is_escalated(stack: Stack) -> None:
    """A tool call whose arguments are not JSON is escalated; the SDK parses the good one."""
    stack.small.mode = "bad_tool_call"
    stack.medium.mode = "tool_call"
    tools: list[ChatCompletionFunctionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = stack.client().chat.completions.create(
        model="cascade",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
    )
    calls = completion.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert stack.small.requests[0]["tools"][0]["function"]["name"] == "get_weather"


def test_overloaded_tier_spills_to_its_overflow(stack: Stack) -> None:
    """A 503 from the cheap tier sends the request to its overflow tier, which answers."""
    stack.small.mode = "503"
    response = _ask(stack)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "answer from big"
    assert response.headers["x-cascade-attempts"] == "small:error(unavailable),big:ok"


def test_failing_tier_is_skipped_during_its_cooldown(stack: Stack) -> None:
    """After max_failures failed calls, the tier is not called again until its cool-down ends."""
    stack.small.mode = "429"
    for _ in range(2):
        assert _ask(stack).status_code == 200
    assert stack.small.calls == 2
    response = _ask(stack)
    assert response.status_code == 200
    assert stack.small.calls == 2  # skipped
    assert response.headers["x-cascade-attempts"] == "big:ok"


def test_when_every_tier_fails_the_client_gets_a_clear_503(stack: Stack) -> None:
    """With all tiers overloaded, the answer is 503 in OpenAI's format, naming what was tried."""
    for tier in (stack.small, stack.medium, stack.big):
        tier.mode = "503"
    response = _ask(stack)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "api_error"
    assert "small (unavailable)" in error["message"]
    assert "big (unavailable)" in error["message"]


def test_a_model_name_pins_its_tier(stack: Stack) -> None:
    """Asking for a tier's own model skips routing and goes to that tier."""
    response = stack.post({"model": "frontier-x", "messages": [{"role": "user", "content": "hi"}]})
    assert response.headers["x-cascade-tier"] == "big"
    assert stack.small.calls == 0


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        ({"model": "cascade"}, 400, "messages: Field required"),
        ({"model": "cascade", "messages": "hi"}, 400, "messages: Input should be a valid list"),
        ({"model": "cascade", "messages": [{"role": "system", "content": "x"}]}, 400, "user"),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "unknown model"),
        ({"model": "cascade/other", "messages": [{"role": "user", "content": "x"}]}, 404, "policy"),
        (
            {"model": "cascade", "messages": [{"role": "user", "content": "x" * 5_000_000}]},
            413,
            "limit",
        ),
    ],
)
def test_client_mistakes_get_openai_errors(
    stack: Stack, body: object, status: int, fragment: str
) -> None:
    """Bad requests get a 4xx in OpenAI's error format saying what to fix, and no tier is called."""
    response = stack.post(body)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"]
    assert "Traceback" not in response.text
    assert stack.small.calls == 0


def test_wrong_method_on_the_chat_endpoint_is_a_405_saying_what_is_allowed(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "takes POST, not GET" in response.json()["error"]["message"]


def test_a_bug_in_the_proxy_is_a_500_in_openai_shape_with_the_request_id(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while handling a request never reaches the client as a
    traceback: it gets OpenAI's error body and the id to find the logged trace by."""

    def broken(request: object, messages: object, tools: object) -> dict[str, object]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(ChatRequest, "payload", broken)
    response = _ask(stack)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert response.headers["x-cascade-request-id"] in error["message"]
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    monkeypatch.undo()
    assert _ask(stack).status_code == 200  # the proxy keeps serving


def test_models_lists_routable_names(stack: Stack) -> None:
    """/v1/models lists 'cascade', the policy's name and each tier's model."""
    ids = [m.id for m in stack.client().models.list()]
    assert ids[:2] == ["cascade", "cascade/proxytest"]
    assert {"distill-1.5b", "distill-7b", "frontier-x"} <= set(ids)


def test_health_readiness_and_metrics(stack: Stack) -> None:
    """/healthz and /readyz answer 200, and /metrics counts requests by tier."""
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    assert httpx.get(f"{stack.url}/readyz").json()["policies"] == ["proxytest"]
    _ask(stack)
    text = httpx.get(f"{stack.url}/metrics").text
    assert 'cascade_requests_total{outcome="ok",policy="proxytest",tier="small"} 1.0' in text
    assert 'cascade_attempts_total{outcome="ok",role="primary",tier="small"} 1.0' in text
    assert 'cascade_cost_usd_total{policy="proxytest",tier="small"} ' in text
    assert 'cascade_decision_seconds_bucket{le="+Inf"} 1.0' in text
    assert "cascade_decision_seconds_count 1.0" in text
    assert 'cascade_in_flight{tier="small"} 0' in text


def test_policy_reload_applies_valid_changes_and_refuses_invalid_ones(stack: Stack) -> None:
    """An edited policy applies without a restart; an invalid edit is refused and the old stays."""
    original = stack.policy_file.read_text()
    stack.policy_file.write_text(
        original.replace("    overflow: big\n", "    overflow: big\n    threshold: 1.0\n")
    )
    assert wait_until(lambda: _ask(stack).headers["x-cascade-tier"] == "medium")
    with structlog.testing.capture_logs() as logs:
        stack.policy_file.write_text(original.replace("kind: self_hosted", "kind: selfhosted", 1))
        assert wait_until(lambda: any(e["event"] == "policy.reload_refused" for e in logs))
    [refused] = [e for e in logs if e["event"] == "policy.reload_refused"]
    assert refused["policy"] == "proxytest"
    assert "selfhosted" in refused["error"]
    assert not [e for e in logs if e["event"] == "policy.reloaded"]
    assert _ask(stack).headers["x-cascade-tier"] == "medium"
