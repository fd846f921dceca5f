"""What ``/readyz`` and ``/metrics`` say of the engines behind the self-hosted tiers.

``/readyz`` names each watched replica's state: ``pending`` (not read yet), ``ok``,
``saturated`` (its engine's queue or KV cache at the policy's limit) or ``unreachable`` (no good
read within ``stale_after_s``; what the policy does about it is under ``on_unreachable``). An
unreachable replica makes the answer ``"degraded"`` but never a 503: readiness is about this
proxy, which still routes (around that replica, or by its own count), and every proxy replica
reads the same engines, so a 503 would take them all out of service at once.

``/metrics`` exports per tier and replica: ``cascade_engine_requests_running``,
``cascade_engine_requests_waiting``, ``cascade_engine_kv_cache_usage`` (0..1, as last read),
``cascade_engine_metrics_age_seconds`` (since the last good read),
``cascade_engine_metrics_reachable`` and ``cascade_engine_saturated`` (1 when the engine is at a
policy limit); replicas not read yet are left out. Where the engine exports them, its token
counters follow as ``cascade_engine_prompt_tokens_total`` and
``cascade_engine_generation_tokens_total``: every token the replica served since it started,
through this proxy or not (the ledger and ``cascade report`` know only this proxy's), as last
read: the rate of generated tokens over ``gpus x tokens_per_second`` is the fleet's live decode
utilization, all traffic included.
"""

from __future__ import annotations

from collections.abc import Callable

from cascade.policy.model import Tier
from cascade.tiers.engines import EngineLoad, EngineLoads

_GAUGES = (
    ("requests_running", "Requests the engine replica reports running, at the last good read"),
    ("requests_waiting", "Requests queued in the engine replica, at the last good read"),
    ("kv_cache_usage", "Share of the engine replica's KV cache in use (0..1), last good read"),
    ("metrics_age_seconds", "Seconds since the engine replica's metrics were last read"),
    ("metrics_reachable", "1 while the engine replica's last good read is within stale_after_s"),
    ("saturated", "1 when the engine replica is at the policy's max_waiting or max_kv_usage"),
)
_COUNTERS: tuple[tuple[str, str, Callable[[EngineLoad], float | None]], ...] = (
    (
        "prompt_tokens_total",
        "Prompt tokens the engine replica prefilled since it started, all its traffic (its own "
        "counter, last good read)",
        lambda load: load.prompt_tokens,
    ),
    (
        "generation_tokens_total",
        "Tokens the engine replica generated since it started, all its traffic (its own "
        "counter, last good read)",
        lambda load: load.generation_tokens,
    ),
)


def engine_readiness(loads: EngineLoads) -> tuple[dict[str, dict[str, object]], bool]:
    """Each watched tier's replicas and their state, and whether any is unreachable."""
    now = loads.clock()
    report: dict[str, dict[str, object]] = {}
    unreachable = False
    for (name, url), tier in loads.targets.items():
        load = loads.replica(name, url)
        state = _state(loads, tier, url, load)
        entry: dict[str, object] = {"state": state}
        if load is not None and load.scraped_at is not None:
            entry |= {
                "running": load.running,
                "waiting": load.waiting,
                "kv_usage": round(load.kv_usage, 4),
                "age_s": round(load.age_s(now), 3),
            }
        if load is not None and load.error is not None:
            entry["error"] = load.error
        if state == "unreachable":
            entry["on_unreachable"] = tier.engine.on_unreachable
            unreachable = True
        report.setdefault(name, {})[url] = entry
    return report, unreachable


def engine_series(loads: EngineLoads) -> str:
    """The engines' gauges in Prometheus text (empty when no tier reads its engines)."""
    now = loads.clock()
    rows: list[tuple[str, EngineLoad, bool]] = []
    for (name, url), tier in loads.targets.items():
        load = loads.replica(name, url)
        if load is not None:
            full = load.reachable and loads.refusal(tier, url) is not None
            rows.append((f'tier="{name}",replica="{_escape(url)}"', load, full))
    if not rows:
        return ""
    lines: list[str] = []
    for gauge, text in _GAUGES:
        lines += [f"# HELP cascade_engine_{gauge} {text}", f"# TYPE cascade_engine_{gauge} gauge"]
        for labels, load, full in rows:
            lines.append(f"cascade_engine_{gauge}{{{labels}}} {_value(gauge, load, full, now)}")
    for counter, text, read in _COUNTERS:
        counted = [(labels, read(load)) for labels, load, _ in rows]
        if any(value is not None for _, value in counted):
            lines += [f"# HELP cascade_engine_{counter} {text}"]
            lines += [f"# TYPE cascade_engine_{counter} counter"]
            lines += [
                f"cascade_engine_{counter}{{{labels}}} {value!r}"
                for labels, value in counted
                if value is not None
            ]
    return "\n".join(lines) + "\n"


def _state(loads: EngineLoads, tier: Tier, url: str, load: EngineLoad | None) -> str:
    if load is None:
        return "pending"
    if not load.reachable:
        return "unreachable"
    return "ok" if loads.refusal(tier, url) is None else "saturated"


def _value(gauge: str, load: EngineLoad, full: bool, now: float) -> str:
    values = {
        "requests_running": load.running,
        "requests_waiting": load.waiting,
        "kv_cache_usage": load.kv_usage,
        "metrics_age_seconds": load.age_s(now),
        "metrics_reachable": float(load.reachable),
        "saturated": float(full),
    }
    value = values[gauge]
    return "+Inf" if value == float("inf") else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
