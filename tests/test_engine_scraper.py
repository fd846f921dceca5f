"""The background reads of each engine replica's /metrics, against real HTTP servers: what a
good read records, a slow, refused or wrong page, staleness, and a reload re-targeting reads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from cascade.policy.model import Tier
from cascade.simulator.server import create_app
from cascade.simulator.settings import SimulatorSettings
from cascade.tiers.engine_metrics import EngineKind, parse_engine_metrics
from cascade.tiers.engine_scraper import EngineScraper, metrics_url
from cascade.tiers.engines import EngineLoad, EngineLoads
from tests.engine_pages import EnginePage, vllm_page
from tests.servers import serving, shared_labels, wait_until
from tests.upstreams import ScriptedTier, closed_port

PAGES = Path(__file__).parent / "data" / "engine_metrics"


def _tier(urls: list[str], **engine: object) -> Tier:
    return Tier(
        name="small",
        model="distill-1.5b",
        kind="self_hosted",
        replicas=urls,
        price={"gpu_usd_per_hour": 2.0, "tokens_per_second": 1000},
        engine={"metrics": "vllm", **engine},
    )


class _Clock:
    """The loads' clock, moved by the test (staleness is seconds; no test waits them out)."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def _until(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll until ``done()`` (the background loop did its work), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the background read never happened"
        await asyncio.sleep(0.01)


def _load(loads: EngineLoads, url: str) -> EngineLoad:
    load = loads.replica("small", url)
    assert load is not None
    return load


def test_metrics_url_is_the_replicas_host_and_the_path() -> None:
    """The replica's /v1 is dropped: metrics hang off the host."""
    assert metrics_url("http://10.0.0.7:8000/v1", "/metrics") == "http://10.0.0.7:8000/metrics"
    assert metrics_url("https://gpu-3.internal/v1/", "/stats") == "https://gpu-3.internal/stats"


def test_a_read_records_the_page_served() -> None:
    """A real vLLM-shaped page served over HTTP is read into the replica's load."""
    page = (PAGES / "vllm_v1_dp2.txt").read_text()
    engine = EnginePage(ScriptedTier("a"), page, metrics_path="/engine/metrics")
    with serving(engine.app()) as url:
        tier = _tier([f"{url}/v1"], metrics_path="/engine/metrics")

        async def read() -> EngineLoad:
            loads = EngineLoads()
            loads.watch([tier])
            scraper = EngineScraper(loads)
            await scraper.read(tier, f"{url}/v1")
            await scraper.aclose()
            return _load(loads, f"{url}/v1")

        load = asyncio.run(read())
    assert (load.running, load.waiting, load.reachable, load.error) == (12, 9, True, None)


def test_failed_reads_say_why() -> None:
    """A slow page, a refused connection, an error status and a page that is not the engine's
    are each recorded with the reason, none with numbers."""
    engine = EnginePage(ScriptedTier("a"), vllm_page(), delay_s=0.5)
    with serving(engine.app()) as url:
        slow, refused = f"{url}/v1", f"http://127.0.0.1:{closed_port()}/v1"

        async def errors() -> list[str | None]:
            loads = EngineLoads()
            tier = _tier([slow, refused], scrape_timeout_s=0.05)
            loads.watch([tier])
            scraper = EngineScraper(loads)
            found = []
            for replica in (slow, refused):
                await scraper.read(tier, replica)
                found.append(_load(loads, replica).error)
            engine.delay_s, engine.status = 0.0, 500
            await scraper.read(tier, slow)
            found.append(_load(loads, slow).error)
            engine.status, engine.page = 200, "<html>Bad Gateway</html>"
            await scraper.read(tier, slow)
            found.append(_load(loads, slow).error)
            await scraper.aclose()
            return found

        timeout, connect, status, garbage = asyncio.run(errors())
    assert timeout == "no answer within scrape_timeout_s (0.05 s)"
    assert str(connect).startswith("ConnectError")
    assert status == "HTTP 500"
    assert "vllm:num_requests_running" in str(garbage)


