"""What ``cascade replay`` reads from the ledger: logged requests in chunks, never all at once.

Two small aggregate queries first (:func:`survey`): how many of the window's requests carry the
scorer's numbers of each feature version (and how many of those were decided by score, with a
propensity and a first tier), and which tiers exploration sent requests to. Then
:func:`stream_rows` reads one feature version's decided requests through a server-side cursor
(SQLAlchemy's ``stream`` with ``yield_per``, on Postgres and SQLite alike), a chunk of columns
at a time; whether a request escalated is computed by the database (``EXISTS`` an attempt in the
``escalation`` role: its first answer was rejected and a stronger tier was asked, as
``cascade report``'s escalation rate counts it), so no attempt row ever reaches Python.
Money arrives as a float: replay estimates, it does not bill.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Float, and_, cast, exists, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.errors import LedgerError
from cascade.ledger.models import Attempt, Request

__all__ = [
    "ReplayChunk",
    "ReplayWindow",
    "Survey",
    "parse_features",
    "policies_in",
    "stream_rows",
    "survey",
]

CHUNK_ROWS = 10_000
"""Rows per chunk: enough for onnxruntime and numpy to pay off, a few MB of memory."""


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    """Which logged requests replay reads."""

    since: datetime | None = None
    """Only requests recorded at or after this instant (None: all)."""
    tenant: str | None = None
    """Only this tenant's requests (None: every tenant's)."""
    policy: str | None = None
    """Only requests routed by the policy of this name (None: any policy)."""

    def where(self) -> ColumnElement[bool]:
        """The window as a SQL condition on ``requests``."""
        conditions: list[ColumnElement[bool]] = [true()]
        if self.since is not None:
            conditions.append(Request.created_at >= self.since)
        if self.tenant is not None:
            conditions.append(Request.tenant == self.tenant)
        if self.policy is not None:
            conditions.append(Request.policy == self.policy)
        return and_(*conditions)


@dataclass(frozen=True, slots=True)
class Survey:
    """The window's requests counted before anything is streamed."""

    by_version: dict[str | None, int]
    """Requests per feature version (None: no numbers kept: a text model, or older rows)."""
    decided: dict[str, int]
    """Of those with numbers, per version, the ones decided by score (a propensity and a first
    tier: the rest failed before any tier was called, or skipped routing)."""
    explored: tuple[tuple[str, str | None, str | None], ...]
    """``(workload, decided tier, first tier)`` of each kind of explored request."""

    @property
    def total(self) -> int:
        """Every request in the window."""
        return sum(self.by_version.values())


@dataclass(frozen=True, slots=True)
class ReplayChunk:
    """A chunk of logged requests, column by column."""

    feature_texts: tuple[str, ...]
    """The scorer's numbers as the ledger keeps them (JSON), one per request: parsed by
    :meth:`features`, which a caller may run off the event loop."""
    feature_version: str
    workload: list[str]
    first_tier: list[str]
    decided_tier: list[str | None]
    propensity: npt.NDArray[np.float64]
    cost_usd: npt.NDArray[np.float64]
    useful_tokens: npt.NDArray[np.float64]
    escalated: npt.NDArray[np.bool_]
    """A stronger tier was asked after an answer was rejected."""
    good: npt.NDArray[np.bool_]
    """Answered (status ok) and not marked useless."""

    def __len__(self) -> int:
        return len(self.workload)

    def features(self, width: int) -> npt.NDArray[np.float32]:
        """The scorer's numbers as a float32 matrix, ``width`` to a row
        (:func:`parse_features`)."""
        return parse_features(self.feature_texts, self.feature_version, width)


