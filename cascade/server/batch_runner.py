"""The Batch API's runner: a background task of every proxy that runs queued batch requests.

Each replica claims requests under a lease (:meth:`~cascade.ledger.batches.BatchStore.claim`),
runs each through the same router path as ``POST /v1/chat/completions`` (plan with the policy's
``batch`` workload when it has one, then ``Router.run``), and stores the answer together with its
ledger rows in one transaction, keyed by the batch request's own id: a request is completed and
recorded once, whichever replica ran it. While a request runs its lease is renewed; when a replica
dies its leases lapse and another replica (or the restarted one) runs what it never completed.
A clean shutdown gives its unfinished requests back to the queue at once.

What to take now is :meth:`BatchRunner.free_slots`' to say: today, whatever the concurrency
limit leaves free. Filling only the self-hosted tiers' spare capacity, yielding to interactive
traffic, and sending work to an API tier as a batch's deadline nears are the next step (issue 17,
item 2), and belong there.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

import orjson
import structlog

from cascade.core.decision import Decision
from cascade.core.request import parse_chat_request
from cascade.errors import InvalidRequestError, RoutingError
from cascade.ledger import LedgerEntry, create_engine
from cascade.ledger.batches import BatchStore, Claimed
from cascade.run.attempts import Attempt, UpstreamError
from cascade.server.metrics import Metrics
from cascade.server.openai_format import BadRequestError, error_body
from cascade.server.proxy import Proxy
from cascade.server.recording import attempt_records, request_record

log = structlog.get_logger("cascade.batches")

BATCH_WORKLOAD = "batch"
"""The workload batch requests run as, when their policy defines it (else its default)."""
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
    ) -> None:
        self.proxy = proxy
        self.store = store
        self.metrics = metrics
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease_s)
        self.poll_s = poll_s
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._running: dict[str, asyncio.Task[None]] = {}
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
        """How many more batch requests to take now: the seam where deferred work will yield to
        interactive traffic and follow the self-hosted tiers' spare capacity (issue 17, item 2);
        today only the concurrency limit bounds it."""
        return self.concurrency - len(self._running)

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
        for claimed in await self.store.claim(self.worker, self.free_slots(), self.lease):
            if not self._running:
                self._renewed = time.monotonic()
            self._running[claimed.id] = asyncio.create_task(self._run(claimed))
        for batch_id in await self.store.finalize():
            log.info("batch.finished", batch_id=batch_id)

    async def _run(self, claimed: Claimed) -> None:
        try:
            await self._complete(claimed)
        except Exception:  # its lease lapses and it runs again
            log.exception("batch.request_crashed", request_id=claimed.id)
        finally:
            self._running.pop(claimed.id, None)
            self._wake.set()

    async def _complete(self, claimed: Claimed) -> None:
        started = time.perf_counter()
        attempts: list[Attempt] = []
        decision: Decision | None = None
        final_tier: str | None = None
        try:
            chat = parse_chat_request(orjson.dumps(claimed.body))
            router, pinned = self.proxy.resolve(chat.model)
            workload = BATCH_WORKLOAD if BATCH_WORKLOAD in router.policy.workloads else None
            decision = await router.plan(
                chat, workload=workload, tier=pinned, only_tiers=claimed.only_tiers
            )
            completion = await router.run(chat, decision, request_id=claimed.id, attempts=attempts)
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
            )
            entry = LedgerEntry(record, attempt_records(attempts))
        stored = await self.store.complete(
            claimed.id, ok=status == 200, status_code=status, body=body, entry=entry
        )
        if stored and decision is not None:
            last = final_tier or (attempts[-1].tier if attempts else decision.tier)
            self.metrics.record(decision.policy, last, "ok" if status == 200 else "error", attempts)


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
    )
    if settings.batch_concurrency > 0:
        runner.start()
    try:
        yield store
    finally:
        await runner.aclose()
        await store.aclose()
