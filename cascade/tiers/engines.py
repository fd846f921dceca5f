"""What the engines behind each self-hosted tier say about their own load.

Each proxy replica reads every engine replica's Prometheus ``/metrics`` in the background
(:mod:`cascade.tiers.engine_scraper`, the names per engine in :mod:`cascade.tiers.engine_metrics`)
and keeps the last read here, per tier and replica URL. Two proxies that never talk then judge
an engine by the same numbers: its own running and waiting requests and KV-cache usage, which
count every proxy's calls, not only this one's.

The rules, per replica of a tier whose ``engine.metrics`` is not ``off``:

- **Reachable** while its last good read is at most ``stale_after_s`` old. A replica not read
  yet (the proxy just started, or a reload added it) is *pending*: judged as if its metrics were
  off, so a starting proxy does not refuse traffic before its first read.
- **Saturated** when reachable and its engine holds ``max_waiting`` or more requests waiting, or
  its KV-cache usage is ``max_kv_usage`` or more (a limit left unset never saturates).
- **Unreachable** (no good read within ``stale_after_s``): ``on_unreachable: skip`` sends no
  request there until a read succeeds again; ``own_count`` judges it by this proxy's own calls in
  flight alone, as if its metrics were off.

A tier is saturated by its engines when no replica *admits* a request (every one saturated or
skipped). This proxy's own ``max_concurrency`` count applies beside it
(:mod:`cascade.core.capacity`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cascade.policy.model import Tier


@dataclass(frozen=True)
class EngineSample:
    """One read of an engine's metrics page, summed over its models and engines."""

    running: float
    """Requests the engine is running now."""
    waiting: float
    """Requests queued inside the engine, not yet running."""
    kv_usage: float
    """Share of the KV cache in use, 0..1 (the highest of its engines, when it has several)."""
    prompt_tokens: float | None = None
    """Prompt tokens the engine has prefilled since it started, all its traffic (its counter);
    None when its page has no such counter."""
    generation_tokens: float | None = None
    """Tokens the engine has generated since it started (its counter); None when absent."""


@dataclass(frozen=True)
class EngineLoad:
    """The last known load of one engine replica, as the proxy sees it now."""

    running: float
    """Requests running at the last good read (0 before any)."""
    waiting: float
    """Requests waiting at the last good read (0 before any)."""
    kv_usage: float
    """KV-cache usage 0..1 at the last good read (0 before any)."""
    scraped_at: float | None
    """When the last good read finished, on the clock of :class:`EngineLoads`; None before any."""
    reachable: bool
    """Whether the last good read is at most ``stale_after_s`` old."""
    error: str | None = None
    """Why the last read failed (None when it succeeded)."""
    prompt_tokens: float | None = None
    """The engine's prompt-token counter at the last good read (None: not exported)."""
    generation_tokens: float | None = None
    """The engine's generated-token counter at the last good read (None: not exported)."""

    def age_s(self, now: float) -> float:
        """Seconds since the last good read (infinite before any)."""
        return math.inf if self.scraped_at is None else now - self.scraped_at


@dataclass(frozen=True)
class _Read:
    sample: EngineSample | None
    scraped_at: float | None
    error: str | None


class EngineLoads:
    """The engines' own load per tier and replica URL: written by the scraper, read by routing.

    ``clock`` (default ``time.monotonic``) dates each read; tests pass their own to age reads.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._targets: dict[tuple[str, str], Tier] = {}
        self._reads: dict[tuple[str, str], _Read] = {}

    def watch(self, tiers: Iterable[Tier]) -> None:
        """Watch the replicas of these tiers whose ``engine.metrics`` is not off (the first
        tier of a name wins: tiers are known by name across the proxy's policies); what was
        read of a replica still watched is kept, the rest forgotten (a policy reload)."""
        targets: dict[tuple[str, str], Tier] = {}
        for tier in tiers:
            if tier.kind == "self_hosted" and tier.engine.metrics != "off":
                for url in tier.endpoints:
                    targets.setdefault((tier.name, url), tier)
        self._targets = targets
        self._reads = {key: read for key, read in self._reads.items() if key in targets}

    @property
    def targets(self) -> Mapping[tuple[str, str], Tier]:
        """Every watched replica, as (tier name, replica URL), with the tier whose ``engine``
        settings apply to it."""
        return self._targets

    def record(self, tier_name: str, url: str, sample: EngineSample) -> None:
        """A good read of ``url``'s metrics."""
        self._reads[(tier_name, url)] = _Read(sample, self.clock(), None)

    def failed(self, tier_name: str, url: str, error: str) -> None:
        """A failed read of ``url``'s metrics (the last good one stands until it is stale)."""
        last = self._reads.get((tier_name, url))
        sample, when = (last.sample, last.scraped_at) if last else (None, None)
        self._reads[(tier_name, url)] = _Read(sample, when, error)

    def replica(self, tier_name: str, url: str) -> EngineLoad | None:
        """What is known of one replica's engine; None when its tier's metrics are not read or
        no read of it has finished yet."""
        tier = self._targets.get((tier_name, url))
        read = self._reads.get((tier_name, url))
        if tier is None or read is None:
            return None
        sample = read.sample or EngineSample(0.0, 0.0, 0.0)
        fresh = read.scraped_at is not None and (
            self.clock() - read.scraped_at <= tier.engine.stale_after_s
        )
        return EngineLoad(
            sample.running,
            sample.waiting,
            sample.kv_usage,
            read.scraped_at,
            fresh,
            read.error,
            sample.prompt_tokens,
            sample.generation_tokens,
        )

    def refusal(self, tier: Tier, url: str) -> str | None:
        """Why ``url`` takes no request now by its engine's truth (None: it takes one)."""
        load = self.replica(tier.name, url)
        if load is None:
            return None
        engine = tier.engine
        if not load.reachable:
            return "its metrics are unreachable" if engine.on_unreachable == "skip" else None
        if engine.max_waiting is not None and load.waiting >= engine.max_waiting:
            return f"{load.waiting:g} waiting (max_waiting {engine.max_waiting})"
        if engine.max_kv_usage is not None and load.kv_usage >= engine.max_kv_usage:
            return f"KV cache {load.kv_usage:.0%} used (max_kv_usage {engine.max_kv_usage:.0%})"
        return None

    def admits(self, tier: Tier, url: str) -> bool:
        """Whether ``url`` may take a request now by its engine's truth."""
        return self.refusal(tier, url) is None

    def saturation(self, tier: Tier) -> str | None:
        """Why ``tier`` is saturated by its engines (no replica admits a request), or None."""
        if tier.engine.metrics == "off" or not tier.endpoints:
            return None
        reasons: list[str] = []
        for url in tier.endpoints:
            why = self.refusal(tier, url)
            if why is None:
                return None
            reasons.append(f"{url}: {why}")
        return "its engines report " + "; ".join(reasons)

    def tier_saturated(self, tier: Tier) -> bool:
        """Whether no replica of ``tier`` admits a request by its engine's truth."""
        return self.saturation(tier) is not None

    def snapshot(self) -> Mapping[str, Mapping[str, EngineLoad | None]]:
        """Every watched tier's replicas and what is known of each (None: not read yet)."""
        tiers: dict[str, dict[str, EngineLoad | None]] = {}
        for name, url in self._targets:
            tiers.setdefault(name, {})[url] = self.replica(name, url)
        return tiers
