"""``cascade.Router``: the whole way of a request — plan, call, verify, escalate, spill.

:mod:`cascade.core.planner` decides before any model runs; the Router then calls the chosen tier
and keeps going until an answer passes: an answer that fails the policy's checks is *escalated*
to the next stronger tier, and a call that fails (saturated, 429, 503, 5xx, timeout, refused)
*spills* to the tier's overflow target, or else to the next stronger tier. Calls are bounded by
the policy's ``escalation.max_attempts``; a tier that keeps failing is skipped for its cool-down
and then tried again. Every call is an :class:`~cascade.run.attempts.Attempt` with its tokens,
cost and outcome.

A call first takes one of the tier's slots, or waits in its queue (:mod:`cascade.core.capacity`);
a full queue or a wait past ``queue_timeout_s`` is ``saturated``: it spills, and never counts
against the tier. A run cancelled mid-call (its client went away) records that call as
``client_gone``.

Complete and streamed answers take the same loop (:meth:`Router._walk`); they differ only in
the call (a whole answer, or a stream up to its first chunk) and in that a stream, relayed as it
comes, cannot be verified.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cascade.core.capacity import InFlightCounter
from cascade.core.decision import Decision
from cascade.core.planner import AsyncScorer, Planner, planner_for
from cascade.core.request import ChatRequest
from cascade.errors import TierError
from cascade.policy.model import Policy, Tier, Verify
from cascade.run.attempts import Attempt, Completion, Outcome, Role, UpstreamError
from cascade.run.checks import find_problem
from cascade.run.evidence import answer_text, first_choice, judge, prompt_text, verify_rules
from cascade.run.health import TierHealth
from cascade.run.ids import new_request_id
from cascade.run.payloads import TierPayloads
from cascade.run.pricing import ApiRates, Pricer
from cascade.run.streaming import StreamRun
from cascade.run.tier_walk import TierWalk
from cascade.run.witnesses import EvidenceCalls
from cascade.tiers.base import JSON, TierAnswer, TierClient


@dataclass(frozen=True)
class _Opened:
    """A stream that sent its first chunk; ``hold`` keeps the tier's in-flight count."""

    first: JSON
    rest: Any  # the client's async generator of chunks
    hold: ExitStack


_Call = Callable[[Tier, Mapping[str, Any], str | None], Awaitable[TierAnswer | _Opened]]


