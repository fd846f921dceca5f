"""Reads every engine replica's ``/metrics`` in the background, into :class:`EngineLoads`.

One loop per watched replica (a self-hosted tier whose ``engine.metrics`` is ``vllm`` or
``sglang``): a GET of ``scheme://host:port`` + ``engine.metrics_path`` (the replica URL's
``/v1`` dropped) every ``scrape_interval_s``, the whole read bounded by ``scrape_timeout_s``. A
good read is recorded; a failed one (refused, timed out, not 200, not the engine's metrics) is
recorded as such and the last good read stands until it is ``stale_after_s`` old. Whether a
replica is reachable or saturated is decided where it is read (:mod:`cascade.tiers.engines`).

The reads are plain GETs through one ``httpx.AsyncClient``: a few a second per replica, where
httpx's pool contention at high concurrency (STACK-NOTES.md) does not arise; the chat calls keep
their own connection pool. A reload of the policy re-targets the loops (:meth:`retarget`):
replicas added start being read, replicas removed stop, changed settings apply on the next read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx
import structlog

from cascade.policy.model import Tier
from cascade.tiers.engine_metrics import EngineMetricsError, parse_engine_metrics
from cascade.tiers.engines import EngineLoads

log = structlog.get_logger("cascade.engines")


def metrics_url(replica: str, path: str) -> str:
    """Where ``replica`` (``http://host:port/v1``) serves its metrics: its host and ``path``."""
    parts = urlsplit(replica)
    return f"{parts.scheme}://{parts.netloc}{path}"


class _Watch:
    """One replica's read loop; ``tier`` is replaced in place when a reload changes it."""

    def __init__(self, tier: Tier, url: str) -> None:
        self.tier = tier
        self.url = url
        self.stop = asyncio.Event()
        self.failing = False
        self.task: asyncio.Task[None] | None = None


class EngineScraper:
    """Keeps ``loads`` current for the watched tiers' replicas until :meth:`aclose`.

    ``client``: the HTTP client for the reads (default: one of its own, closed with it).
    """

    def __init__(self, loads: EngineLoads, client: httpx.AsyncClient | None = None) -> None:
        self.loads = loads
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def retarget(self, tiers: Iterable[Tier]) -> None:
        """Read the replicas of ``tiers`` (those with engine metrics on) from now on."""
        self.loads.watch(tiers)
        targets = self.loads.targets
        for key in [k for k in self._watches if k not in targets]:
            self._stop(self._watches.pop(key))
        for key, tier in targets.items():
            watch = self._watches.get(key)
            if watch is None:
                watch = self._watches[key] = _Watch(tier, key[1])
                watch.task = asyncio.create_task(self._loop(watch))
            watch.tier = tier

    async def read(self, tier: Tier, url: str) -> None:
        """Read ``url``'s metrics once and record the outcome."""
        engine = tier.engine
        if engine.metrics == "off":
            return
        try:
            async with asyncio.timeout(engine.scrape_timeout_s):
                answer = await self._client.get(metrics_url(url, engine.metrics_path))
            if answer.status_code != 200:
                raise EngineMetricsError(f"HTTP {answer.status_code}")
            sample = parse_engine_metrics(answer.text, engine.metrics)
        except TimeoutError:
            error = f"no answer within scrape_timeout_s ({engine.scrape_timeout_s:g} s)"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except EngineMetricsError as exc:
            error = str(exc)
        else:
            self.loads.record(tier.name, url, sample)
            self._recovered(tier, url)
            return
        self._failed(tier, url, error)

    async def aclose(self) -> None:
        """Stop every loop (a read under way ends within its timeout) and close the client."""
        for watch in self._watches.values():
            self._stop(watch)
        self._watches.clear()
        if self._stopping:
            await asyncio.wait(self._stopping)
        if self._own_client:
            await self._client.aclose()

    async def _loop(self, watch: _Watch) -> None:
        while True:
            await self.read(watch.tier, watch.url)
            try:
                await asyncio.wait_for(watch.stop.wait(), watch.tier.engine.scrape_interval_s)
                return
            except TimeoutError:
                pass

    def _stop(self, watch: _Watch) -> None:
        """Ask a loop to end once its read under way is over (bounded by its timeout)."""
        watch.stop.set()
        if watch.task is not None and not watch.task.done():
            self._stopping.add(watch.task)
            watch.task.add_done_callback(self._stopping.discard)

    def _failed(self, tier: Tier, url: str, error: str) -> None:
        self.loads.failed(tier.name, url, error)
        watch = self._watches.get((tier.name, url))
        if watch is not None and not watch.failing:
            watch.failing = True
            log.warning("engine.metrics_unreadable", tier=tier.name, replica=url, error=error)

    def _recovered(self, tier: Tier, url: str) -> None:
        watch = self._watches.get((tier.name, url))
        if watch is not None and watch.failing:
            watch.failing = False
            log.info("engine.metrics_readable", tier=tier.name, replica=url)