async def survey(engine: AsyncEngine, window: ReplayWindow) -> Survey:
    """Count the window's requests by feature version, and read where exploration went."""
    decided = and_(Request.propensity.is_not(None), Request.first_tier.is_not(None))
    counts = (
        select(Request.feature_version, decided.label("decided"), func.count())
        .where(window.where())
        .group_by(Request.feature_version, decided)
    )
    explored = (
        select(Request.workload, Request.decided_tier, Request.first_tier)
        .where(window.where(), Request.explored.is_(True))
        .group_by(Request.workload, Request.decided_tier, Request.first_tier)
    )
    by_version: dict[str | None, int] = {}
    by_decided: dict[str, int] = {}
    async with engine.connect() as conn:
        for version, was_decided, count in (await conn.execute(counts)).all():
            by_version[version] = by_version.get(version, 0) + count
            if version is not None and was_decided:
                by_decided[version] = by_decided.get(version, 0) + count
        reach = tuple((w, d, t) for w, d, t in (await conn.execute(explored)).all())
    return Survey(by_version, by_decided, reach)


async def policies_in(engine: AsyncEngine, window: ReplayWindow) -> dict[str, int]:
    """Requests per policy name in the window, whatever ``window.policy`` says (for errors)."""
    anyone = ReplayWindow(since=window.since, tenant=window.tenant)
    query = select(Request.policy, func.count()).where(anyone.where()).group_by(Request.policy)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {str(name): int(count) for name, count in rows}


async def stream_rows(
    engine: AsyncEngine,
    window: ReplayWindow,
    feature_version: str,
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> AsyncIterator[ReplayChunk]:
    """The window's requests of ``feature_version`` decided by score, ``chunk_rows`` at a time
    through a server-side cursor."""
    escalated = exists().where(
        Attempt.request_id == Request.request_id, Attempt.role == "escalation"
    )
    good = and_(Request.status == "ok", Request.useless.is_(False))
    query = select(
        Request.features,
        Request.workload,
        Request.first_tier,
        Request.decided_tier,
        Request.propensity,
        cast(Request.cost_usd, Float),
        Request.useful_tokens,
        escalated.label("escalated"),
        good.label("good"),
    ).where(
        window.where(),
        Request.feature_version == feature_version,
        Request.propensity.is_not(None),
        Request.first_tier.is_not(None),
    )
    async with engine.connect() as conn:
        result = await conn.stream(query, execution_options={"yield_per": chunk_rows})
        async for rows in result.partitions():
            yield _chunk(rows, feature_version)


def _chunk(rows: Any, feature_version: str) -> ReplayChunk:
    features, workload, first, decided, propensity, cost, useful, escalated, good = zip(
        *rows, strict=True
    )
    return ReplayChunk(
        feature_texts=features,
        feature_version=feature_version,
        workload=list(workload),
        first_tier=list(first),
        decided_tier=list(decided),
        propensity=np.asarray(propensity, dtype=np.float64),
        cost_usd=np.asarray(cost, dtype=np.float64),
        useful_tokens=np.asarray(useful, dtype=np.float64),
        escalated=np.asarray(escalated, dtype=bool),
        good=np.asarray(good, dtype=bool),
    )


def parse_features(
    texts: tuple[str, ...] | list[str], feature_version: str, width: int
) -> npt.NDArray[np.float32]:
    """The ledger's JSON arrays of numbers as one float32 matrix (``len(texts)`` x ``width``):
    read as float64, as written (nine significant digits), so each comes back exactly. One
    ``json.loads`` of the chunk's numbers run together: the fastest parse measured here."""
    try:
        flat = json.loads("[" + ",".join(text.strip()[1:-1] for text in texts) + "]")
        values = np.fromiter(flat, dtype=np.float64, count=len(flat))
    except (ValueError, TypeError):  # not JSON, or not numbers
        values = np.zeros(0)
    if values.size != len(texts) * width:
        widths = sorted({text.count(",") + 1 for text in texts})
        raise LedgerError(
            f"the ledger's features of version {feature_version!r} are not rows of {width} "
            f"numbers (the model's input) but of {', '.join(map(str, widths))}, or hold "
            "something that is not a number: they were not written by that feature version"
        )
    return values.reshape(len(texts), width).astype(np.float32)
