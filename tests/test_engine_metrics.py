"""Engine load read from vLLM's and SGLang's Prometheus pages, and what it makes of a tier.

The pages in tests/data/engine_metrics/ are written from the engines' documented metric names and
label sets: vLLM's V1 engine with two data-parallel engines, vLLM before 0.9 (the old KV-cache
name), SGLang with both tensor-parallel ranks reporting, SGLang with data-parallel attention.
Each carries the histograms, counters and process series a real page has around the gauges read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from cascade.policy.loading import load_policy
from cascade.policy.model import Tier
from cascade.tiers.engine_metrics import EngineKind, EngineMetricsError, parse_engine_metrics
from cascade.tiers.engines import EngineLoads, EngineSample
from tests.conftest import TWO_TIERS

PAGES = Path(__file__).parent / "data" / "engine_metrics"
A, B = "http://engine-a:8000/v1", "http://engine-b:8000/v1"


def _page(name: str) -> str:
    return (PAGES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("page", "engine", "expected"),
    [
        # two engines: 7+5 running, 3+6 waiting, KV 62% and 78% (mean 70%)
        ("vllm_v1_dp2.txt", "vllm", EngineSample(running=12, waiting=9, kv_usage=0.70)),
        # vllm:gpu_cache_usage_perc, read where vllm:kv_cache_usage_perc is absent
        ("vllm_v0_legacy.txt", "vllm", EngineSample(running=4, waiting=11, kv_usage=0.91)),
        # TP ranks 0 and 1 both report the same 9 running, 14 queued: counted once
        ("sglang_tp2.txt", "sglang", EngineSample(running=9, waiting=14, kv_usage=0.83)),
        # dp_rank 0 and 1 hold different requests: 6+10 running, 0+3 queued, usage 35%/55%
        ("sglang_dp_attention.txt", "sglang", EngineSample(running=16, waiting=3, kv_usage=0.45)),
    ],
)
def test_pages_read_as_the_engine_reports_them(
    page: str, engine: EngineKind, expected: EngineSample
) -> None:
    """Each fixture page gives the engine's running and waiting requests and KV usage."""
    sample = parse_engine_metrics(_page(page), engine)
    assert sample.running == expected.running
    assert sample.waiting == expected.waiting
    assert sample.kv_usage == pytest.approx(expected.kv_usage)


def test_the_wrong_engine_names_the_missing_gauges() -> None:
    """An SGLang page read as vLLM's is an error that names what is missing and asks why."""
    with pytest.raises(EngineMetricsError) as caught:
        parse_engine_metrics(_page("sglang_tp2.txt"), "vllm")
    assert "vllm:num_requests_running or vllm:num_requests_waiting" in str(caught.value)
    assert "vLLM server" in str(caught.value)
    with pytest.raises(EngineMetricsError, match="--enable-metrics"):
        parse_engine_metrics(_page("vllm_v1_dp2.txt"), "sglang")


def test_text_that_is_not_an_exposition_is_an_error() -> None:
    """A page that is not Prometheus text (an HTML error page) is refused, not read as zeros."""
    with pytest.raises(EngineMetricsError, match="not Prometheus text"):
        parse_engine_metrics("vllm:num_requests_waiting{model_name= 3\n", "vllm")


def test_a_total_beside_per_rank_series_is_not_counted_twice() -> None:
    """When per-dp_rank series stand beside one without dp_rank, only the ranks are summed."""
    page = (
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{model_name="m"} 8\n'
        'sglang:num_running_reqs{model_name="m",dp_rank="0"} 3\n'
        'sglang:num_running_reqs{model_name="m",dp_rank="1"} 5\n'
        "# TYPE sglang:num_queue_reqs gauge\n"
        'sglang:num_queue_reqs{model_name="m",dp_rank="0"} 1\n'
        'sglang:num_queue_reqs{model_name="m",dp_rank="1"} NaN\n'
    )
    sample = parse_engine_metrics(page, "sglang")
    assert (sample.running, sample.waiting, sample.kv_usage) == (8, 1, 0.0)


