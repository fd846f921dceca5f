"""The policy's part in the learning loop: exploration, and what the ledger keeps for replay.

Split from :mod:`cascade.policy.model` (which re-exports it); field docstrings become the JSON
Schema's descriptions and ``policies/REFERENCE.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, PrivateAttr, model_validator

from cascade.policy.parts import _Strict

if TYPE_CHECKING:
    from cascade.policy.model import Policy


class Canary(_Strict):
    """A candidate policy applied to a share of the traffic, the rest staying on this one."""

    policy: str = Field(min_length=1)
    """The candidate's policy file, relative to this policy's file (or absolute). It must name
    the same policy (``name``); its tiers, thresholds and models route the canary's requests.
    It is loaded and validated with this policy: a candidate that fails refuses the whole file
    (a running proxy keeps its last good policies), and a running proxy reloads it when either
    file changes."""
    share: float = Field(ge=0.0, le=1.0)
    """Share, 0 to 1, of the requests (or tenants, with ``by: tenant``) the candidate routes.
    Assignment is a hash, so it is stable: raising the share keeps those already in the canary
    in it, and lowering it to 0 sends everything back to this policy."""
    by: Literal["request", "tenant"] = "request"
    """What the hash is of: ``request`` (the request id: every request is drawn on its own) or
    ``tenant`` (a tenant stays in one arm, so it sees one behaviour; requests without a tenant
    are drawn by request). Requests that name a tier's model, and Batch API requests, are not
    routed by thresholds: they stay on this policy, with no arm."""

    _candidate: Policy | None = PrivateAttr(default=None)

    @property
    def candidate(self) -> Policy:
        """The loaded candidate (set by :func:`cascade.policy.loading.load_policy`)."""
        if self._candidate is None:
            raise RuntimeError(f"the canary {self.policy!r} was never loaded (load the file)")
        return self._candidate


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
    canary: Canary | None = None
    """Route a share of the traffic with a candidate policy and record which arm each request
    took (``arm``: ``canary`` or ``control``), for ``cascade report``'s canary section. None: no
    canary."""

    @model_validator(mode="after")
    def _shares(self) -> Learning:
        if self.explore + self.explore_up > 0.5:
            total = self.explore + self.explore_up
            raise ValueError(
                f"explore + explore_up is {total:g}; at most 0.5 of the traffic may explore"
            )
        return self
