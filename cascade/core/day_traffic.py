"""A day of traffic as ``cascade plan`` sees it: per workload and tier, the visits that arrive in
each hour of the day, what each brings, and what it leads to.

A *visit* is a request's calls to one tier: its answer, with the extra samples of the verify step
(one call, ``n`` sequences). Visits *enter* a tier (the decision sent the request there, whether
or not it was then spilled for want of capacity) or *follow* a served visit to another tier (an
escalation after its answer was rejected, or a witness the verify step asked for): follow-ons
happen only where the first visit was served, so a fleet that spills more escalates less. Only
follow-ons on stronger tiers (later in the policy) are planned.
:mod:`cascade.ledger.plan_traffic` reads it from the ledger; :mod:`cascade.core.fleet_plan`
prices fleets against it. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cascade.core.serving_model import SequenceLoad

__all__ = ["HOURS", "DayTraffic", "Flow", "VisitMix"]

HOURS = 24


@dataclass(frozen=True, slots=True)
class VisitMix:
    """What one visit to a tier brings, on average."""

    prompt_tokens: float
    """Prompt tokens of the answer's call."""
    cached_tokens: float
    """Of those, read from a cache (the engine's prefix cache, or the provider's)."""
    completion_tokens: float
    """Output tokens of the answer."""
    decode_tokens: float
    """Output tokens decoded in all (the answer and its samples)."""
    prefill_tokens: float
    """Prompt tokens prefilled in all (uncached; samples share the answer's prefill)."""

    @property
    def sequences(self) -> float:
        """Sequences decoded at once: 1, or the verify step's samples."""
        return (
            max(1.0, self.decode_tokens / self.completion_tokens) if self.completion_tokens else 1.0
        )

    @property
    def tokens(self) -> float:
        """Tokens served: prompt (cached included) and every output token."""
        return self.prompt_tokens + self.decode_tokens

    def sequence_load(self) -> SequenceLoad:
        """What each of its sequences brings to an engine."""
        output = self.decode_tokens / self.sequences
        return SequenceLoad(
            prefill_tokens=self.prefill_tokens / self.sequences,
            output_tokens=output,
            context_tokens=self.prompt_tokens + output / 2,
        )


@dataclass(frozen=True, slots=True)
class Flow:
    """One workload's visits to one tier."""

    workload: str
    tier: str
    entering: tuple[float, ...]
    """Visits entering here per hour of the day (hours 0..23), whatever served them then."""
    mix: VisitMix
    escalations: tuple[tuple[str, float], ...] = ()
    """(tier, visits there per answer served here): answers rejected and escalated."""
    witnesses: tuple[tuple[str, float], ...] = ()
    """(tier, witness calls there per answer served here): the verify step's witnesses. A
    witness takes a free slot or is skipped: it never spills, and causes nothing further."""

    def scaled(self, factor: float) -> Flow:
        """The same flow with ``factor`` times the visits."""
        return replace(self, entering=tuple(v * factor for v in self.entering))

    @property
    def per_day(self) -> float:
        """Visits entering a day."""
        return sum(self.entering)


@dataclass(frozen=True, slots=True)
class DayTraffic:
    """The traffic of an average day, and where it was observed."""

    flows: tuple[Flow, ...]
    days: float
    """Days of traffic the averages come from (by hour of day: see plan_traffic)."""
    requests: int
    """Requests read from the ledger."""

    def scaled(self, factor: float) -> DayTraffic:
        """``factor`` times the traffic, same shape and mix."""
        return replace(self, flows=tuple(f.scaled(factor) for f in self.flows))

    def on(self, tier: str) -> tuple[Flow, ...]:
        """The flows to one tier."""
        return tuple(f for f in self.flows if f.tier == tier)
