"""Streaming straight through: the first tier that starts answering streams to the client.

Used when a policy sets ``escalation.streaming: passthrough``. Until the first chunk arrives a
failed call still spills like any other; after it, the client already has part of the answer, so
a broken stream ends with an explicit error event rather than a silently truncated 200. (With
``buffer``, the default, the proxy verifies a complete answer before the first byte instead.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cascade.core.decision import Decision
from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.run.router import Attempt, Role, Router, UpstreamError, payload_for
from cascade.tiers.base import JSON, Usage


@dataclass
class StreamRun:
    """A stream that has started on ``tier``; iterate :meth:`chunks` to relay it."""

    router: Router
    tier: Tier
    first: JSON
    rest: AsyncIterator[JSON]
    attempts: list[Attempt]
    role: Role = "primary"
    """How this tier came to stream: the decided tier, or a spill from it."""
    started: float = field(default_factory=time.perf_counter)
    """When the call to this tier began (its attempt's latency runs to the stream's end)."""
    _hold: ExitStack = field(default_factory=ExitStack)
    usage: Usage | None = None
    error: TierError | None = None

    async def chunks(self) -> AsyncIterator[JSON]:
        """The answer's chunks; on a broken stream, ``error`` is set and iteration just stops."""
        try:
            yield self.first
            self._note_usage(self.first)
            async for chunk in self.rest:
                self._note_usage(chunk)
                yield chunk
        except TierError as error:
            self.error = error
            self.router.health.failed(self.tier)
        finally:
            self._hold.close()
            self.attempts.append(self._attempt())

    @property
    def cost_usd(self) -> Decimal:
        """Money spent on the request so far (all attempts)."""
        return sum((a.cost_usd for a in self.attempts), Decimal(0))

    def _note_usage(self, chunk: Mapping[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, Mapping) and isinstance(usage.get("completion_tokens"), int):
            details = usage.get("prompt_tokens_details") or {}
            self.usage = Usage(
                int(usage.get("prompt_tokens") or 0),
                usage["completion_tokens"],
                int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0,
            )

    def _attempt(self) -> Attempt:
        role = self.role
        usage = self.usage
        rates = self.router.rates(self.tier)
        cost = Decimal(0)
        if usage is not None and rates is not None:
            cached = min(usage.cached_tokens, usage.prompt_tokens)
            cost = rates.cost(usage.prompt_tokens, usage.completion_tokens, cached)
        latency = time.perf_counter() - self.started
        if self.error is None:
            return Attempt(
                self.tier.name, self.tier.model, role, "ok", None, None, usage, cost, latency
            )
        reason = f"stream broke after it started: {self.error}"
        return Attempt(
            self.tier.name,
            self.tier.model,
            role,
            "error",
            reason,
            self.error.kind,
            usage,
            cost,
            latency,
        )


async def open_stream(router: Router, request: Mapping[str, Any], decision: Decision) -> StreamRun:
    """Start streaming on the decided tier, spilling until one tier sends its first chunk."""
    payload = payload_for(request, decision)
    payload["stream_options"] = {"include_usage": True}  # usage prices the request
    allowed = router.allowed(decision.workload)
    spill = router.policy.workloads[decision.workload].spill
    attempts: list[Attempt] = []
    current: Tier | None = router.policy.tier(decision.tier)
    role: Role = "spill" if decision.spilled_from else "primary"
    last: TierError | None = None
    while current is not None and len(attempts) < router.policy.escalation.max_attempts:
        tier = current
        client = router.clients.get(tier.kind)
        hold = ExitStack()
        hold.enter_context(router.capacity.track(tier.name))
        started = time.perf_counter()
        try:
            if client is None:
                raise TierError(tier.name, "connection", f"no client for {tier.kind} tiers")
            rest = client.stream(tier, payload)
            first = await anext(rest)
        except (TierError, StopAsyncIteration) as exc:
            hold.close()
            error = (
                exc
                if isinstance(exc, TierError)
                else TierError(tier.name, "bad_response", "the stream ended before its first chunk")
            )
            router.health.failed(tier)
            attempts.append(
                Attempt(
                    tier.name,
                    tier.model,
                    role,
                    "error",
                    str(error),
                    error.kind,
                    None,
                    Decimal(0),
                    time.perf_counter() - started,
                )
            )
            if not error.spillable:
                raise UpstreamError(error, attempts) from None
            last, role, current = error, "spill", router.spill_target(tier, allowed, spill)
            continue
        router.health.succeeded(tier)
        return StreamRun(router, tier, first, rest, attempts, role, started, hold)
    assert last is not None
    raise UpstreamError(last, attempts)
