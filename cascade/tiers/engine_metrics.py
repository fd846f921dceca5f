"""Reading an engine's load from its Prometheus ``/metrics`` page (vLLM or SGLang).

The names read, as the engines document them:

======  ==========================================  ==========================================
engine  metric                                      what it is
======  ==========================================  ==========================================
vLLM    ``vllm:num_requests_running`` (gauge)       requests in the running batch
vLLM    ``vllm:num_requests_waiting`` (gauge)       requests queued, not yet scheduled
vLLM    ``vllm:kv_cache_usage_perc`` (gauge)        KV-cache blocks in use, 0..1 (V1 engine,
                                                    0.9 and later)
vLLM    ``vllm:gpu_cache_usage_perc`` (gauge)       its name before 0.9 (deprecated in 0.9,
                                                    hidden since); read when the new one is absent
SGLang  ``sglang:num_running_reqs`` (gauge)         requests running
SGLang  ``sglang:num_queue_reqs`` (gauge)           requests in the waiting queue
SGLang  ``sglang:token_usage`` (gauge)              KV-cache token pool in use, 0..1
vLLM    ``vllm:prompt_tokens_total`` (counter)      prompt tokens prefilled since it started
vLLM    ``vllm:generation_tokens_total`` (counter)  tokens generated since it started
SGLang  ``sglang:prompt_tokens_total`` (counter)    prompt tokens prefilled since it started
SGLang  ``sglang:generation_tokens_total``          tokens generated since it started (counter)
======  ==========================================  ==========================================

vLLM labels each series ``model_name`` and ``engine`` (the data-parallel engine's index);
SGLang (``--enable-metrics``) ``model_name`` and, in recent releases, ``engine_type``,
``tp_rank``, ``pp_rank``, ``moe_ep_rank`` and with data-parallel attention ``dp_rank``.

How one page becomes one :class:`~cascade.tiers.engines.EngineSample`: requests running and
waiting are summed over data-parallel engines (vLLM ``engine``, SGLang ``dp_rank``) and models;
the tensor-, pipeline- and expert-parallel ranks of one engine see the same requests, so they
count once (their highest value); when per-``dp_rank`` series stand beside one without, the
latter (a total) is not counted again. KV usage is the mean over data-parallel engines (each has
a cache of the same size and the engine spreads requests across them). A page without the
running or waiting gauge is an error that names the missing metric; KV usage absent reads 0.
The token counters are summed like the requests and read as None when absent: they count all
of the engine's traffic, this proxy's or not (``/metrics`` shows them per replica).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from cascade.tiers.engines import EngineSample

EngineKind = Literal["vllm", "sglang"]

# Labels that tell apart ranks of one engine (they see the same requests), not engines.
_RANK_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank", "engine_type"})


@dataclass(frozen=True)
class MetricNames:
    """The gauges one engine exports for its load (``kv_usage``: newest name first) and its
    token counters."""

    running: str
    waiting: str
    kv_usage: tuple[str, ...]
    prompt_tokens: str
    generation_tokens: str


NAMES: Mapping[EngineKind, MetricNames] = {
    "vllm": MetricNames(
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prompt_tokens="vllm:prompt_tokens_total",
        generation_tokens="vllm:generation_tokens_total",
    ),
    "sglang": MetricNames(
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        kv_usage=("sglang:token_usage",),
        prompt_tokens="sglang:prompt_tokens_total",
        generation_tokens="sglang:generation_tokens_total",
    ),
}


class EngineMetricsError(ValueError):
    """A metrics page that does not say the engine's load (not parseable, or gauges missing)."""


_Series = tuple[Mapping[str, str], float]
_DISPLAY: Mapping[EngineKind, str] = {"vllm": "vLLM", "sglang": "SGLang"}


def parse_engine_metrics(text: str, engine: EngineKind) -> EngineSample:
    """The load ``text`` (a Prometheus text exposition page) reports for ``engine``;
    EngineMetricsError when it is not exposition text or lacks the running or waiting gauge."""
    names = NAMES[engine]
    counters = (names.prompt_tokens, names.generation_tokens)
    wanted = {names.running, names.waiting, *names.kv_usage, *counters}
    series = _samples(text, wanted)
    missing = [n for n in (names.running, names.waiting) if n not in series]
    if missing:
        hint = " (SGLang exports metrics only with --enable-metrics)" if engine == "sglang" else ""
        raise EngineMetricsError(
            f"the page has no {' or '.join(missing)}: is this a {_DISPLAY[engine]} server?{hint}"
        )
    kv_name = next((n for n in names.kv_usage if n in series), None)
    return EngineSample(
        running=_total(series[names.running]),
        waiting=_total(series[names.waiting]),
        kv_usage=0.0 if kv_name is None else _mean(series[kv_name]),
        prompt_tokens=_counter(series, names.prompt_tokens),
        generation_tokens=_counter(series, names.generation_tokens),
    )


def _samples(text: str, wanted: set[str]) -> dict[str, list[_Series]]:
    """The samples of ``wanted`` names on the page (NaN values left out)."""
    found: dict[str, list[_Series]] = defaultdict(list)
    try:
        for family in text_string_to_metric_families(_lines_of(text, wanted)):
            for sample in family.samples:
                if sample.name in wanted and not math.isnan(sample.value):
                    found[sample.name].append((sample.labels, sample.value))
    except ValueError as exc:
        raise EngineMetricsError(f"not Prometheus text exposition: {exc}") from None
    return found


def _lines_of(text: str, names: Iterable[str]) -> str:
    """Only the lines about ``names``: a vLLM page runs to hundreds of kilobytes of histograms,
    which the parser would take tens of milliseconds of the event loop to read each second."""
    starts = tuple(
        start
        for name in names
        for start in (f"{name}{{", f"{name} ", f"# HELP {name} ", f"# TYPE {name} ")
    )
    return "\n".join(line for line in text.splitlines() if line.startswith(starts))


def _per_engine(series: Iterable[_Series]) -> list[float]:
    """One value per data-parallel engine: ranks of one engine count once (their highest);
    a series without ``dp_rank`` is dropped when others carry one (it is their total)."""
    items = list(series)
    if any("dp_rank" in labels for labels, _ in items):
        items = [(labels, value) for labels, value in items if "dp_rank" in labels]
    engines: dict[tuple[tuple[str, str], ...], float] = {}
    for labels, value in items:
        key = tuple(sorted((k, v) for k, v in labels.items() if k not in _RANK_LABELS))
        engines[key] = max(value, engines.get(key, value))
    return list(engines.values())


def _total(series: Iterable[_Series]) -> float:
    return sum(_per_engine(series))


def _counter(series: Mapping[str, list[_Series]], name: str) -> float | None:
    """A counter summed like the requests; None when the page does not export it."""
    return _total(series[name]) if name in series else None


def _mean(series: Iterable[_Series]) -> float:
    values = _per_engine(series)
    return sum(values) / len(values) if values else 0.0
