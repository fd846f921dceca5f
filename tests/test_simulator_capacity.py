"""The simulated tier batches, saturates, queues and refuses like a served model."""

from __future__ import annotations

import asyncio
import re

import httpx

from cascade.simulator.profiles import PROFILES, GpuTiming, decode_throughput
from tests.servers import running_tier


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _body(model: str, text: str = "Describe the water cycle.") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def _burst(url: str, model: str, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=_body(model)) for _ in range(count))
        )
    return [r.status_code for r in responses]


def test_throughput_grows_with_concurrency_up_to_the_batch_limit() -> None:
    """Tokens per simulated busy second grow with concurrent requests, capped by max_concurrency."""
    limit = 8
    throughput, batch = {}, {}
    with running_tier("7b", time_scale=1.0, max_concurrency=limit) as url:
        before = {"tokens": 0.0, "busy": 0.0, "steps": 0.0}
        for concurrency in (1, limit, 2 * limit):
            assert asyncio.run(_burst(url, "distill-7b", concurrency)) == [200] * concurrency
            text = httpx.get(f"{url}/metrics").text
            now = {
                "tokens": _metric(text, "vllm:generation_tokens_total"),
                "busy": _metric(text, "simulator_busy_seconds_total"),
                "steps": _metric(text, "simulator_steps_total"),
            }
            delta = {key: now[key] - before[key] for key in now}
            throughput[concurrency] = delta["tokens"] / delta["busy"]
            batch[concurrency] = delta["tokens"] / delta["steps"]
            before = now
    timing = PROFILES["7b"].timing
    assert isinstance(timing, GpuTiming)
    assert batch[1] == 1.0
    assert throughput[limit] > 4 * throughput[1]
    assert batch[2 * limit] <= limit  # the running batch never exceeds the limit
    assert throughput[2 * limit] <= decode_throughput(timing, limit, 0) * 1.001
    assert throughput[2 * limit] > 4 * throughput[1]


def test_over_capacity_with_429_refuses_with_retry_after() -> None:
    """With --overload 429, a request beyond a full batch gets 429, Retry-After, OpenAI's body."""
    # Slower than real time, so the first stream surely still runs when the second arrives.
    body = {**_body("distill-7b"), "stream": True}
    with (
        running_tier("7b", time_scale=5.0, max_concurrency=1, overload="429") as url,
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a discarded line iterator closes the connection
        next(lines)
        refused = client.post("/v1/chat/completions", json=_body("distill-7b"))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_over_capacity_with_503_refuses_with_503() -> None:
    """With --overload 503, a request beyond a full batch gets 503 with Retry-After."""
    body = {**_body("distill-7b"), "stream": True}
    with (
        running_tier("7b", time_scale=5.0, max_concurrency=1, overload="503") as url,
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        lines = first.iter_lines()  # kept: a discarded line iterator closes the connection
        next(lines)
        refused = client.post("/v1/chat/completions", json=_body("distill-7b"))
    assert refused.status_code == 503
    assert "retry-after" in refused.headers


def test_queue_mode_serves_every_request_eventually() -> None:
    """In queue mode, requests beyond the batch limit wait their turn and all succeed."""
    with running_tier("1.5b", time_scale=0.01, max_concurrency=2) as url:
        assert asyncio.run(_burst(url, "distill-1.5b", 12)) == [200] * 12
        text = httpx.get(f"{url}/metrics").text
    assert _metric(text, "vllm:num_requests_waiting") == 0
    assert _metric(text, "vllm:request_success_total") == 12


def test_metrics_show_running_and_waiting_requests() -> None:
    """/metrics reports the running batch and the queue under vLLM's gauge names."""
    body = {**_body("distill-7b"), "stream": True}
    with (
        running_tier("7b", time_scale=5.0, max_concurrency=1) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as first,
        client.stream("POST", "/v1/chat/completions", json=body) as second,
    ):
        lines = first.iter_lines()  # kept: a discarded line iterator closes the connection
        next(lines)
        assert second.status_code == 200  # accepted, waiting for a slot
        text = client.get("/metrics").text
    assert _metric(text, "vllm:num_requests_running") == 1, text
    assert _metric(text, "vllm:num_requests_waiting") == 1, text
    assert 0 < _metric(text, "vllm:kv_cache_usage_perc") < 1
