"""Faults the proxy must ride out: a tier that dies under load and comes back, and a storm of
requests that are the client's own mistake."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier, closed_port

POLICY = """\
name: faults
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
    overflow: big
    max_failures: 2
    cooldown_s: {cooldown}
  - name: big
    model: frontier-x
    kind: self_hosted
    endpoint: {big}/v1
    price: {{input_usd_per_mtok: 2, output_usd_per_mtok: 10}}
"""
BODY = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}


def _load(url: str, stop: threading.Event, answers: Counter[tuple[int, str]]) -> None:
    """Send requests one after another until ``stop``; count (status, tier) of each answer."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            reply = client.post("/v1/chat/completions", json=BODY)
            answers[reply.status_code, reply.headers.get("x-cascade-tier", "")] += 1


def test_a_tier_killed_under_load_spills_then_gets_its_traffic_back(tmp_path: Path) -> None:
    """While the cheap tier's server is down, requests under load spill to its overflow and
    every one is answered; once it is back on the same port, its cool-down over, it gets
    traffic again."""
    small, big = ScriptedTier("small"), ScriptedTier("big")
    port = closed_port()
    answers: Counter[tuple[int, str]] = Counter()
    stop = threading.Event()
    with ExitStack() as stack, serving(big.app()) as b:
        down = ExitStack()
        s = down.enter_context(serving(small.app(), port=port))
        policy = tmp_path / "faults.yaml"
        policy.write_text(POLICY.format(small=s, big=b, cooldown=0.3))
        url = stack.enter_context(serving(create_app(ServerSettings(policies=(str(policy),)))))
        pool = stack.enter_context(ThreadPoolExecutor(4))
        loads = [pool.submit(_load, url, stop, answers) for _ in range(4)]
        try:
            assert wait_until(lambda: small.calls >= 20)
            down.close()  # the cheap tier dies under load
            spilled = big.calls
            assert wait_until(lambda: big.calls >= spilled + 20), "no spill to the overflow"
            stack.enter_context(serving(small.app(), port=port))  # back on the same port
            calls = small.calls
            assert wait_until(lambda: small.calls >= calls + 20), "no traffic back to small"
        finally:
            stop.set()
            for load in loads:
                load.result()
    assert {status for status, _ in answers} == {200}, answers
    assert answers[200, "big"] >= 20
    assert answers[200, "small"] >= 40


async def _storm(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(client.post("/v1/chat/completions", json=BODY) for _ in range(count))
        )


def test_a_storm_of_client_errors_leaves_the_tier_in_service(tmp_path: Path) -> None:
    """Twenty requests at once that the cheap tier refuses as the client's mistake (400) are
    all answered 400 with its message; none spills, the tier is not cooled down (max_failures
    is 2), and the next good request goes to it."""
    small, big = ScriptedTier("small", mode="400"), ScriptedTier("big")
    with serving(small.app()) as s, serving(big.app()) as b:
        policy = tmp_path / "faults.yaml"
        policy.write_text(POLICY.format(small=s, big=b, cooldown=60))
        with serving(create_app(ServerSettings(policies=(str(policy),)))) as url:
            storm = asyncio.run(_storm(url, 20))
            small.mode = "ok"
            after = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30)
    assert [r.status_code for r in storm] == [400] * 20
    assert all("temperature" in r.json()["error"]["message"] for r in storm)
    assert after.status_code == 200
    assert after.headers["x-cascade-tier"] == "small"
    assert (small.calls, big.calls) == (21, 0)
