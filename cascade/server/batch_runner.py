"""The Batch API's runner: a background task of every proxy that runs queued batch requests.

Each replica claims requests under a lease (:meth:`~cascade.ledger.batches.BatchStore.claim`),
runs each through the same router path as ``POST /v1/chat/completions`` (plan with the policy's
``batch`` workload when it has one, then ``Router.run``), and stores the answer together with its
ledger rows in one transaction, keyed by the batch request's own id: a request is completed and
recorded once, whichever replica ran it. While a request runs its lease is renewed; when a replica
dies its leases lapse and another replica (or the restarted one) runs what it never completed.
A clean shutdown gives its unfinished requests back to the queue at once.

Where deferred work runs (:mod:`cascade.server.batch_schedule`): on the self-hosted tiers only,
while they have spare slots (:meth:`BatchRunner.free_slots`); each request is narrowed to the
tiers with room when it is planned, and given back unrun (not counted as an attempt) when none
has. While interactive requests wait in this proxy for a slot of those tiers, the runner takes
nothing and cuts as many of its deferred calls as requests wait, newest first, giving them back
to the queue: a cut call's work so far is lost, but its slot passes to the waiting request at
once (the next step of the runner, at most ``batch_poll_s`` later). A batch within
``batch_deadline_margin_s`` of its deadline is taken whatever the room and routed with every
tier its caller may use, API tiers included; its calls are not cut.

An upstream failure (the tier saturated, 429, 5xx, a timeout) gives the request back to the
queue with a backoff (``batch_retry_backoff_s`` doubled each attempt) until
``batch_max_attempts`` claims have failed, then fails it into the error file; a saturated tier
does not count as an attempt. A client error (4xx) fails it at once. Only the final outcome is
recorded in the ledger, once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from datetime import timedelta

import orjson
import structlog

from cascade.core.decision import Decision
from cascade.core.request import parse_chat_request
from cascade.errors import InvalidRequestError, RoutingError
from cascade.ledger import LedgerEntry, create_engine
from cascade.ledger.batch_results import now
from cascade.ledger.batches import BatchStore, Claimed
from cascade.policy.model import Policy, Tier
from cascade.run.attempts import Attempt, UpstreamError
from cascade.server.batch_schedule import BATCH_WORKLOAD, batch_tiers, rooms, waiting
from cascade.server.metrics import Metrics
from cascade.server.openai_format import BadRequestError, error_body
from cascade.server.proxy import Proxy
from cascade.server.recording import attempt_records, request_record
from cascade.server.shadow import ShadowDecision

log = structlog.get_logger("cascade.batches")

# An upstream failure's status, as the chat route answers it.
_UPSTREAM_STATUS = {"timeout": 504, "saturated": 503, "rate_limited": 503, "unavailable": 503}


class BatchRunner:
    """Claims, runs and completes batch requests, at most ``concurrency`` at a time."""

    def __init__(
        self,
        proxy: Proxy,
        store: BatchStore,
        metrics: Metrics,
        *,
        concurrency: int,
        lease_s: float,
        poll_s: float,
        headroom: float = 0.25,
        deadline_margin_s: float = 1800.0,
        max_attempts: int = 5,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self.proxy = proxy
        self.store = store
        self.metrics = metrics
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease_s)
        self.poll_s = poll_s
        self.headroom = headroom
        self.margin = timedelta(seconds=deadline_margin_s)
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._yielding: set[str] = set()
        """Running requests on the self-hosted tiers alone: cut when interactive traffic waits."""
        self._cut: set[str] = set()
        self._wake = asyncio.Event()
        self._renewed = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start claiming work in the background."""
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    async def aclose(self) -> None:
        """Stop claiming, cut the requests running and give them back to the queue unrun."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        try:
            await self.store.release(self.worker, list(self._running))
        except Exception:  # the leases lapse instead: another replica takes them later
            log.exception("batch.release_failed", worker=self.worker)

    def free_slots(self) -> int:
        """How many more deferred requests to take now for the self-hosted tiers: what the
        concurrency limit leaves, and no more than their spare slots; none while interactive
        requests wait for one of their slots."""
        left = self.concurrency - len(self._running)
        tiers = self._batch_tiers()
        if left <= 0 or waiting(tiers, self.proxy.capacity):
            return 0
        found = rooms(tiers, self.proxy.capacity, self.proxy.engines, self.headroom)
        return min(left, sum(r.spare for r in found))

    def _batch_tiers(self) -> list[Tier]:
        return batch_tiers(router.policy for router in self.proxy.routers.values())

    def _yield_to_interactive(self) -> None:
        """Cut as many deferred calls as interactive requests wait for a slot, newest first."""
        queued = waiting(self._batch_tiers(), self.proxy.capacity)
        for request_id in reversed([r for r in self._running if r in self._yielding]):
            if queued <= 0:
                break
            if request_id not in self._cut:
                self._cut.add(request_id)
                self._running[request_id].cancel()
                queued -= 1

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # the database is out of reach: try again at the next poll
                log.exception("batch.step_failed", worker=self.worker)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def step(self) -> None:
        """One round: renew leases, expire and cancel, claim what fits, end finished batches."""
        lease_s = self.lease.total_seconds()
        if self._running and time.monotonic() - self._renewed > lease_s / 3:
            await self.store.renew(self.worker, list(self._running), self.lease)
            self._renewed = time.monotonic()
        await self.store.sweep()
        self._yield_to_interactive()
        urgent = await self.store.claim(
            self.worker,
            self.concurrency - len(self._running),
            self.lease,
            expiring_within=self.margin,
        )
        self._start(urgent)
        self._start(await self.store.claim(self.worker, self.free_slots(), self.lease))
        for batch_id in await self.store.finalize():
            log.info("batch.finished", batch_id=batch_id)

    def _start(self, claimed: list[Claimed]) -> None:
        for request in claimed:
            if not self._running:
                self._renewed = time.monotonic()
            self._running[request.id] = asyncio.create_task(self._run(request))

    async def _run(self, claimed: Claimed) -> None:
        try:
            await self._complete(claimed)
        except asyncio.CancelledError:
            if claimed.id not in self._cut:
                raise  # shutting down: aclose gives it back
            log.info("batch.yielded", request_id=claimed.id)
            await self.store.requeue(self.worker, claimed.id, delay=timedelta(), counted=False)
        except Exception:  # its lease lapses and it runs again
            log.exception("batch.request_crashed", request_id=claimed.id)
        finally:
            self._running.pop(claimed.id, None)
            self._yielding.discard(claimed.id)
            self._cut.discard(claimed.id)
            self._wake.set()

    def _tiers_for(self, claimed: Claimed, policy_tiers: frozenset[str]) -> frozenset[str]:
        """The self-hosted tiers of ``policy_tiers`` with room now that the caller may use."""
        found = rooms(self._batch_tiers(), self.proxy.capacity, self.proxy.engines, self.headroom)
        spare = frozenset(r.tier for r in found if r.spare > 0) & policy_tiers
        return spare if claimed.only_tiers is None else spare & claimed.only_tiers

    async def _retry(self, claimed: Claimed, exc: UpstreamError) -> bool:
        """Give the request back for a later attempt after an upstream failure (True), unless it
        is a client error or its attempts are spent."""
        if exc.kind == "client_error" or claimed.attempts >= self.max_attempts:
            return False
        counted = exc.kind != "saturated"
        delay = self.retry_backoff_s * 2 ** (claimed.attempts - 1) if counted else self.poll_s
        log.info("batch.retry", request_id=claimed.id, kind=exc.kind, delay_s=delay)
        await self.store.requeue(
            self.worker, claimed.id, delay=timedelta(seconds=delay), counted=counted
        )
        return True

    async def _complete(self, claimed: Claimed) -> None:
        started = time.perf_counter()
        attempts: list[Attempt] = []
        decision: Decision | None = None
        shadow: ShadowDecision | None = None
        final_tier: str | None = None
        try:
            chat = parse_chat_request(orjson.dumps(claimed.body))
            router, pinned = self.proxy.resolve(chat.model)
            workload = batch_workload(router.policy)
            left = claimed.expires_at - now()
            only = claimed.only_tiers
            if left > self.margin:
                only = self._tiers_for(
                    claimed, frozenset(t.name for t in batch_tiers([router.policy]))
                )
                if not only:  # the room went to interactive traffic since the claim
                    await self.store.requeue(
                        self.worker, claimed.id, delay=timedelta(), counted=False
                    )
                    return
                self._yielding.add(claimed.id)
            decision = await router.plan(chat, workload=workload, tier=pinned, only_tiers=only)
            if self.proxy.shadows and pinned is None:  # decided beside it, never acted on
                shadow = await self.proxy.shadows.decide(
                    router.policy,
                    chat,
                    decision,
                    workload=batch_workload,
                    only_tiers=only,
                    counter=self.metrics,
                    request_id=claimed.id,
                )
            if left <= self.margin:
                note = (
                    f"; deferred: deadline in {left.total_seconds():.0f} s (within "
                    f"batch_deadline_margin_s {self.margin.total_seconds():g}), every tier allowed"
                )
                decision = replace(decision, reason=decision.reason + note)
            completion = await router.run(chat, decision, request_id=claimed.id, attempts=attempts)
            self._yielding.discard(claimed.id)  # answered: its result is stored, never cut
            status, body, final_tier = 200, completion.body, completion.tier
        except BadRequestError as exc:
            status, body = (
                exc.status,
                error_body(exc.status, exc.message, param=exc.param, code=exc.code),
            )
        except RoutingError as exc:
            param = exc.param if isinstance(exc, InvalidRequestError) else None
            status, body = 400, error_body(400, str(exc), param=param)
        except UpstreamError as exc:
            self._yielding.discard(claimed.id)  # its result is being stored: no longer cut
            if await self._retry(claimed, exc):
                return
            status = (
                exc.status
                if exc.kind == "client_error" and exc.status
                else _UPSTREAM_STATUS.get(exc.kind, 502)
            )
            body = error_body(status, f"no tier could answer: {exc}", code=exc.kind)
        entry = None
        if decision is not None:  # refused before routing: no tier was called, nothing to record
            record = request_record(
                request_id=claimed.id,
                decision=decision,
                attempts=attempts,
                final_tier=final_tier,
                http_status=status,
                latency_ms=(time.perf_counter() - started) * 1000,
                tenant=claimed.tenant,
                stream=False,
                key_id=claimed.key_id,
                shadow=shadow,
            )
            entry = LedgerEntry(record, attempt_records(attempts))
        stored = await self.store.complete(
            claimed.id, ok=status == 200, status_code=status, body=body, entry=entry
        )
        if stored and decision is not None:
            last = final_tier or (attempts[-1].tier if attempts else decision.tier)
            self.metrics.record(decision.policy, last, "ok" if status == 200 else "error", attempts)


def batch_workload(policy: Policy) -> str | None:
    """The workload a batch request is planned as under ``policy``: its ``batch`` workload when
    it has one, else its default."""
    return BATCH_WORKLOAD if BATCH_WORKLOAD in policy.workloads else None


@asynccontextmanager
async def running_batches(proxy: Proxy, metrics: Metrics) -> AsyncIterator[BatchStore | None]:
    """The Batch API's store and runner for the proxy's lifespan (None: no database, so no
    Batch API); stopping it gives the runner's unfinished requests back to the queue."""
    settings = proxy.settings
    if settings.database_url is None:
        yield None
        return
    store = BatchStore(create_engine(settings.database_url))
    runner = BatchRunner(
        proxy,
        store,
        metrics,
        concurrency=settings.batch_concurrency,
        lease_s=settings.batch_lease_s,
        poll_s=settings.batch_poll_s,
        headroom=settings.batch_headroom,
        deadline_margin_s=settings.batch_deadline_margin_s,
        max_attempts=settings.batch_max_attempts,
        retry_backoff_s=settings.batch_retry_backoff_s,
    )
    if settings.batch_concurrency > 0:
        runner.start()
    try:
        yield store
    finally:
        await runner.aclose()
        await store.aclose()
