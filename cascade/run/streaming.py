"""Streaming straight through: the first tier that starts answering streams to the client.

Used when a policy sets ``escalation.streaming: passthrough``; :meth:`Router.stream
<cascade.run.router.Router.stream>` spills like any call until a tier sends its first chunk, then
hands back a :class:`StreamRun`. After that the client already has part of the answer, so a
broken stream ends with an explicit error (``error``) rather than a silently truncated 200. (With
``buffer``, the default, the proxy verifies a complete answer before the first byte instead.)

However the relay ends — finished, broken by the tier, or abandoned by the client — the run
closes the tier's stream, gives back its place in the tier's in-flight count and appends the
streaming tier's attempt, priced from the stream's usage (estimated from the text when the tier
sent none).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import ExitStack
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.run.attempts import CLIENT_GONE, Attempt, Role, total_cost
from cascade.tiers.base import JSON, Usage, estimate_usage, parse_usage

if TYPE_CHECKING:
    from cascade.run.router import Router


class StreamRun:
    """A stream that has started on ``tier``; iterate :meth:`chunks` (once) to relay it."""

    def __init__(
        self,
        router: Router,
        tier: Tier,
        role: Role,
        *,
        first: JSON,
        rest: Any,
        hold: ExitStack,
        attempts: list[Attempt],
        started: float,
        payload: Mapping[str, Any],
        workload: str | None = None,
    ) -> None:
        self.router = router
        self.tier = tier
        self.role: Role = role
        """How this tier came to stream: the decided tier, or a spill from it."""
        self.attempts = attempts
        """Every call of the request; the streaming tier's is added when the relay ends."""
        self.error: TierError | None = None
        """Why the tier's stream broke after it started (None: it did not)."""
        self.finished = False
        """The tier's stream ran to its end and every chunk was handed on."""
        self._first = first
        self._rest = rest
        self._hold: ExitStack | None = hold
        self._started = started
        self._payload = payload
        self._workload = workload
        self._usage: Usage | None = None
        self._text: list[str] = []

    @property
    def client_gone(self) -> bool:
        """The relay ended before the stream did, and not because the tier broke it."""
        return self._hold is None and not self.finished and self.error is None

    @property
    def cost_usd(self) -> Decimal:
        """Money spent on the request so far (all attempts)."""
        return total_cost(self.attempts)

    async def chunks(self) -> AsyncGenerator[JSON, None]:
        """The answer's chunks; on a broken stream, ``error`` is set and iteration just stops."""
        try:
            self._note(self._first)
            yield self._first
            async for chunk in self._rest:
                self._note(chunk)
                yield chunk
            self.finished = True
        except TierError as error:
            self.error = error
            self.router.health.failed(self.tier, error)
        finally:
            await self._end()

    async def aclose(self) -> None:
        """End the run where it stands (closing the tier's stream if still open); idempotent.
        What a caller does that will not, or can no longer, iterate :meth:`chunks`."""
        await self._end()

    async def _end(self) -> None:
        hold, self._hold = self._hold, None
        if hold is None:
            return
        try:
            close = getattr(self._rest, "aclose", None)
            if close is not None and not self.finished:
                await close()  # drop the tier's connection: nobody reads the rest
        finally:
            hold.close()
            self.attempts.append(self._attempt())

    def _note(self, chunk: Mapping[str, Any]) -> None:
        usage = parse_usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self._text.append(content)

    def _attempt(self) -> Attempt:
        usage = self._usage or estimate_usage(self._payload, "".join(self._text))
        latency = time.perf_counter() - self._started
        reason: str | None = None
        error_class: str | None = None
        if self.error is not None:
            reason, error_class = f"stream broke after it started: {self.error}", self.error.kind
        elif not self.finished:
            reason, error_class = "the client went away before the stream ended", CLIENT_GONE
        return self.router.pricer.attempt(
            self.tier,
            self.role,
            "ok" if error_class is None else "error",
            usage=usage,
            latency_s=latency,
            reason=reason,
            error_class=error_class,
            workload=self._workload,
        )
