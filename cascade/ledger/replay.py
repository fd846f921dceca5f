"""``cascade replay``: what a candidate policy would do on the traffic the proxy logged.

Offline: the proxy never imports it (it lives with the ledger's other readers, as the package's
layering lets a ledger module use the scorer but no training module read the ledger). For every
logged request of the window that kept the scorer's numbers in the candidate scorer model's
feature version, the candidate's model scores the stored numbers again (in chunks,
:meth:`~cascade.model.scorer.OnnxScorer.score_rows`) and the candidate's thresholds pick a tier
among those the request's workload allows -- with capacity ignored: no tier is ever full in a
replay, and a caller's key narrowing is not logged.
The candidate's tier mix on those requests is then exact; its cost, cost per useful token,
escalation rate and good-answer rate are estimated by :mod:`cascade.ledger.off_policy` from
the logged outcomes and their propensities, beside the logged policy's measured figures on the
same requests. Requests without numbers (a text model's, or rows older than the ledger's
migration 0008), of another feature version, not decided by score, or of a workload the
candidate lacks are counted, never silently dropped.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.errors import LedgerError, ScorerError
from cascade.ledger.database import run_with_engine
from cascade.ledger.off_policy import ExplorationReach, OffPolicyEstimate, OffPolicyEstimator
from cascade.ledger.replay_rows import (
    CHUNK_ROWS,
    ReplayChunk,
    ReplayWindow,
    Survey,
    policies_in,
    stream_rows,
    survey,
)
from cascade.model.scorer import OnnxScorer
from cascade.policy.model import Policy

__all__ = ["ReplayResult", "choose_tiers", "replay_policy"]

CAPACITY_NOTE = (
    "capacity is ignored: the candidate's tiers are never full in a replay, so spills and "
    "queues it would cause are not in the estimate"
)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """A candidate replayed on logged traffic: what it decides (exact), what that would give
    (estimated), and what was left out and why."""

    candidate: str
    """The candidate policy's name."""
    candidate_version: str
    """Its fingerprint."""
    model: str
    """The candidate's scorer model."""
    feature_version: str
    window: ReplayWindow
    requests: int
    """Requests in the window, replayed or not."""
    replayed: int
    """Requests re-decided and fed to the estimator."""
    left_out: dict[str, int]
    """Requests not replayed, by why (in words)."""
    tiers: dict[str, int]
    """The candidate's first tier over the replayed requests (exact)."""
    logged_tiers: dict[str, int]
    """The logged first tier over the same requests."""
    changed: int
    """Replayed requests whose candidate tier differs from the logged thresholds' tier."""
    estimate: OffPolicyEstimate
    notes: tuple[str, ...] = field(default=(CAPACITY_NOTE,))


def replay_policy(
    url: str | None,
    candidate: Policy,
    *,
    since: datetime | None = None,
    tenant: str | None = None,
    logged_policy: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    scorer: OnnxScorer | None = None,
) -> ReplayResult:
    """Replay ``candidate`` on the ledger at ``url`` (None: ``$CASCADE_DATABASE_URL``, else
    ``./cascade.db``): the requests since ``since`` (None: all) of ``tenant`` (None: every
    tenant) routed by the policy named ``logged_policy`` (None: the candidate's own name).

    ``scorer``: the candidate's scorer model, already open (default: opened from the policy).
    Raises :class:`~cascade.errors.ScorerError` for a text model (it keeps no numbers to
    replay) and :class:`~cascade.errors.LedgerError` when no request can be replayed, naming
    the policies or feature versions the window holds.
    """
    model = scorer or OnnxScorer(candidate.scorer.model, device=candidate.scorer.device)
    version = model.feature_version
    if version is None:
        raise ScorerError(
            f"policy {candidate.name!r}: its scorer model {candidate.scorer.model!r} reads "
            "text, and the ledger keeps no prompts: only a model that reads numbers "
            "(prompt features) can be replayed on logged traffic"
        )
    window = ReplayWindow(since, tenant, logged_policy or candidate.name)
    width = model.manifest.input.shape[-1] or 0

    async def run(engine: AsyncEngine) -> ReplayResult:
        counted = await survey(engine, window)
        if not counted.decided.get(version):
            raise LedgerError(await _nothing_to_replay(engine, window, counted, version))
        replay = _Replay(candidate, model, ExplorationReach(counted.explored), width)
        # Each chunk is parsed, scored and counted on a worker thread while the event loop
        # fetches the next one: the database and the driver work meanwhile (one chunk ahead).
        working: asyncio.Future[None] | None = None
        async for chunk in stream_rows(engine, window, version, chunk_rows=chunk_rows):
            if working is not None:
                await working
            working = asyncio.ensure_future(asyncio.to_thread(replay.add, chunk))
        if working is not None:
            await working
        return replay.result(counted, window, version)

    return run_with_engine(url, run, existing=True)


