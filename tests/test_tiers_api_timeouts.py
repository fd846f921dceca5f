"""Every timeout the policy names holds for API tiers too, whatever litellm's SDK does inside.

The SDK's own ``timeout`` bounds each socket read, so a provider that keeps sending a little at a
time (a slow upload or download of a huge prompt or answer, a stream that never ends) kept a call
open for minutes past the policy's ``total_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from cascade.errors import TierError
from cascade.policy.loading import load_policy
from cascade.tiers.api import LiteLLMClient
from tests.raw_servers import Peer, Server

POLICY = """\
name: apitimeouts
tiers:
  - name: frontier
    model: openai/gpt-4o
    kind: api
    endpoint: http://127.0.0.1:{port}/v1
    api_key_env: CASCADE_TEST_FRONTIER_KEY
    timeouts: {{total_s: 1.0, first_byte_s: 1.0, stream_idle_s: 1.0}}
"""

_CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}


async def _trickle(peer: Peer, request: bytes) -> bool:
    """Answer a byte or an event every 0.2 s for 30 s: never silent, never done in time."""
    if b'"stream":true' in request.replace(b" ", b""):
        peer.answer(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for _ in range(150):
            choice = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
            event = json.dumps({**_CHUNK, "choices": [choice]})
            peer.answer(f"data: {event}\n\n".encode())
            await peer.writer.drain()
            await asyncio.sleep(0.2)
        return False
    body = b" " * 150 + b'{"choices": []}'
    peer.answer(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
    for byte in body[:150]:
        peer.answer(bytes([byte]))
        await peer.writer.drain()
        await asyncio.sleep(0.2)
    return False


@pytest.mark.parametrize("stream", [False, True])
def test_an_api_tier_that_trickles_times_out_at_the_policys_total_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """A provider that keeps answering a little at a time fails the call as a timeout at the
    policy's total_s (1 s here), not 30 s later when it is done."""
    monkeypatch.setenv("CASCADE_TEST_FRONTIER_KEY", "sk-test")

    async def go() -> tuple[TierError, float]:
        async with Server(_trickle) as server:
            path = tmp_path / "p.yaml"
            path.write_text(POLICY.format(port=server.port))
            frontier = load_policy(path).tier("frontier")
            payload = {"messages": [{"role": "user", "content": "hi"}]}
            client = LiteLLMClient()

            async def call() -> None:
                if stream:
                    async for _ in client.stream(frontier, payload):
                        pass
                else:
                    await client.complete(frontier, payload)

            started = time.perf_counter()
            try:
                with pytest.raises(TierError) as caught:
                    await call()
                return caught.value, time.perf_counter() - started
            finally:
                await client.aclose()

    error, took = asyncio.run(go())
    assert error.kind == "timeout"
    assert took < 6  # about 1 s, with room for a busy machine; the answer would take 30 s
