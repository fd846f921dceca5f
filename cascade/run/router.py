"""``cascade.Router``: the whole way of a request — plan, call, verify, escalate, spill.

:mod:`cascade.core.planner` decides before any model runs; the Router then calls the chosen tier and
keeps going until an answer passes: an answer that fails the policy's checks is *escalated* to the
next stronger tier, and a call that fails (saturated, 429, 503, 5xx, timeout, refused) *spills*
to the tier's overflow target, or else to the next stronger tier. Calls are bounded by the
policy's ``escalation.max_attempts``; a tier that keeps failing is skipped for its cool-down and
then tried again. Every call is an :class:`Attempt` with its tokens, cost and outcome.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from cascade.core.capacity import InFlightCounter
from cascade.core.decision import Decision
from cascade.core.planner import AsyncScorer, Planner
from cascade.core.pricing import Rates, tier_rates
from cascade.errors import TierError
from cascade.policy.model import Policy, Tier
from cascade.run.checks import find_problem
from cascade.tiers.base import TierAnswer, TierClient, Usage

Role = Literal["primary", "spill", "escalation"]


@dataclass(frozen=True)
class Attempt:
    """One call to one tier."""

    tier: str
    model: str
    role: Role
    outcome: Literal["ok", "rejected", "error"]
    reason: str | None
    """Why the answer was rejected, or how the call failed."""
    error_class: str | None
    usage: Usage | None
    cost_usd: Decimal
    latency_s: float


def describe_attempts(attempts: Sequence[Attempt]) -> str:
    """Attempts in one line: ``small:rejected(length),medium:error(timeout),big:ok``."""
    parts = []
    for attempt in attempts:
        why = attempt.error_class or (attempt.reason or "").split(":", 1)[0]
        parts.append(f"{attempt.tier}:{attempt.outcome}" + (f"({why})" if why else ""))
    return ",".join(parts)


@dataclass(frozen=True)
class Completion:
    """A finished request: the answer the client gets, and everything it took."""

    request_id: str
    decision: Decision
    body: dict[str, Any]
    tier: str
    model: str
    attempts: tuple[Attempt, ...]

    @property
    def cost_usd(self) -> Decimal:
        """All money spent on the request: every attempt, wasted ones too."""
        return sum((a.cost_usd for a in self.attempts), Decimal(0))


class UpstreamError(TierError):
    """No tier produced an answer; ``attempts`` says what was tried."""

    def __init__(self, last: TierError, attempts: Sequence[Attempt]) -> None:
        super().__init__(last.tier, last.kind, str(last).split(": ", 2)[-1], last.status)
        self.attempts = tuple(attempts)


@dataclass
class TierHealth:
    """Consecutive failures per tier, and until when a failing tier is skipped."""

    clock: Callable[[], float] = time.monotonic
    failures: dict[str, int] = field(default_factory=dict)
    skipped_until: dict[str, float] = field(default_factory=dict)

    def available(self, tier: Tier) -> bool:
        """False while the tier is cooling down after repeated failures."""
        return self.clock() >= self.skipped_until.get(tier.name, 0.0)

    def succeeded(self, tier: Tier) -> None:
        self.failures[tier.name] = 0

    def failed(self, tier: Tier) -> None:
        count = self.failures.get(tier.name, 0) + 1
        self.failures[tier.name] = count
        if count >= tier.max_failures:
            self.skipped_until[tier.name] = self.clock() + tier.cooldown_s
            self.failures[tier.name] = 0


class Router:
    """Runs requests under one policy through its tiers (async; share one per process)."""

    def __init__(
        self,
        planner: Planner,
        clients: Mapping[str, TierClient],
        *,
        batcher: AsyncScorer | None = None,
        capacity: InFlightCounter | None = None,
        health: TierHealth | None = None,
        api_rates: Callable[[Tier], Rates | None] | None = None,
    ) -> None:
        self.planner = planner
        self.clients = clients
        self.batcher = batcher
        self.capacity = capacity if capacity is not None else InFlightCounter()
        self.health = health if health is not None else TierHealth()
        self._api_rates = api_rates

    @property
    def policy(self) -> Policy:
        """The policy requests are routed under."""
        return self.planner.policy

    async def plan(
        self, request: Mapping[str, Any], *, workload: str | None = None, tier: str | None = None
    ) -> Decision:
        """Decide the first tier (or honour ``tier``, a pinned tier name)."""
        messages = request.get("messages") or []
        tools = request.get("tools")
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
        kwargs: dict[str, Any] = {"tools": tools, "workload": workload, "max_tokens": max_tokens}
        if self.batcher is not None:
            decision = await self.planner.aplan(
                messages, self.batcher, capacity=self.capacity, **kwargs
            )
        else:
            decision = self.planner.plan(messages, capacity=self.capacity, **kwargs)
        if tier is None or tier == decision.tier:
            return decision
        pinned = self.policy.tier(tier)
        return _pinned(decision, pinned)

    async def complete(
        self,
        request: Mapping[str, Any],
        *,
        workload: str | None = None,
        tier: str | None = None,
        request_id: str | None = None,
    ) -> Completion:
        """Run one non-streamed request to an accepted answer (raises UpstreamError if none)."""
        decision = await self.plan(request, workload=workload, tier=tier)
        return await self.run(request, decision, request_id=request_id)

    async def run(
        self, request: Mapping[str, Any], decision: Decision, *, request_id: str | None = None
    ) -> Completion:
        """Call, verify, escalate and spill, starting from ``decision``."""
        payload = payload_for(request, decision)
        allowed = self.allowed(decision.workload)
        spill = self.policy.workloads[decision.workload].spill
        attempts: list[Attempt] = []
        current: Tier | None = self.policy.tier(decision.tier)
        role: Role = "spill" if decision.spilled_from else "primary"
        rejected: tuple[Tier, TierAnswer] | None = None
        last_error: TierError | None = None
        while current is not None and len(attempts) < self.policy.escalation.max_attempts:
            tier = current
            if not self.health.available(tier):
                # Cooling down after repeated failures: go where a failure would have sent us,
                # unless there is nowhere else to go.
                fallback = self.spill_target(tier, allowed, spill)
                if fallback is not None:
                    current, role = fallback, "spill"
                    continue
            called = time.perf_counter()
            try:
                answer = await self._call(tier, payload)
            except TierError as error:
                attempts.append(self._failed(tier, role, error, time.perf_counter() - called))
                if not error.spillable:
                    raise UpstreamError(error, attempts) from None
                last_error, role = error, "spill"
                current = self.spill_target(tier, allowed, spill)
                continue
            problem = find_problem(request, answer.body, self.policy.escalation)
            stronger = self._stronger(tier, allowed)
            if problem is not None and stronger is not None:
                attempts.append(self._answered(tier, role, answer, "rejected", problem))
                rejected, role, current = (tier, answer), "escalation", stronger
                continue
            attempts.append(self._answered(tier, role, answer, "ok", problem))
            return self._completion(request_id, decision, tier, answer, attempts)
        if rejected is not None:  # out of attempts: the best answer we have beats none
            tier, answer = rejected
            return self._completion(request_id, decision, tier, answer, attempts)
        assert last_error is not None
        raise UpstreamError(last_error, attempts)

    async def _call(self, tier: Tier, payload: Mapping[str, Any]) -> TierAnswer:
        client = self.clients.get(tier.kind)
        if client is None:
            raise TierError(tier.name, "connection", f"no client for {tier.kind} tiers")
        with self.capacity.track(tier.name):
            try:
                answer = await client.complete(tier, payload)
            except TierError:
                self.health.failed(tier)
                raise
        self.health.succeeded(tier)
        return answer

    def allowed(self, workload: str) -> list[Tier]:
        """The policy's tiers that ``workload`` may use, cheapest first."""
        names = self.policy.workloads[workload].tiers
        return [t for t in self.policy.tiers if names is None or t.name in names]

    def _usable(self, tier: Tier) -> bool:
        busy = self.capacity.in_flight(tier.name) >= tier.max_concurrency
        return self.health.available(tier) and not busy

    def _stronger(self, tier: Tier, allowed: list[Tier]) -> Tier | None:
        # By identity: comparing pydantic models field by field costs microseconds per request.
        place = next((i for i, t in enumerate(allowed) if t is tier), None)
        later = allowed[place + 1 :] if place is not None else []
        return next((t for t in later if self._usable(t)), None)

    def spill_target(self, tier: Tier, allowed: list[Tier], spill: bool) -> Tier | None:
        """Where a request goes when ``tier`` fails: its overflow, else the next stronger tier."""
        if not spill:
            return None
        if tier.overflow is not None:
            overflow = self.policy.tier(tier.overflow)
            if any(t is overflow for t in allowed) and self._usable(overflow):
                return overflow
        return self._stronger(tier, allowed)

    def rates(self, tier: Tier) -> Rates | None:
        """The tier's per-token rates: the policy's price, else litellm's map for API tiers."""
        rates = tier_rates(tier)
        if rates is None and self._api_rates is not None:
            rates = self._api_rates(tier)
        return rates

    def _answered(
        self,
        tier: Tier,
        role: Role,
        answer: TierAnswer,
        outcome: Literal["ok", "rejected"],
        reason: str | None,
    ) -> Attempt:
        rates = self.rates(tier)
        usage = answer.usage
        cost = (
            Decimal(0)
            if rates is None
            else rates.cost(
                usage.prompt_tokens,
                usage.completion_tokens,
                min(usage.cached_tokens, usage.prompt_tokens),
            )
        )
        return Attempt(
            tier.name, tier.model, role, outcome, reason, None, usage, cost, answer.latency_s
        )

    def _failed(self, tier: Tier, role: Role, error: TierError, latency_s: float) -> Attempt:
        return Attempt(
            tier.name,
            tier.model,
            role,
            "error",
            str(error),
            error.kind,
            None,
            Decimal(0),
            latency_s,
        )

    def _completion(
        self,
        request_id: str | None,
        decision: Decision,
        tier: Tier,
        answer: TierAnswer,
        attempts: list[Attempt],
    ) -> Completion:
        return Completion(
            request_id=request_id or new_request_id(),
            decision=decision,
            body=answer.body,
            tier=tier.name,
            model=tier.model,
            attempts=tuple(attempts),
        )


def new_request_id() -> str:
    """A fresh request id (``req_`` + 24 random hex digits, unguessable)."""
    return "req_" + _randomness.take(12).hex()


class _RandomBytes:
    """os.urandom bought in bulk: one system call per 256 request ids (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._bytes = b""
        self._at = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._at + count > len(self._bytes):
                self._bytes, self._at = os.urandom(self._size), 0
            source, start = self._bytes, self._at
            self._at += count
        return source[start : start + count]


_randomness = _RandomBytes(12 * 256)


def payload_for(request: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """The body sent to a tier: the client's parameters with the cache-friendly messages."""
    payload = {k: v for k, v in request.items() if k not in ("model", "stream", "stream_options")}
    payload["messages"] = list(decision.messages)
    if decision.tools is not None:
        payload["tools"] = list(decision.tools)
    return payload


def _pinned(decision: Decision, tier: Tier) -> Decision:
    return replace(
        decision,
        tier=tier.name,
        model=tier.model,
        kind=tier.kind,
        reason=f"model {tier.model!r} was asked for by name; routing skipped",
        spilled_from=None,
        queued=False,
    )
