"""Spills that follow the engines' own load, end to end: the real app under uvicorn reads two
engine replicas' /metrics (scripted pages) and sends requests to the overflow tier while the
engines say they are full, though this proxy has no call of its own in flight; /readyz and
/metrics show each replica's state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.engine_pages import EnginePage, vllm_page
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier

POLICY = """\
name: engines
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    replicas: [{a}/v1, {b}/v1]
    price: {{gpu_usd_per_hour: 2.0, tokens_per_second: 1000}}
    overflow: big
    engine:
      metrics: vllm
      scrape_interval_s: 0.02
      scrape_timeout_s: 0.5
      stale_after_s: {stale}
      max_waiting: 4
      max_kv_usage: 0.95
      on_unreachable: {on_unreachable}
  - name: big
    model: big-model
    kind: self_hosted
    endpoint: {big}/v1
    price: {{gpu_usd_per_hour: 8.0, tokens_per_second: 1000}}
"""
QUESTION = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@dataclass
class _Setup:
    proxy: str
    engines: list[EnginePage]
    urls: list[str]
    big: ScriptedTier

    def ask(self) -> httpx.Response:
        response = httpx.post(f"{self.proxy}/v1/chat/completions", json=QUESTION, timeout=30)
        assert response.status_code == 200, response.text
        return response

    def states(self) -> dict[str, str]:
        """Each replica's state as /readyz reports it."""
        engines = httpx.get(f"{self.proxy}/readyz").json().get("engines", {})
        return {url: entry["state"] for url, entry in engines.get("small", {}).items()}

    def wait_for(self, *states: str) -> None:
        wanted = dict(zip(self.urls, states, strict=True))
        assert wait_until(lambda: self.states() == wanted), self.states()


@contextmanager
def _setup(tmp_path: Path, *, stale: float = 5.0, on_unreachable: str = "skip") -> Iterator[_Setup]:
    engines = [EnginePage(ScriptedTier(name), vllm_page()) for name in ("a", "b")]
    big = ScriptedTier("big")
    with ExitStack() as stack:
        a, b = (stack.enter_context(serving(engine.app())) for engine in engines)
        big_url = stack.enter_context(serving(big.app()))
        policy = tmp_path / "engines.yaml"
        policy.write_text(
            POLICY.format(a=a, b=b, big=big_url, stale=stale, on_unreachable=on_unreachable)
        )
        proxy = stack.enter_context(serving(create_app(ServerSettings(policies=(str(policy),)))))
        yield _Setup(proxy, engines, [f"{a}/v1", f"{b}/v1"], big)


def test_spills_follow_the_engines_queue_and_come_back(tmp_path: Path) -> None:
    """When both engines report max_waiting queued, requests go to the overflow tier with no
    call of this proxy's in flight; once one engine's queue drains, they come back."""
    with _setup(tmp_path) as setup:
        setup.wait_for("ok", "ok")
        assert setup.ask().headers["x-cascade-tier"] == "small"

        setup.engines[0].page = vllm_page(running=64, waiting=4)
        setup.wait_for("saturated", "ok")
        assert setup.ask().headers["x-cascade-tier"] == "small"  # one replica has room

        setup.engines[1].page = vllm_page(running=64, kv_usage=0.97)  # full by its KV cache
        setup.wait_for("saturated", "saturated")
        calls = sum(engine.tier.calls for engine in setup.engines)
        spilled = setup.ask()
        assert spilled.headers["x-cascade-tier"] == "big"
        assert spilled.headers["x-cascade-attempts"] == "big:ok"  # the engines were not tried
        assert sum(engine.tier.calls for engine in setup.engines) == calls
        metrics = httpx.get(f"{setup.proxy}/metrics").text
        assert 'cascade_in_flight{tier="small"} 0\n' in metrics  # not this proxy's calls
        a, b = setup.urls
        assert f'cascade_engine_requests_waiting{{tier="small",replica="{a}"}} 4.0' in metrics
        assert f'cascade_engine_kv_cache_usage{{tier="small",replica="{b}"}} 0.97' in metrics
        assert f'cascade_engine_saturated{{tier="small",replica="{a}"}} 1.0' in metrics

        setup.engines[1].page = vllm_page(running=10, waiting=0)
        setup.wait_for("saturated", "ok")
        back = setup.ask()
        assert back.headers["x-cascade-tier"] == "small"
        assert back.headers["x-cascade-attempts"] == "small:ok"


def test_unreachable_engines_are_skipped_and_named(tmp_path: Path) -> None:
    """on_unreachable: skip. Engines whose metrics stop answering are skipped once stale: the
    request spills, /readyz stays 200 but degraded and names them, /metrics shows them down."""
    with _setup(tmp_path, stale=0.3) as setup:
        setup.wait_for("ok", "ok")
        for engine in setup.engines:
            engine.status = 503
        setup.wait_for("unreachable", "unreachable")
        assert setup.ask().headers["x-cascade-tier"] == "big"
        ready = httpx.get(f"{setup.proxy}/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        entry = ready.json()["engines"]["small"][setup.urls[0]]
        assert entry["error"] == "HTTP 503"
        assert entry["on_unreachable"] == "skip"
        metrics = httpx.get(f"{setup.proxy}/metrics").text
        assert (
            f'cascade_engine_metrics_reachable{{tier="small",replica="{setup.urls[1]}"}} 0.0'
            in (metrics)
        )
        setup.engines[0].status = 200
        setup.wait_for("ok", "unreachable")
        assert setup.ask().headers["x-cascade-tier"] == "small"
        assert httpx.get(f"{setup.proxy}/readyz").json()["status"] == "degraded"


def test_unreachable_engines_under_own_count_still_take_requests(tmp_path: Path) -> None:
    """on_unreachable: own_count. Engines whose metrics are down are judged by this proxy's own
    calls in flight alone, so requests still go to them."""
    with _setup(tmp_path, stale=0.3, on_unreachable="own_count") as setup:
        setup.wait_for("ok", "ok")
        for engine in setup.engines:
            engine.status = 404
        setup.wait_for("unreachable", "unreachable")
        assert setup.ask().headers["x-cascade-tier"] == "small"


def test_a_policy_reload_starts_reading_the_engines(tmp_path: Path) -> None:
    """A tier first served without engine metrics starts spilling on its engines' word once a
    reloaded policy turns them on, and /readyz lists the replicas the new policy names."""
    engines = [EnginePage(ScriptedTier(name), vllm_page(waiting=9)) for name in ("a", "b")]
    big = ScriptedTier("big")
    with ExitStack() as stack:
        a, b = (stack.enter_context(serving(engine.app())) for engine in engines)
        big_url = stack.enter_context(serving(big.app()))
        policy = tmp_path / "engines.yaml"
        text = POLICY.format(a=a, b=b, big=big_url, stale=5.0, on_unreachable="skip")
        policy.write_text(text.replace("metrics: vllm", "metrics: off"))
        settings = ServerSettings(policies=(str(policy),), reload_interval_s=0.05)
        proxy = stack.enter_context(serving(create_app(settings)))
        setup = _Setup(proxy, engines, [f"{a}/v1", f"{b}/v1"], big)
        assert setup.states() == {}
        assert setup.ask().headers["x-cascade-tier"] == "small"  # its own count: room
        policy.write_text(text)
        setup.wait_for("saturated", "saturated")
        assert setup.ask().headers["x-cascade-tier"] == "big"
