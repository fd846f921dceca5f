"""Per-key rate limits (requests and tokens per minute), shared by every worker and replica.

Each worker spends blocks of a key's minute that it leased from the ledger's database
(:mod:`cascade.ledger.rate_windows`): admitting a request is a dict lookup and two subtractions,
and a database statement only when the block runs out (about one per tenth of the limit). A
request counts its prompt tokens plus the output it may produce (``max_tokens``, else the
workload's expected output), as OpenAI counts it. Refusals are OpenAI's 429 ``rate_limit_exceeded``
with ``Retry-After`` and the ``x-ratelimit-*`` headers, which every answer to a limited key carries.

When the database cannot be reached, requests are admitted (and ``ratelimit.store_unavailable``
is logged): a rate limit protects capacity, and refusing every keyed request during a database
outage would turn the outage into the proxy's. Budgets, which protect money, refuse instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.core.request import ChatRequest
from cascade.core.tokens import estimate_message_tokens
from cascade.ledger import create_engine
from cascade.ledger.rate_windows import lease_block
from cascade.run.router import Router
from cascade.server.auth import Caller
from cascade.server.openai_format import BadRequestError

__all__ = ["Admission", "RateLimiter", "admit", "open_rate_limits"]

_log = structlog.get_logger("cascade.ratelimit")
_BLOCKS_PER_MINUTE = 10
"""A lease takes a tenth of a minute's limit (at least what the request needs)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may go on, and the ``x-ratelimit-*`` headers to answer with."""

    allowed: bool
    headers: dict[str, str]
    retry_after_s: int = 0
    reason: str = ""
    kind: str = "requests"
    """Which limit refused it: ``requests`` or ``tokens`` (OpenAI's error type)."""


@dataclass
class _Window:
    """This worker's share of one key's current minute."""

    start: datetime
    requests: int = 0
    tokens: int = 0
    used_requests: int = 0
    """Requests the whole window had given out at this worker's last lease (all workers)."""
    used_tokens: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RateLimiter:
    """Admits requests of keys with ``rpm``/``tpm`` limits (one per worker process)."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Admission:
        """Take one request and ``tokens`` tokens of ``key_id``'s minute, or say when to retry."""
        if rpm is None and tpm is None:
            return Admission(True, {})
        now = self._clock()
        start = datetime.fromtimestamp(now - now % 60, UTC)
        window = self._windows.get(key_id)
        if window is None or window.start != start:
            window = self._windows[key_id] = _Window(start)
        tokens = max(tokens, 0)
        if tpm is not None and tokens > tpm:
            reason = f"this request may use {tokens} tokens, more than the key's {tpm} per minute"
            return Admission(False, self._headers(window, rpm, tpm, now), 60, reason, "tokens")
        if not self._covers(window, rpm, tpm, tokens):
            async with window.lock:
                if not self._covers(window, rpm, tpm, tokens) and self._may_lease(
                    window, rpm, tpm, tokens
                ):
                    await self._lease(key_id, window, rpm, tpm, tokens)
            if not self._covers(window, rpm, tpm, tokens):
                reset = max(1, math.ceil(60 - now % 60))
                what = "requests" if rpm is not None and window.requests < 1 else "tokens"
                reason = f"the key's {what} per minute are used up; retry in {reset} s"
                headers = self._headers(window, rpm, tpm, now)
                return Admission(False, headers, reset, reason, what)
        if rpm is not None:
            window.requests -= 1
        if tpm is not None:
            window.tokens -= tokens
        return Admission(True, self._headers(window, rpm, tpm, now))

    @staticmethod
    def _may_lease(window: _Window, rpm: int | None, tpm: int | None, tokens: int) -> bool:
        """Whether the minute may still have what this worker lacks (what the window had given
        out at this worker's last lease only grows): a key over its limit is refused without a
        database statement until its minute ends."""
        if rpm is not None and window.requests < 1 and window.used_requests >= rpm:
            return False
        return tpm is None or window.tokens + (tpm - window.used_tokens) >= tokens

    @staticmethod
    def _covers(window: _Window, rpm: int | None, tpm: int | None, tokens: int) -> bool:
        return (rpm is None or window.requests >= 1) and (tpm is None or window.tokens >= tokens)

    async def _lease(
        self, key_id: str, window: _Window, rpm: int | None, tpm: int | None, tokens: int
    ) -> None:
        want_requests = 0 if rpm is None else max(1, math.ceil(rpm / _BLOCKS_PER_MINUTE))
        want_tokens = 0 if tpm is None else max(tokens, math.ceil(tpm / _BLOCKS_PER_MINUTE))
        if rpm is not None and window.requests >= 1:
            want_requests = 0  # only tokens are short
        if tpm is not None and window.tokens >= tokens:
            want_tokens = 0
        try:
            lease = await lease_block(
                self._engine,
                key_id,
                window.start,
                requests=want_requests,
                tokens=want_tokens,
                rpm=rpm,
                tpm=tpm,
            )
        except (SQLAlchemyError, OSError) as exc:
            _log.warning("ratelimit.store_unavailable", key_id=key_id, error=type(exc).__name__)
            # Admit rather than refuse (see the module doc): lend this request what it needs.
            window.requests += 1 if rpm is not None else 0
            window.tokens += tokens if tpm is not None else 0
            return
        window.requests += lease.requests
        window.tokens += lease.tokens
        window.used_requests, window.used_tokens = lease.requests_used, lease.tokens_used

    @staticmethod
    def _headers(window: _Window, rpm: int | None, tpm: int | None, now: float) -> dict[str, str]:
        reset = f"{max(1, math.ceil(60 - now % 60))}s"
        headers: dict[str, str] = {}
        if rpm is not None:
            left = max(0, rpm - window.used_requests + window.requests)
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(min(left, rpm))
            headers["x-ratelimit-reset-requests"] = reset
        if tpm is not None:
            left = max(0, tpm - window.used_tokens + window.tokens)
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(min(left, tpm))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


@asynccontextmanager
async def open_rate_limits(url: str) -> AsyncIterator[RateLimiter]:
    """A :class:`RateLimiter` on the ledger's database at ``url`` (its engine closed after)."""
    engine = create_engine(url)
    try:
        yield RateLimiter(engine)
    finally:
        await engine.dispose()


async def admit(
    limiter: RateLimiter | None,
    caller: Caller,
    request: ChatRequest,
    router: Router,
    workload: str | None,
) -> dict[str, str]:
    """Admit ``request`` under its key's limits: the ``x-ratelimit-*`` headers for its answer,
    or OpenAI's 429 ``rate_limit_exceeded`` (type ``requests`` or ``tokens``) with
    ``Retry-After``. Tokens: the prompt's estimate plus the output it may produce."""
    if limiter is None or caller.key_id is None or (caller.rpm is None and caller.tpm is None):
        return {}
    output = request.max_output_tokens
    if output is None:
        name = workload if workload in router.policy.workloads else None
        output = router.policy.workloads[
            name or router.policy.default_workload
        ].expected_output_tokens
    tokens = estimate_message_tokens(request.messages, request.tools) + output
    admission = await limiter.admit(caller.key_id, caller.rpm, caller.tpm, tokens)
    if admission.allowed:
        return admission.headers
    raise BadRequestError(
        429,
        f"rate limit reached for this key: {admission.reason}",
        code="rate_limit_exceeded",
        kind=admission.kind,
        headers={**admission.headers, "retry-after": str(admission.retry_after_s)},
    )
