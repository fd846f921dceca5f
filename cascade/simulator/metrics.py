"""``/metrics``: the engine's state under the names vLLM (or SGLang) exports, which routers read.

vLLM's names are those of its V1 engine (0.9 and later): ``vllm:num_requests_running``,
``vllm:num_requests_waiting`` (requests queued beyond ``max_concurrency``, as the engine queues
them) and ``vllm:kv_cache_usage_perc``, labelled ``model_name`` and ``engine``; counters
``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``, ``vllm:request_success_total``.
With ``names="sglang"`` the same numbers go out as SGLang's: ``sglang:num_running_reqs``,
``sglang:num_queue_reqs``, ``sglang:token_usage``, ``sglang:prompt_tokens_total``,
``sglang:generation_tokens_total``, ``sglang:num_requests_total``, labelled ``model_name``,
``engine_type``, ``tp_rank`` and ``pp_rank``. The proxy reads either
(:mod:`cascade.tiers.engine_metrics`).

A collector reads the engine's counters at scrape time, so nothing on the request path touches
Prometheus objects. Beyond the engines' names, ``simulator_busy_seconds_total`` and
``simulator_steps_total`` expose the timing model itself (simulated seconds spent stepping, and
engine steps), so throughput can be read as tokens per busy second. The Messages API's marker
cache (:mod:`cascade.simulator.marker_cache`) adds ``simulator_cache_read_input_tokens_total``
and ``simulator_cache_creation_input_tokens_total`` (the usage fields of the same names, summed)
and ``simulator_cache_entries`` (live and not yet evicted prefixes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cascade.simulator.engine import EngineStats
from cascade.simulator.marker_cache import CacheStats

__all__ = ["MetricNames", "registry_for"]

MetricNames = Literal["vllm", "sglang"]

# The engine's own names: (running, waiting, KV usage, prompt tokens, generated, finished).
_NAMES: Mapping[MetricNames, tuple[str, str, str, str, str, str]] = {
    "vllm": (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
    ),
    "sglang": (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:prompt_tokens",
        "sglang:generation_tokens",
        "sglang:num_requests",
    ),
}
_LABELS: Mapping[MetricNames, dict[str, str]] = {
    "vllm": {"engine": "0"},
    "sglang": {"engine_type": "unified", "tp_rank": "0", "pp_rank": "0"},
}


class _EngineCollector(Collector):
    def __init__(self, stats: EngineStats, model: str, names: MetricNames) -> None:
        self._stats = stats
        self._model = model
        self._names = _NAMES[names]
        self._labels = _LABELS[names]

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        running, waiting, kv, prompt, generated, finished = self._names
        keys, values = ["model_name", *self._labels], [self._model, *self._labels.values()]
        gauges = (
            (running, "Sequences in the running batch.", s.running),
            (waiting, "Sequences waiting to join the batch.", s.waiting),
            (kv, "Share of the KV cache in use (0..1).", s.kv_usage),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=keys)
            gauge.add_metric(values, value)
            yield gauge
        counters = (
            (prompt, "Prompt tokens prefilled.", s.prompt_tokens),
            (generated, "Tokens generated.", s.generation_tokens),
            (finished, "Sequences finished.", s.finished),
        )
        for name, doc, number in counters:
            counter = CounterMetricFamily(name, doc, labels=keys)
            counter.add_metric(values, number)
            yield counter
        timing = (
            (
                "simulator_busy_seconds",
                "Simulated seconds the engine spent stepping.",
                s.busy_seconds,
            ),
            ("simulator_steps", "Engine steps (one token per running sequence each).", s.steps),
        )
        for name, doc, amount in timing:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric([self._model], amount)
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


def registry_for(
    stats: EngineStats, cache: CacheStats, model: str, names: MetricNames = "vllm"
) -> CollectorRegistry:
    """A registry of its own (never the global one) exporting ``stats`` and ``cache`` under
    ``names`` (vLLM's or SGLang's)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_EngineCollector(stats, model, names))
    registry.register(_CacheCollector(cache, model))
    return registry
