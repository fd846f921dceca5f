"""The policy's part in the learning loop: exploration, and what the ledger keeps for replay.

Split from :mod:`cascade.policy.model` (which re-exports it); field docstrings become the JSON
Schema's descriptions and ``policies/REFERENCE.md``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from cascade.policy.parts import _Strict


class Learning(_Strict):
    """Exploration, and the features the ledger keeps, for ``cascade replay`` and retraining."""

    explore: float = Field(default=0.0, ge=0.0, le=0.5)
    """Share, 0 to 0.5, of the scored requests whose thresholds chose a tier above the cheapest
    one they may use that go to one of the cheaper tiers anyway, each with room equally likely
    (its answer checked, verified and escalated when it fails, like any other). The ledger
    records the probability of each choice (``propensity``), so ``cascade replay`` can estimate
    what a policy with lower thresholds would do on the prompts this one sends up; without
    exploration the logged traffic never shows it. 0: none."""
    explore_up: float = Field(default=0.0, ge=0.0, le=0.5)
    """Share, 0 to 0.5, of the scored requests with a stronger tier above the one their
    thresholds chose that go to one of those instead: the data ``cascade replay`` needs to
    estimate a policy that sends more traffic up (or a new model that would), paid for with the
    stronger tiers' calls. ``explore + explore_up`` is at most 0.5. 0: none."""
    record_features: bool = True
    """Keep the numbers the scorer saw for each request in the ledger (never the prompt), with
    their feature version, so ``cascade replay`` can score logged requests with another model of
    the same feature version. Text models have no such numbers: nothing is kept for them."""

    @model_validator(mode="after")
    def _shares(self) -> Learning:
        if self.explore + self.explore_up > 0.5:
            total = self.explore + self.explore_up
            raise ValueError(
                f"explore + explore_up is {total:g}; at most 0.5 of the traffic may explore"
            )
        return self