@dataclass(frozen=True)
class _Accepted:
    tier: Tier
    role: Role
    result: TierAnswer | _Opened
    started: float


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
        api_rates: ApiRates | None = None,
    ) -> None:
        self.planner = planner
        self.clients = clients
        self.batcher = batcher
        self.capacity = capacity if capacity is not None else InFlightCounter()
        self.health = health if health is not None else TierHealth()
        self.pricer = Pricer(api_rates, lambda: self.policy)
        self.walk = TierWalk(lambda: self.policy, self.capacity, self.health)
        self.evidence = EvidenceCalls(
            self._call, self._client, self.capacity, self.health, self.pricer
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, policy: Policy | str | Path | None = None) -> AsyncIterator[Router]:
        """A Router for ``policy`` (a Policy, a policy file, or a shipped policy's name; default
        ``default``) with tier clients of its own, closed on leaving the block::

            async with cascade.Router.open("policies/mine.yaml") as router:
                completion = await router.complete({"messages": [...]})

        Self-hosted tiers are called over a keep-alive connection pool; API tiers through
        litellm (imported only when the policy has one).
        """
        from cascade.tiers.pool import ConnectionPool  # noqa: PLC0415 - clients only when opened
        from cascade.tiers.self_hosted import OpenAICompatibleClient  # noqa: PLC0415

        planner = planner_for(policy)
        async with AsyncExitStack() as stack:
            pool = ConnectionPool()
            stack.push_async_callback(pool.aclose)
            clients: dict[str, TierClient] = {"self_hosted": OpenAICompatibleClient(pool)}
            api_rates = None
            if any(t.kind == "api" for t in planner.policy.tiers):
                from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

                api = LiteLLMClient()
                stack.push_async_callback(api.aclose)
                clients["api"], api_rates = api, api.rates
            yield cls(planner, clients, api_rates=api_rates)

    @property
    def policy(self) -> Policy:
        """The policy requests are routed under."""
        return self.planner.policy

    async def plan(
        self,
        request: ChatRequest | Mapping[str, Any],
        *,
        workload: str | None = None,
        tier: str | None = None,
        only_tiers: Collection[str] | None = None,
    ) -> Decision:
        """Decide the first tier (or honour ``tier``, a pinned tier name); every call of the
        request stays within ``only_tiers`` (the caller's key's tier names), when given."""
        chat = ChatRequest.of(request)
        max_tokens = chat.max_output_tokens
        narrow = only_tiers if tier is None else None  # a pinned tier was checked by the caller
        if self.batcher is not None:
            decision = await self.planner.aplan(
                chat.messages,
                self.batcher,
                tools=chat.tools,
                workload=workload,
                max_tokens=max_tokens,
                capacity=self.capacity,
                only_tiers=narrow,
            )
        else:
            decision = self.planner.plan(
                chat.messages,
                tools=chat.tools,
                workload=workload,
                max_tokens=max_tokens,
                capacity=self.capacity,
                only_tiers=narrow,
            )
        if tier is not None and tier != decision.tier:
            decision = decision.pinned(self.policy.tier(tier))
        if tier is None or only_tiers is None:
            return decision
        return replace(decision, only_tiers=tuple(sorted(only_tiers)))

    async def complete(
        self,
        request: ChatRequest | Mapping[str, Any],
        *,
        workload: str | None = None,
        tier: str | None = None,
        request_id: str | None = None,
    ) -> Completion:
        """Run one non-streamed request to an accepted answer (raises UpstreamError if none)."""
        chat = ChatRequest.of(request)
        decision = await self.plan(chat, workload=workload, tier=tier)
        return await self.run(chat, decision, request_id=request_id)

    async def run(
        self,
        request: ChatRequest | Mapping[str, Any],
        decision: Decision,
        *,
        request_id: str | None = None,
        attempts: list[Attempt] | None = None,
    ) -> Completion:
        """Call, verify, escalate and spill, starting from ``decision``.

        ``attempts``, when given, gets each call's Attempt as the run goes: what a caller that
        cancels the run (its client went away) records.
        """
        chat = ChatRequest.of(request)
        attempts = [] if attempts is None else attempts
        accepted = await self._walk(chat, decision, attempts, stream=False)
        assert isinstance(accepted.result, TierAnswer)
        tier = accepted.tier
        return Completion(
            request_id=request_id or new_request_id(),
            decision=decision,
            body=accepted.result.body,
            tier=tier.name,
            model=tier.model,
            attempts=tuple(attempts),
        )

    async def stream(
        self,
        request: ChatRequest | Mapping[str, Any],
        decision: Decision,
        *,
        attempts: list[Attempt] | None = None,
    ) -> StreamRun:
        """Start a stream on the decided tier, spilling until one tier sends its first chunk;
        iterate the returned run's ``chunks()`` to relay the rest (``attempts``: as for
        :meth:`run`)."""
        chat = ChatRequest.of(request)
        attempts = [] if attempts is None else attempts
        accepted = await self._walk(chat, decision, attempts, stream=True)
        opened = accepted.result
        assert isinstance(opened, _Opened)
        return StreamRun(
            self,
            accepted.tier,
            accepted.role,
            first=opened.first,
            rest=opened.rest,
            hold=opened.hold,
            attempts=attempts,
            started=accepted.started,
            payload={"messages": decision.messages},
            workload=decision.workload,
        )

    async def _walk(
        self, request: ChatRequest, decision: Decision, attempts: list[Attempt], *, stream: bool
    ) -> _Accepted:
        """The loop: call, verify, escalate, spill — until a tier's answer is accepted."""
        payload = request.payload(decision.messages, decision.tools)
        call: _Call = self._open if stream else self._call
        if stream:
            payload["stream_options"] = {"include_usage": True}  # usage prices the request
        payloads = TierPayloads(payload, decision)  # each tier's with its cache markers
        allowed = self.allowed(decision.workload, decision.only_tiers)
        spill = self.policy.workloads[decision.workload].spill
        current: Tier | None = self.policy.tier(decision.tier)
        role: Role = "spill" if decision.spilled_from else "primary"
        rejected: _Accepted | None = None
        last_error: TierError | None = None
        calls = 0  # evidence calls (witnesses, samples) do not count against max_attempts
        while current is not None and calls < self.policy.escalation.max_attempts:
            tier = current
            if not self.health.available(tier):
                # Cooling down after repeated failures: go where a failure would have sent us,
                # unless there is nowhere else to go.
                fallback = self.walk.spill_target(tier, allowed, spill)
                if fallback is not None:
                    current, role = fallback, "spill"
                    continue
            calls += 1
            rules = None if stream else verify_rules(tier, allowed, request, decision.only_tiers)
            evidence: list[Attempt] = []
            called = time.perf_counter()
            try:
                result, witnesses = await self._answer(tier, rules, call, payloads, evidence)
            except TierError as error:
                self._failed(tier, role, error, called, attempts, evidence)
                last_error, role = error, "spill"
                current = self.walk.spill_target(tier, allowed, spill)
                continue
            except asyncio.CancelledError:  # nobody waits for the answer any more
                attempts += [*evidence, self.pricer.gone(tier, role, time.perf_counter() - called)]
                raise
            self.health.succeeded(tier)
            accepted = _Accepted(tier, role, result, called)
            if isinstance(result, _Opened):  # a stream is relayed as it comes: nothing to verify
                return accepted
            problem, reason, confidence = await self._review(request, result, rules, witnesses)
            stronger = self.walk.stronger(tier, allowed)
            rejects = problem is not None and stronger is not None
            outcome: Outcome = "rejected" if rejects else "ok"
            answered = self.pricer.answered
            attempts.extend(evidence)  # evidence first: the last attempt is the answer delivered
            attempts.append(
                answered(
                    tier,
                    role,
                    result,
                    outcome,
                    reason,
                    verify_confidence=confidence,
                    workload=decision.workload,
                )
            )
            if not rejects:
                return accepted
            rejected, role, current = accepted, "escalation", stronger
        if rejected is not None:  # out of attempts: the best answer we have beats none
            return rejected
        nothing = TierError(decision.tier, "saturated", "no tier could be tried")
        raise UpstreamError(last_error or nothing, attempts)

    def _failed(  # noqa: PLR0917 - the loop's state at one failed call
        self,
        tier: Tier,
        role: Role,
        error: TierError,
        called: float,
        attempts: list[Attempt],
        evidence: list[Attempt],
    ) -> None:
        """Record a failed call and its evidence; raise UpstreamError when it must not spill."""
        self.health.failed(tier, error)
        latency = time.perf_counter() - called
        attempts.extend([*evidence, self.pricer.failed(tier, role, error, latency)])
        if not error.spillable:
            raise UpstreamError(error, attempts) from None

    async def _answer(
        self,
        tier: Tier,
        rules: Verify | None,
        call: _Call,
        payloads: TierPayloads,
        evidence: list[Attempt],
    ) -> tuple[TierAnswer | _Opened, tuple[str, ...]]:
        """One call for an answer; with ``rules``, its evidence too (witness texts returned,
        evidence calls appended to ``evidence``)."""
        if rules is None:
            return await call(tier, payloads(tier), payloads.affinity), ()
        witness = self.policy.tier(rules.witness) if rules.witness is not None else None
        return await self.evidence.answer(tier, rules, witness, payloads, evidence)

    async def _review(
        self,
        request: ChatRequest,
        answer: TierAnswer,
        rules: Verify | None,
        witnesses: tuple[str, ...],
    ) -> tuple[str | None, str | None, float | None]:
        """The checks, then the verifier: (what is wrong or None, the reason to record, the
        verifier's confidence or None)."""
        problem = find_problem(request, answer.body, self.policy.escalation)
        if problem is not None or rules is None:
            return problem, problem, None
        verdict = await judge(
            self.planner.verifier,
            rules,
            prompt_text(request.messages),
            answer_text(first_choice(answer.body)),
            witnesses,
        )
        return (None if verdict.accepted else verdict.reason), verdict.reason, verdict.confidence

    def _client(self, tier: Tier) -> TierClient:
        client = self.clients.get(tier.kind)
        if client is None:
            raise TierError(tier.name, "connection", f"no client for {tier.kind} tiers")
        return client

    async def _call(self, tier: Tier, payload: Mapping[str, Any], key: str | None) -> TierAnswer:
        client = self._client(tier)
        await self.capacity.admit(tier)
        try:
            return await client.complete(tier, payload, affinity=key)
        finally:
            self.capacity.release(tier.name, tier.max_concurrency)

    async def _open(self, tier: Tier, payload: Mapping[str, Any], key: str | None) -> _Opened:
        client = self._client(tier)
        await self.capacity.admit(tier)
        hold = ExitStack()
        hold.callback(self.capacity.release, tier.name, tier.max_concurrency)
        rest = client.stream(tier, payload, affinity=key)
        try:
            first = await anext(rest)
        except StopAsyncIteration:
            hold.close()
            raise TierError(
                tier.name, "bad_response", "the stream ended before its first chunk"
            ) from None
        except BaseException:
            hold.close()
            raise
        return _Opened(first, rest, hold)

    def allowed(self, workload: str, only: Collection[str] | None = None) -> list[Tier]:
        """The policy's tiers that ``workload`` may use (of ``only``, if given), cheapest first."""
        return self.walk.allowed(workload, only)
