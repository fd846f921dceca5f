"""The proxy end to end, continued: dead and saturated tiers spill, passthrough streams, and an
API tier through litellm; real tiers on loopback and the real app under uvicorn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until
from tests.test_proxy import POLICY, Stack, _stack
from tests.upstreams import ScriptedTier, closed_port


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
