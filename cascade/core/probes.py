"""Probes: example requests a policy promises to route to a given tier."""

from __future__ import annotations

from dataclasses import dataclass

from cascade.core.capacity import StaticCapacity
from cascade.core.planner import Messages, Planner
from cascade.policy.model import Probe


@dataclass(frozen=True)
class ProbeResult:
    """How one probe routed."""

    label: str
    expected: str
    actual: str
    confidence: float
    reason: str

    @property
    def passed(self) -> bool:
        """The probe routed to the tier it expects."""
        return self.expected == self.actual


def run_probes(planner: Planner) -> list[ProbeResult]:
    """Route every probe of the planner's policy on idle tiers and report where each went."""
    idle = StaticCapacity()
    results = []
    for probe in planner.policy.probes:
        messages: Messages = probe.prompt if probe.prompt is not None else probe.messages or []
        decision = planner.plan(messages, workload=probe.workload, capacity=idle, explore=False)
        results.append(
            ProbeResult(
                label=_label(probe),
                expected=probe.expect,
                actual=decision.tier,
                confidence=decision.confidence,
                reason=decision.reason,
            )
        )
    return results


def _label(probe: Probe) -> str:
    if probe.name:
        return probe.name
    text = probe.prompt if probe.prompt is not None else str(probe.messages)
    text = " ".join(text.split())
    return text if len(text) <= 48 else text[:47] + "…"