def _tier(**engine: object) -> Tier:
    return Tier(
        name="medium",
        model="m",
        kind="self_hosted",
        replicas=[A, B],
        price={"gpu_usd_per_hour": 2.3, "tokens_per_second": 14500},
        engine={"metrics": "vllm", **engine},
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _loads(tier: Tier, clock: _Clock | None = None) -> EngineLoads:
    loads = EngineLoads(clock or _Clock())
    loads.watch([tier])
    return loads


def test_a_tier_is_saturated_only_when_every_replica_is() -> None:
    """One replica at max_waiting leaves the tier open; both at it saturate it, naming each."""
    tier = _tier(max_waiting=9)
    loads = _loads(tier)
    loads.record("medium", A, parse_engine_metrics(_page("vllm_v1_dp2.txt"), "vllm"))
    assert loads.saturation(tier) is None  # B not read yet: judged by this proxy's count
    loads.record("medium", B, EngineSample(running=3, waiting=0, kv_usage=0.2))
    assert not loads.admits(tier, A)
    assert loads.admits(tier, B)
    assert loads.saturation(tier) is None
    loads.record("medium", B, parse_engine_metrics(_page("vllm_v0_legacy.txt"), "vllm"))
    why = loads.saturation(tier)
    assert why == (
        f"its engines report {A}: 9 waiting (max_waiting 9); {B}: 11 waiting (max_waiting 9)"
    )


def test_kv_usage_saturates_at_its_limit() -> None:
    """max_kv_usage: an engine whose KV cache is that full takes no request."""
    tier = _tier(max_kv_usage=0.9)
    loads = _loads(tier)
    loads.record("medium", A, parse_engine_metrics(_page("vllm_v0_legacy.txt"), "vllm"))
    loads.record("medium", B, parse_engine_metrics(_page("vllm_v1_dp2.txt"), "vllm"))
    assert loads.refusal(tier, A) == "KV cache 91% used (max_kv_usage 90%)"
    assert loads.admits(tier, B)  # 70%


def test_without_limits_an_engine_never_saturates_the_tier() -> None:
    """Metrics read but no max_waiting or max_kv_usage set: the numbers are shown, not used."""
    tier = _tier()
    loads = _loads(tier)
    for url in (A, B):
        loads.record("medium", url, EngineSample(running=64, waiting=500, kv_usage=1.0))
    assert loads.saturation(tier) is None


@pytest.mark.parametrize(("policy", "saturated"), [("skip", True), ("own_count", False)])
def test_stale_metrics_follow_on_unreachable(policy: str, saturated: bool) -> None:
    """A replica whose last good read is older than stale_after_s is unreachable: skip
    saturates a tier of such replicas, own_count leaves it to this proxy's own count."""
    clock = _Clock()
    tier = _tier(max_waiting=4, stale_after_s=5, on_unreachable=policy)
    loads = _loads(tier, clock)
    for url in (A, B):
        loads.record("medium", url, EngineSample(running=1, waiting=0, kv_usage=0.1))
    clock.now += 5.0
    assert loads.saturation(tier) is None  # exactly stale_after_s old: still fresh
    loads.failed("medium", A, "ConnectError: refused")
    load = loads.replica("medium", A)
    assert load is not None
    assert load.reachable
    assert load.error == "ConnectError: refused"
    clock.now += 0.5
    load = loads.replica("medium", A)
    assert load is not None
    assert not load.reachable
    assert load.running == 1  # the last known numbers are kept
    assert (loads.saturation(tier) is not None) is saturated


def test_a_reload_keeps_what_was_read_of_replicas_still_named() -> None:
    """watch() with a changed policy forgets removed replicas and keeps the others' reads."""
    tier = _tier()
    loads = _loads(tier)
    loads.record("medium", A, EngineSample(running=2, waiting=1, kv_usage=0.3))
    loads.record("medium", B, EngineSample(running=2, waiting=1, kv_usage=0.3))
    loads.watch([tier.model_copy(update={"replicas": [A]})])
    assert loads.replica("medium", A) is not None
    assert loads.replica("medium", B) is None
    loads.watch(
        [tier.model_copy(update={"engine": tier.engine.model_copy(update={"metrics": "off"})})]
    )
    assert loads.replica("medium", A) is None
    assert loads.targets == {}


def test_staleness_must_outlast_a_read() -> None:
    """stale_after_s no longer than scrape_interval_s is refused: every replica would flap to
    unreachable between two good reads."""
    with pytest.raises(ValidationError, match="must be more than scrape_interval_s"):
        _tier(scrape_interval_s=5, stale_after_s=5)


def test_a_bare_yaml_off_turns_the_metrics_off(write_policy: Callable[[str], Path]) -> None:
    """`metrics: off` unquoted (YAML reads it as false) means off, as written."""
    text = TWO_TIERS.replace(
        "    max_concurrency: 2\n", "    max_concurrency: 2\n    engine: {metrics: off}\n"
    )
    assert load_policy(write_policy(text)).tier("small").engine.metrics == "off"
