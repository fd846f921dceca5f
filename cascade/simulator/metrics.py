"""``/metrics``: the engine's state under the names vLLM exports, which routers already read.

A collector reads the engine's counters at scrape time, so nothing on the request path touches
Prometheus objects. Beyond vLLM's names, ``simulator_busy_seconds_total`` and
``simulator_steps_total`` expose the timing model itself (simulated seconds spent stepping, and
engine steps), so throughput can be read as tokens per busy second. The Messages API's marker
cache (:mod:`cascade.simulator.marker_cache`) adds ``simulator_cache_read_input_tokens_total``
and ``simulator_cache_creation_input_tokens_total`` (the usage fields of the same names, summed)
and ``simulator_cache_entries`` (live and not yet evicted prefixes).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cascade.simulator.engine import EngineStats
from cascade.simulator.marker_cache import CacheStats

__all__ = ["registry_for"]


class _EngineCollector(Collector):
    def __init__(self, stats: EngineStats, model: str) -> None:
        self._stats = stats
        self._model = model

    def collect(self) -> Iterator[Metric]:
        s, label = self._stats, [self._model]
        gauges = (
            ("vllm:num_requests_running", "Sequences in the running batch.", s.running),
            ("vllm:num_requests_waiting", "Sequences waiting to join the batch.", s.waiting),
            ("vllm:gpu_cache_usage_perc", "Share of the KV cache in use (0..1).", s.kv_usage),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(label, value)
            yield gauge
        counters = (
            ("vllm:prompt_tokens", "Prompt tokens prefilled.", s.prompt_tokens),
            ("vllm:generation_tokens", "Tokens generated.", s.generation_tokens),
            ("vllm:request_success", "Sequences finished.", s.finished),
            (
                "simulator_busy_seconds",
                "Simulated seconds the engine spent stepping.",
                s.busy_seconds,
            ),
            ("simulator_steps", "Engine steps (one token per running sequence each).", s.steps),
        )
        for name, doc, number in counters:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(label, number)
            yield counter


class _CacheCollector(Collector):
    def __init__(self, stats: CacheStats, model: str) -> None:
        self._stats = stats
        self._model = model

    def collect(self) -> Iterator[Metric]:
        s, label = self._stats, [self._model]
        counters = (
            (
                "simulator_cache_read_input_tokens",
                "Prompt tokens read from the cache.",
                s.read_tokens,
            ),
            (
                "simulator_cache_creation_input_tokens",
                "Prompt tokens written to the cache.",
                s.creation_tokens,
            ),
        )
        for name, doc, number in counters:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(label, number)
            yield counter
        gauge = GaugeMetricFamily(
            "simulator_cache_entries", "Cached prefixes held.", labels=["model_name"]
        )
        gauge.add_metric(label, s.entries)
        yield gauge


def registry_for(stats: EngineStats, cache: CacheStats, model: str) -> CollectorRegistry:
    """A registry of its own (never the global one) exporting ``stats`` and ``cache``."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_EngineCollector(stats, model))
    registry.register(_CacheCollector(cache, model))
    return registry
