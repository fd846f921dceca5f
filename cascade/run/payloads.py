"""One request's payload as each tier gets it: the same request, with the cache markers that
tier's provider takes (:mod:`cascade.core.cache_markers`) and, on an API tier that sends the
request's workload at one of its provider's service tiers, that ``service_tier``.

Built once per request and per tier: an escalation back to an API tier, or a spill there after a
cheap tier failed, sends the bytes the first call sent, so the provider's cache sees one prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascade.core.cache_markers import mark, marker_style
from cascade.core.decision import Decision
from cascade.core.per_object import PerObject
from cascade.policy.model import Tier
from cascade.policy.service_tiers import service_tier_of

__all__ = ["TierPayloads"]

_marks = PerObject(marker_style)  # tiers are pydantic models: decided once per tier object


class TierPayloads:
    """``payloads(tier)``: what ``tier`` is sent for this request."""

    __slots__ = ("_decision", "_marked", "_payload")

    def __init__(self, payload: Mapping[str, Any], decision: Decision) -> None:
        self._payload = payload
        self._decision = decision
        self._marked: dict[str, Mapping[str, Any]] = {}

    @property
    def affinity(self) -> str | None:
        """The request's prefix hash, which keeps it on the replica whose prefix cache holds the
        prefix; None when it has no stable prefix (no system message, no tools), which would
        otherwise send every such request to one replica."""
        return self._decision.prefix_hash if self._decision.prefix_tokens > 0 else None

    @property
    def workload(self) -> str:
        """The request's workload (which prices its calls, and picks their service tiers)."""
        return self._decision.workload

    @property
    def plain(self) -> Mapping[str, Any]:
        """The payload without markers (what tiers that take none get)."""
        return self._payload

    def __call__(self, tier: Tier) -> Mapping[str, Any]:
        service = service_tier_of(tier, self._decision.workload) if tier.service_tiers else None
        if service is None and _marks(tier) is None:
            return self._payload
        marked = self._marked.get(tier.name)
        if marked is None:
            marked = self._payload
            if _marks(tier) is not None:
                marked = mark(
                    self._payload,
                    tier,
                    prefix_messages=self._decision.prefix_messages,
                    prefix_hash=self._decision.prefix_hash,
                )
            if service is not None:  # the policy's, over any the client sent
                marked = {**marked, "service_tier": service}
            self._marked[tier.name] = marked
        return marked
