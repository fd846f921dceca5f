"""The verify step's calls: a tier's answer with ``n`` samples, and a witness tier in parallel.

:class:`EvidenceCalls` makes the calls :mod:`cascade.run.evidence` reasons about. A witness is
best effort: it takes a free slot of its tier or is skipped (it never queues, so verification
cannot hold a request behind another tier's backlog), and a witness that fails leaves the
candidate without that witness, never the request without an answer. Every evidence call is an
attempt (role ``witness`` or ``sample``) with its cost, failed ones included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cascade.core.capacity import InFlightCounter
from cascade.errors import TierError
from cascade.policy.model import Tier, Verify
from cascade.run.attempts import Attempt
from cascade.run.evidence import answer_text, first_choice, prompt_text, split_samples
from cascade.run.health import TierHealth
from cascade.run.payloads import TierPayloads
from cascade.run.pricing import Pricer
from cascade.tiers.base import TierAnswer, TierClient

__all__ = ["EvidenceCalls"]

_Call = Callable[[Tier, Mapping[str, Any], str | None], Awaitable[TierAnswer]]


class EvidenceCalls:
    """Calls a tier for its answer together with the evidence its verify block asks for."""

    def __init__(
        self,
        call: _Call,
        client: Callable[[Tier], TierClient],
        capacity: InFlightCounter,
        health: TierHealth,
        pricer: Pricer,
    ) -> None:
        self._call, self._client = call, client
        self._capacity, self._health, self._pricer = capacity, health, pricer

    async def answer(
        self,
        tier: Tier,
        rules: Verify,
        witness_tier: Tier | None,
        payloads: TierPayloads,
        evidence: list[Attempt],
    ) -> tuple[TierAnswer, tuple[str, ...]]:
        """``tier``'s answer (the candidate) and the witnesses' texts; evidence calls are
        appended to ``evidence``, also when the candidate's call fails (the error propagates).
        ``payloads`` gives each tier the request as it is sent there."""
        witness = None
        if witness_tier is not None:
            call = self._witness(witness_tier, payloads(witness_tier), payloads.affinity)
            witness = asyncio.create_task(call)
        payload = payloads(tier)
        asked = {**payload, "n": rules.samples} if rules.samples is not None else payload
        try:
            answer = await self._call(tier, asked, payloads.affinity)
        except BaseException:
            if witness is not None and witness_tier is not None:
                witness.cancel()
                settled = await _settled(witness)
                evidence.append(self._abandoned(witness_tier, settled, payloads.workload))
            raise
        texts: list[str] = []
        if rules.samples is not None:
            prompt = prompt_text(payload.get("messages") or ())
            samples = split_samples(answer, prompt, majority=rules.answer == "majority")
            answer, texts = samples.candidate, list(samples.witnesses)
            if samples.sample_usage is not None:
                evidence.append(
                    self._pricer.attempt(
                        tier,
                        "sample",
                        "ok",
                        usage=samples.sample_usage,
                        latency_s=answer.latency_s,
                        workload=payloads.workload,
                    )
                )
        if witness is not None and witness_tier is not None:
            seen = await witness
            if isinstance(seen, TierError):
                evidence.append(self._pricer.failed(witness_tier, "witness", seen, 0.0))
            else:
                priced = self._pricer.answered(
                    witness_tier, "witness", seen, "ok", None, workload=payloads.workload
                )
                evidence.append(priced)
                texts.append(answer_text(first_choice(seen.body)))
        return answer, tuple(texts)

    async def _witness(
        self, tier: Tier, payload: Mapping[str, Any], affinity: str | None
    ) -> TierAnswer | TierError:
        """One witness call, into a free slot only; its failure is returned, not raised."""
        if not self._health.available(tier):
            return TierError(tier.name, "unavailable", "cooling down after repeated failures")
        if not self._capacity.take_slot(tier.name, tier.max_concurrency):
            return TierError(tier.name, "saturated", "no free slot for a witness call")
        try:
            answer = await self._client(tier).complete(tier, payload, affinity=affinity)
        except TierError as error:
            self._health.failed(tier, error)
            return error
        finally:
            self._capacity.release(tier.name, tier.max_concurrency)
        self._health.succeeded(tier)
        return answer

    def _abandoned(self, tier: Tier, seen: TierAnswer | TierError | None, workload: str) -> Attempt:
        """The witness of a candidate call that failed or was cancelled."""
        if isinstance(seen, TierAnswer):  # it answered first: it was paid for
            why = "the candidate call failed"
            return self._pricer.answered(tier, "witness", seen, "ok", why, workload=workload)
        if isinstance(seen, TierError):
            return self._pricer.failed(tier, "witness", seen, 0.0)
        return self._pricer.attempt(
            tier,
            "witness",
            "error",
            usage=None,
            latency_s=0.0,
            reason="cancelled: the candidate call failed",
            error_class="cancelled",
        )


async def _settled(task: asyncio.Task[TierAnswer | TierError]) -> TierAnswer | TierError | None:
    """What a task we cancelled ended with: its result if it finished first, else None."""
    await asyncio.wait([task])  # never raises: a cancellation of the caller still propagates
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()
