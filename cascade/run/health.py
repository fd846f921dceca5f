"""Which tiers are worth calling: consecutive failures, cool-downs and a tier's own Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cascade.errors import TierError
from cascade.policy.model import Tier


@dataclass
class TierHealth:
    """Consecutive failures per tier, and until when a failing tier is skipped.

    Only failures that are the tier's count (``TierError.spillable``: 429, 5xx, timeouts, refused
    connections, answers that are not OpenAI's): a 4xx caused by the request is the client's
    mistake and never moves traffic off a tier, and ``saturated`` (no free slot in this process,
    the queue full or its wait over) is our own admission limit, not the tier failing. A tier
    that answers 429 or 503 with ``Retry-After`` is skipped for that long, whatever its failure
    count.
    """

    clock: Callable[[], float] = time.monotonic
    failures: dict[str, int] = field(default_factory=dict)
    skipped_until: dict[str, float] = field(default_factory=dict)

    def available(self, tier: Tier) -> bool:
        """False while the tier is cooling down after repeated failures or a Retry-After."""
        return self.clock() >= self.skipped_until.get(tier.name, 0.0)

    def succeeded(self, tier: Tier) -> None:
        self.failures[tier.name] = 0

    def failed(self, tier: Tier, error: TierError) -> None:
        """Count ``error`` against ``tier`` when it is the tier's fault."""
        if not error.spillable or error.kind == "saturated":
            return
        now = self.clock()
        if error.retry_after_s is not None and error.retry_after_s > 0:
            until = now + error.retry_after_s
            self.skipped_until[tier.name] = max(self.skipped_until.get(tier.name, 0.0), until)
        count = self.failures.get(tier.name, 0) + 1
        self.failures[tier.name] = count
        if count >= tier.max_failures:
            until = now + tier.cooldown_s
            self.skipped_until[tier.name] = max(self.skipped_until.get(tier.name, 0.0), until)
            self.failures[tier.name] = 0
