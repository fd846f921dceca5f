"""The proxy end to end: real tiers on loopback, the real app under uvicorn, the OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
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
from tests.upstreams import ScriptedTier, closed_port

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


def test_refused_connection_spills(tmp_path: Path) -> None:
    """A cheap tier that is down (connection refused) spills to its overflow tier."""
    big = ScriptedTier("big")
    with serving(big.app()) as b:
        dead = f"http://127.0.0.1:{closed_port()}"
        policy = tmp_path / "p.yaml"
        policy.write_text(POLICY.format(small=dead, medium=dead, big=b))
        with serving(create_app(ServerSettings(policies=(str(policy),)))) as url:
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "cascade", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
    assert response.status_code == 200
    assert response.headers["x-cascade-attempts"] == "small:error(connection),big:ok"


BURST_POLICY = POLICY.replace(
    "    max_failures: 2\n", "    max_failures: 2\n    max_concurrency: 4\n"
)


async def _burst(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        body = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}
        return await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(count))
        )


def test_burst_above_capacity_spills_and_all_succeed(tmp_path: Path) -> None:
    """Beyond the cheap tier's max_concurrency, requests go to its overflow tier; none fail."""
    hold = threading.Event()
    small, medium, big = (
        ScriptedTier("small", hold=hold),
        ScriptedTier("medium"),
        ScriptedTier("big"),
    )
    with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "burst.yaml"
        policy.write_text(BURST_POLICY.format(small=s, medium=m, big=b))
        app = create_app(ServerSettings(policies=(str(policy),)))
        with serving(app) as url, ThreadPoolExecutor(1) as pool:
            burst = pool.submit(asyncio.run, _burst(url, 16))
            try:
                # The cheap tier holds its four answers until every other request has spilled.
                spilled = wait_until(lambda: (small.calls, big.calls) == (4, 12))
                assert spilled, f"small got {small.calls}, big {big.calls}"
            finally:
                hold.set()
            responses = burst.result()
    assert [r.status_code for r in responses] == [200] * 16
    tiers = [r.headers["x-cascade-tier"] for r in responses]
    assert sorted(tiers) == ["big"] * 12 + ["small"] * 4
    assert medium.calls == 0


def test_requests_succeed_when_a_tier_dies_mid_run(tmp_path: Path) -> None:
    """When the cheap tier's server stops mid-run, later requests succeed through the fallback."""
    small, big = ScriptedTier("small"), ScriptedTier("big")
    with ExitStack() as stack, serving(big.app()) as b:
        small_server = ExitStack()
        s = small_server.enter_context(serving(small.app()))
        policy = tmp_path / "dies.yaml"
        policy.write_text(POLICY.format(small=s, medium=b, big=b))
        url = stack.enter_context(serving(create_app(ServerSettings(policies=(str(policy),)))))
        before = asyncio.run(_burst(url, 4))
        small_server.close()  # the cheap tier dies; the proxy keeps running
        after = asyncio.run(_burst(url, 8))
    assert [r.headers["x-cascade-tier"] for r in before] == ["small"] * 4
    assert [r.status_code for r in after] == [200] * 8
    assert {r.headers["x-cascade-tier"] for r in after} == {"big"}
    assert small.calls == 4


@pytest.fixture
def passthrough(tmp_path: Path) -> Iterator[Stack]:
    """Like ``stack``, under a policy that streams straight through."""
    yield from _stack(tmp_path, extra="  streaming: passthrough\n")


def test_passthrough_streams_chunks_as_they_come(passthrough: Stack) -> None:
    """With passthrough streaming the SDK receives the tier's own chunks, and usage if asked."""
    stream = passthrough.client().chat.completions.create(
        model="cascade",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "answer from small"
    )
    assert chunks[-1].usage is not None
    assert passthrough.small.requests[0]["stream_options"] == {"include_usage": True}


def test_passthrough_spills_before_the_first_chunk(passthrough: Stack) -> None:
    """A tier that fails before streaming anything is replaced by its overflow tier."""
    passthrough.small.mode = "503"
    response = passthrough.post(
        {"model": "cascade", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["x-cascade-tier"] == "big"
    assert "answer " in response.text
    assert response.text.endswith("data: [DONE]\n\n")


def test_stream_cut_after_the_first_chunk_ends_with_an_error_event(passthrough: Stack) -> None:
    """A stream that breaks mid-answer ends with an explicit error event, never a silent [DONE]."""
    passthrough.small.mode = "cut"
    client = passthrough.client()
    stream = client.chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str | None] = []

    def read_all() -> None:
        received.extend(chunk.choices[0].delta.content for chunk in stream)

    with pytest.raises(openai.APIError, match="the answer was cut"):
        read_all()
    assert received == ["answer "]


API_POLICY = """\
name: apitest
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
    overflow: frontier
  - name: frontier
    model: openai/gpt-4o
    kind: api
    endpoint: {frontier}/v1
    api_key_env: CASCADE_TEST_FRONTIER_KEY
"""


def test_api_tier_through_litellm_with_its_price_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API tier is called through litellm with the key from the environment, and priced from
    litellm's offline price map when the policy gives no price."""
    monkeypatch.setenv("CASCADE_TEST_FRONTIER_KEY", "sk-test-123")
    small, frontier = ScriptedTier("small", mode="503"), ScriptedTier("frontier")
    with serving(small.app()) as s, serving(frontier.app()) as f:
        policy = tmp_path / "api.yaml"
        policy.write_text(API_POLICY.format(small=s, frontier=f))
        with serving(create_app(ServerSettings(policies=(str(policy),)))) as url:
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "cascade", "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
            )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "answer from frontier"
    assert response.headers["x-cascade-attempts"] == "small:error(unavailable),frontier:ok"
    assert frontier.requests[0]["model"] == "gpt-4o"
    # gpt-4o in litellm's bundled map: $2.50/M input, $1.25/M cached input, $10/M output; the
    # tier reported 100 prompt tokens (40 of them cached) and 20 output tokens.
    assert Decimal(response.headers["x-cascade-cost-usd"]) == Decimal("0.0004")