def test_an_engine_that_stops_answering_goes_stale_and_comes_back() -> None:
    """Reads that fail keep the last good load until stale_after_s; then the replica is
    unreachable and, under skip, saturates its tier; one good read brings it back."""
    engine = EnginePage(ScriptedTier("a"), vllm_page(running=3, waiting=1))
    with serving(engine.app()) as url:
        replica = f"{url}/v1"
        tier = _tier([replica], stale_after_s=5, on_unreachable="skip", max_waiting=8)

        async def story() -> list[tuple[bool, str | None]]:
            clock = _Clock()
            loads = EngineLoads(clock)
            loads.watch([tier])
            scraper = EngineScraper(loads)
            seen = []
            await scraper.read(tier, replica)
            engine.status = 503
            clock.now += 3
            await scraper.read(tier, replica)
            seen.append((_load(loads, replica).reachable, loads.saturation(tier)))
            clock.now += 3
            seen.append((_load(loads, replica).reachable, loads.saturation(tier)))
            engine.status = 200
            await scraper.read(tier, replica)
            seen.append((_load(loads, replica).reachable, loads.saturation(tier)))
            await scraper.aclose()
            return seen

        failing, stale, back = asyncio.run(story())
    assert failing == (True, None)
    assert stale == (False, f"its engines report {replica}: its metrics are unreachable")
    assert back == (True, None)


def test_the_background_loop_follows_a_reload() -> None:
    """retarget() starts reading replicas a reload adds and forgets those it removes."""
    first = EnginePage(ScriptedTier("a"), vllm_page(waiting=2))
    second = EnginePage(ScriptedTier("b"), vllm_page(waiting=7))
    with serving(first.app()) as url_a, serving(second.app()) as url_b:
        a, b = f"{url_a}/v1", f"{url_b}/v1"

        async def story() -> tuple[float, float, list[str]]:
            loads = EngineLoads()
            scraper = EngineScraper(loads)
            scraper.retarget([_tier([a], scrape_interval_s=0.02)])
            await _until(lambda: loads.replica("small", a) is not None)
            waiting_a = _load(loads, a).waiting
            scraper.retarget([_tier([b], scrape_interval_s=0.02)])
            await _until(lambda: loads.replica("small", b) is not None)
            waiting_b = _load(loads, b).waiting
            await scraper.aclose()
            return waiting_a, waiting_b, [url for _, url in loads.targets]

        waiting_a, waiting_b, watched = asyncio.run(story())
    assert (waiting_a, waiting_b) == (2, 7)
    assert watched == [b]


def _simulated(names: EngineKind) -> SimulatorSettings:
    # Slower than real time, so the first stream surely still runs when the second arrives.
    return SimulatorSettings(profile="7b", time_scale=5.0, max_concurrency=1, metrics_names=names)


def test_the_simulated_tier_queues_under_either_engines_names() -> None:
    """A simulated tier over its batch limit queues the next request, and the proxy reads that
    from its /metrics whether it exports vLLM's names or SGLang's."""
    body = {
        "model": "distill-7b",
        "stream": True,
        "messages": [{"role": "user", "content": "Describe the water cycle."}],
    }
    seen = {}
    for names in ("vllm", "sglang"):
        app = create_app(_simulated(names), labels=shared_labels())
        with (
            serving(app) as url,
            httpx.Client(base_url=url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as first,
            client.stream("POST", "/v1/chat/completions", json=body) as second,
        ):
            lines = first.iter_lines()  # kept: a discarded line iterator closes the connection
            next(lines)
            assert second.status_code == 200  # accepted, waiting in the engine's queue
            tier = _tier([f"{url}/v1"], metrics=names)

            async def read(tier: Tier = tier, url: str = url) -> EngineLoad:
                loads = EngineLoads()
                loads.watch([tier])
                scraper = EngineScraper(loads)
                await scraper.read(tier, f"{url}/v1")
                await scraper.aclose()
                return _load(loads, f"{url}/v1")

            seen[names] = asyncio.run(read())
    for load in seen.values():
        assert (load.running, load.waiting, load.error) == (1, 1, None)
        assert 0 < load.kv_usage < 1


def test_simulate_tier_exports_sglang_names_when_asked() -> None:
    """`cascade simulate-tier --metrics-names sglang` serves SGLang's gauges, which the proxy
    reads as an SGLang engine's."""
    port = closed_port()  # free now; the server takes it
    command = [sys.executable, "-m", "cascade", "simulate-tier", "--profile", "1.5b"]
    command += ["--port", str(port), "--metrics-names", "sglang", "--log-level", "warning"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page: list[str] = []

        def served() -> bool:
            try:
                page[:] = [httpx.get(f"http://127.0.0.1:{port}/metrics").text]
            except httpx.TransportError:
                return False
            return True

        assert wait_until(served, 60), "the simulated tier never answered"
    finally:
        server.terminate()
        server.wait(30)
    assert "vllm:" not in page[0]
    sample = parse_engine_metrics(page[0], "sglang")
    assert (sample.running, sample.waiting) == (0, 0)
