"""What ``cascade report``'s shadow section reads: the shadow decisions recorded over a window,
with what the off-policy estimate needs of the live decision (its propensity, the tier its
thresholds chose, whether it was explored).

Only the requests a shadow policy decided (``shadow_policy`` set, :mod:`cascade.server.shadow`);
their cost, tokens and attempts come from the report's own
:class:`~cascade.ledger.queries.RequestFacts`, joined on ``request_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.database import run_with_engine
from cascade.ledger.models import Request

__all__ = ["ShadowFacts", "fetch_shadows", "read_shadows"]


@dataclass(frozen=True, slots=True)
class ShadowFacts:
    """What a shadow policy decided for one request, and how likely the live choice was."""

    request_id: str
    shadow_policy: str
    shadow_policy_version: str
    shadow_tier: str
    shadow_confidence: float | None
    propensity: float | None
    """The probability the live policy gave its own first tier (None: recorded before it was
    kept; taken as 1)."""
    decided_tier: str | None
    """The tier the live thresholds chose, before exploration."""
    explored: bool
    """The live policy's exploration sent the request to another tier than its thresholds'."""


async def fetch_shadows(engine: AsyncEngine, since: datetime | None) -> dict[str, ShadowFacts]:
    """The window's shadow decisions by request id (one query)."""
    query = select(
        Request.request_id,
        Request.shadow_policy,
        Request.shadow_policy_version,
        Request.shadow_tier,
        Request.shadow_confidence,
        Request.propensity,
        Request.decided_tier,
        Request.explored,
    ).where(Request.shadow_policy.is_not(None), Request.shadow_tier.is_not(None))
    if since is not None:
        query = query.where(Request.created_at >= since)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return {
        row["request_id"]: ShadowFacts(
            request_id=row["request_id"],
            shadow_policy=row["shadow_policy"],
            shadow_policy_version=row["shadow_policy_version"] or "",
            shadow_tier=row["shadow_tier"],
            shadow_confidence=row["shadow_confidence"],
            propensity=row["propensity"],
            decided_tier=row["decided_tier"],
            explored=bool(row["explored"]),
        )
        for row in rows
    }


def read_shadows(url: str | None, since: datetime | None) -> dict[str, ShadowFacts]:
    """:func:`fetch_shadows` for a synchronous caller (the CLI), on an engine of its own."""
    return run_with_engine(url, lambda engine: fetch_shadows(engine, since), existing=True)
