"""Canary rollout: a candidate policy routes a stable share of a live policy's requests.

A policy's ``learning.canary`` names a candidate file and a share. Each request the live policy
would route is drawn into the canary arm or the control arm by a hash: of its request id
(``by: request``), or of its tenant (``by: tenant``, so a tenant sees one behaviour; requests
without a tenant fall back to their request id). The hash is salted with the policy's name only,
so raising the share keeps every request or tenant already in the canary there, and two
policies' canaries draw independently. The candidate runs as a Router of its own (its tiers,
thresholds, scorer and verifier), sharing the proxy's clients and in-flight counts; the ledger
records each request's arm and the version of the policy that routed it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from cascade.run.router import Router

__all__ = ["CanaryArm", "canary_draw"]

Arm = Literal["control", "canary"]

_SCALE = float(1 << 64)


def canary_draw(policy: str, key: str) -> float:
    """A number in [0, 1) fixed by ``policy`` and ``key`` (``request:<id>`` or
    ``tenant:<name>``): the first eight bytes of SHA-256 of both, as a fraction."""
    digest = hashlib.sha256(f"{policy}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclass
class CanaryArm:
    """A live policy's canary: the candidate's router and how requests are drawn into it."""

    router: Router
    share: float
    by: Literal["request", "tenant"]

    def arm(self, request_id: str, tenant: str | None) -> Arm:
        """Which arm a request of this policy takes (the same answer for the same key)."""
        by_tenant = self.by == "tenant" and tenant is not None
        key = f"tenant:{tenant}" if by_tenant else f"request:{request_id}"
        name = self.router.policy.name
        return "canary" if canary_draw(name, key) < self.share else "control"