class _Replay:
    """The running state of one replay: the estimator and the exact counts."""

    def __init__(
        self, candidate: Policy, scorer: OnnxScorer, reach: ExplorationReach, width: int
    ) -> None:
        self.candidate, self.scorer, self.reach, self.width = candidate, scorer, reach, width
        self.estimator = OffPolicyEstimator()
        self.tiers: Counter[str] = Counter()
        self.logged: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()  # rows by workload the candidate lacks
        self.changed = 0

    def add(self, chunk: ReplayChunk) -> None:
        confidence = self.scorer.score_rows(chunk.features(self.width))
        tiers = choose_tiers(self.candidate, chunk.workload, confidence)
        keep = np.asarray([t is not None for t in tiers], dtype=bool)
        if not keep.all():
            self.unknown.update(w for w, k in zip(chunk.workload, keep, strict=True) if not k)
        rows = np.flatnonzero(keep)
        workload = [chunk.workload[i] for i in rows]
        decided = [chunk.decided_tier[i] for i in rows]
        first = [chunk.first_tier[i] for i in rows]
        chosen = [tiers[i] for i in rows]
        self.estimator.add_chunk(
            logged_tier=first,
            propensity=chunk.propensity[rows],
            candidate_tier=chosen,
            decided_tier=decided,
            explorable=self.reach.mask(workload, decided, chosen),
            cost_usd=chunk.cost_usd[rows],
            useful_tokens=chunk.useful_tokens[rows],
            escalated=chunk.escalated[rows],
            good=chunk.good[rows],
        )
        self.tiers.update(t for t in chosen if t is not None)
        self.logged.update(first)
        self.changed += sum(1 for c, d in zip(chosen, decided, strict=True) if c != d)

    def result(self, counted: Survey, window: ReplayWindow, version: str) -> ReplayResult:
        estimate = self.estimator.result()
        return ReplayResult(
            candidate=self.candidate.name,
            candidate_version=self.candidate.fingerprint,
            model=self.scorer.manifest.name,
            feature_version=version,
            window=window,
            requests=counted.total,
            replayed=estimate.rows,
            left_out=_left_out(counted, version, self.unknown),
            tiers=dict(self.tiers.most_common()),
            logged_tiers=dict(self.logged.most_common()),
            changed=self.changed,
            estimate=estimate,
        )


def choose_tiers(
    policy: Policy, workloads: Sequence[str], confidence: npt.NDArray[np.float64]
) -> list[str | None]:
    """Each row's tier under ``policy``'s thresholds, as
    :func:`~cascade.core.decision.by_confidence` chooses it among the tiers the row's workload
    allows (capacity ignored); None for a workload the policy does not have."""
    names = np.asarray(workloads, dtype=object)
    chosen = np.full(len(names), None, dtype=object)
    for name in set(workloads):
        settings = policy.workloads.get(name)
        if settings is None:
            continue
        allowed = [t for t in policy.tiers if settings.tiers is None or t.name in settings.tiers]
        rows = np.flatnonzero(names == name)
        picked = np.full(len(rows), allowed[-1].name, dtype=object)
        scores = confidence[rows]
        for tier in reversed(allowed[:-1]):  # the cheapest tier whose threshold is cleared wins
            picked[scores >= tier.threshold] = tier.name
        chosen[rows] = picked
    return list(chosen)


def _left_out(counted: Survey, version: str, unknown: Counter[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    if none := counted.by_version.get(None, 0):
        out["no features kept (a text model's, or recorded before the ledger kept them)"] = none
    for other, count in sorted((v, c) for v, c in counted.by_version.items() if v is not None):
        if other != version:
            out[f"features of another version ({other})"] = count
    if undecided := counted.by_version.get(version, 0) - counted.decided.get(version, 0):
        out["not decided by score (no tier called, or a model asked for by name)"] = undecided
    for workload, count in sorted(unknown.items()):
        out[f"workload {workload!r}, which the candidate does not have"] = count
    return out


async def _nothing_to_replay(
    engine: AsyncEngine, window: ReplayWindow, counted: Survey, version: str
) -> str:
    where = " since " + window.since.isoformat() if window.since is not None else ""
    if window.tenant is not None:
        where += f" of tenant {window.tenant!r}"
    if not counted.total:
        found = await policies_in(engine, window)
        logged = ", ".join(f"{name} ({count})" for name, count in sorted(found.items()))
        return f"no requests routed by policy {window.policy!r}{where} in the ledger" + (
            f"; it holds requests of: {logged} (name one with --logged)" if found else ""
        )
    versions = ", ".join(
        f"{v if v is not None else 'none kept'} ({c})"
        for v, c in sorted(
            counted.by_version.items(), key=lambda item: (item[0] is None, item[0] or "")
        )
    )
    return (
        f"none of the {counted.total} requests of policy {window.policy!r}{where} can be "
        f"replayed with the candidate's model, which reads features {version!r}: the requests' "
        f"features are {versions}; replay a model of a feature version they have, or log "
        "traffic with this one first"
    )
