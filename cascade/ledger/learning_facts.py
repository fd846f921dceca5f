"""What the learning loop reads from the ledger beside :mod:`cascade.ledger.queries`' facts.

Two queries over the same window, keyed by request id so they join the
:class:`~cascade.ledger.queries.RequestFacts` the reports already read: each request's canary
arm and policy version (for ``cascade report``'s canary section; only requests that have an arm),
and the numbers the scorer saw with their version and the decision's propensity (for
``cascade export``'s labels; only read when exporting, as they are the widest column).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Row, Select, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.database import run_with_engine
from cascade.ledger.models import Request

__all__ = ["ArmFacts", "LearningFacts", "read_arms", "read_learning"]

_Row = TypeVar("_Row")


@dataclass(frozen=True, slots=True)
class ArmFacts:
    """A request's canary arm and the version of the policy that routed it."""

    arm: str
    """``control`` or ``canary``."""
    policy_version: str


@dataclass(frozen=True, slots=True)
class LearningFacts:
    """What a request's decision left for retraining and replay."""

    features: tuple[float, ...] | None
    """The numbers the scorer saw (None: a text model, or nothing scored)."""
    feature_version: str | None
    decided_tier: str | None
    """The tier the thresholds chose, before exploration."""
    propensity: float | None
    """The probability of the first tier chosen (None: nothing was decided by score)."""
    explored: bool


def read_arms(url: str | None, since: datetime | None) -> dict[str, ArmFacts]:
    """The window's requests that took a canary arm: ``{request_id: ArmFacts}``."""
    query = select(Request.request_id, Request.arm, Request.policy_version).where(
        Request.arm.is_not(None)
    )
    return _read(url, since, query, lambda row: ArmFacts(row.arm, row.policy_version))


def read_learning(url: str | None, since: datetime | None) -> dict[str, LearningFacts]:
    """Every request of the window's learning columns: ``{request_id: LearningFacts}``."""
    query = select(
        Request.request_id,
        Request.features,
        Request.feature_version,
        Request.decided_tier,
        Request.propensity,
        Request.explored,
    )

    def facts(row: Row[Any]) -> LearningFacts:
        features = row.features
        return LearningFacts(
            tuple(float(v) for v in json.loads(features)) if features else None,
            row.feature_version,
            row.decided_tier,
            row.propensity,
            bool(row.explored),
        )

    return _read(url, since, query, facts)


def _read(
    url: str | None,
    since: datetime | None,
    query: Select[*tuple[Any, ...]],
    build: Callable[[Row[Any]], _Row],
) -> dict[str, _Row]:
    if since is not None:
        query = query.where(Request.created_at >= since)

    async def fetch(engine: AsyncEngine) -> dict[str, _Row]:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.request_id: build(row) for row in rows}

    job: Callable[[AsyncEngine], Awaitable[dict[str, _Row]]] = fetch
    return run_with_engine(url, job, existing=True)
