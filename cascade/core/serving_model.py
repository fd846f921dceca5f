"""How long a self-hosted tier's decode step takes at a given batch: the line that turns a
workload's latency target into an operating batch (and so a price), and that ``cascade plan``
sizes fleets with.

A continuous-batching engine (vLLM, SGLang) advances every running sequence by one token per
step. At the batches small models serve, a step is bound by memory: the weights are read once
for the whole batch and each sequence's KV cache on its own, so its time is a straight line in
the batch ``B``; every token computed in the step (``B`` decoded, ``P`` prompt tokens of the
sequences joining) puts a floor under it::

    T(B) = max(fixed + B * per_sequence * L / L_ref,  (B + P) / prefill_tokens_per_second)

Two measurements a platform team has from a benchmark of its engine fix the line at the measured
context ``L_ref`` (``price.context_tokens``): ``T(batch) = batch / tokens_per_second`` and
``T(1) = 1 / single_stream_tokens_per_second``; ``L`` is the traffic's context per sequence.
Without the single-stream speed the line is flat: every step as long as a full one.

Sequences join a full batch as others finish: one living ``o`` steps, a batch of ``B`` admits
``B / o`` a step on average, each prefilling its uncached prompt in the step it joins. The mean
step averages the steps over how many join, a Poisson count of that mean (a step that two or
three prompts join may be compute-bound where one is not); a sequence's time per output token
is the same over the steps after its own join, which only the other ``B - 1`` lengthen.

Why a line here rather than the simulator's equations (:mod:`cascade.simulator.profiles`): the
decision prices requests with it, and the router depends on nothing of the simulator (DESIGN's
layout); and a policy describes a real engine by what was measured on it, not by its
architecture. The simulated tiers follow the full roofline, whose memory-bound part this line
is; ``benchmarks/bench_plan_model.py`` measures how far the two are apart, and
:mod:`cascade.core.fleet_search` states that error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cascade.core.per_object import PerObject
from cascade.policy.model import GpuPrice, Tier

__all__ = ["DEFAULT_PREFILL_SPEEDUP", "SequenceLoad", "StepLine", "step_line"]

DEFAULT_PREFILL_SPEEDUP = 10
"""Prefill processes a prompt's tokens in parallel: an order of magnitude above the decode
throughput is typical for vLLM/SGLang on one GPU. A policy states the measured number instead
(``price.prefill_tokens_per_second``)."""


@dataclass(frozen=True, slots=True)
class SequenceLoad:
    """What one sequence brings to the engine, on average."""

    prefill_tokens: float
    """Prompt tokens prefilled when it joins (those in the engine's prefix cache are not)."""
    output_tokens: float
    """Tokens it decodes: the steps it stays in the batch."""
    context_tokens: float | None = None
    """Context it holds while decoding (prompt + half its output); None: the measured one."""


@dataclass(frozen=True, slots=True)
class StepLine:
    """A tier's decode step time against its batch (see the module docstring)."""

    fixed_s: float
    """Seconds of a step whatever the batch (reading the weights)."""
    per_sequence_s: float
    """Seconds each sequence adds to a step at the measured context (reading its KV cache)."""
    prefill_tokens_per_second: float
    """Tokens computed per second: the floor under a step's time."""
    max_batch: int
    """The most sequences one engine runs at once (``price.batch``, else max_concurrency)."""
    context_tokens: int | None = None
    """Context per sequence at which the line was measured (None: the traffic's own)."""

    def decode_step(self, batch: float, context: float | None = None) -> float:
        """Seconds of a step of ``batch`` sequences holding ``context`` tokens each, no prefill."""
        kv = self.per_sequence_s * batch
        if context is not None and self.context_tokens:
            kv *= context / self.context_tokens
        return max(self.fixed_s + kv, batch / self.prefill_tokens_per_second)

    def mean_step(self, batch: float, load: SequenceLoad | None = None) -> float:
        """Mean seconds of a step at ``batch`` with sequences joining as ``load`` says (None:
        decode only, at the measured context): what throughput and capacity follow."""
        return self._steps(batch, batch, load)

    def time_per_token(self, batch: float, load: SequenceLoad | None = None) -> float:
        """Mean seconds between two output tokens of one sequence at ``batch``: the steps it
        sees after its first token, which the other ``batch - 1`` sequences' joins lengthen
        (its own join step is its time to first token)."""
        return self._steps(batch, batch - 1, load)

    def _steps(self, batch: float, joiners: float, load: SequenceLoad | None) -> float:
        if load is None:
            return self.decode_step(batch)
        decode = self.decode_step(batch, load.context_tokens)
        mean = 0.0
        for count, share in _poisson(joiners / max(load.output_tokens, 1.0)):
            computed = (batch + count * load.prefill_tokens) / self.prefill_tokens_per_second
            mean += share * max(decode, computed)
        return mean

    def operating_batch(self, max_tpot_s: float | None, load: SequenceLoad | None = None) -> int:
        """The largest batch up to :attr:`max_batch` whose time per token is within
        ``max_tpot_s``, at least 1 (check :meth:`time_per_token` at 1 to know whether even that
        meets it); None: no target, the full batch."""
        if max_tpot_s is None or self.time_per_token(self.max_batch, load) <= max_tpot_s:
            return self.max_batch
        low, high = 1, self.max_batch  # the time grows with the batch: bisect
        while high - low > 1:
            middle = (low + high) // 2
            if self.time_per_token(middle, load) <= max_tpot_s:
                low = middle
            else:
                high = middle
        return low

    def tokens_per_second(self, batch: float, load: SequenceLoad | None = None) -> float:
        """Output tokens one engine decodes per second at ``batch``."""
        return batch / self.mean_step(batch, load)


def _poisson(mean: float) -> list[tuple[int, float]]:
    """(k, P(k)) of a Poisson count with this mean, to a tail below one in a billion."""
    terms, share, k = [], math.exp(-mean), 0
    while True:
        terms.append((k, share))
        k += 1
        share *= mean / k
        if k > mean and share < 1e-9:
            return terms


def _line(tier: Tier) -> StepLine | None:
    price = tier.price
    if not isinstance(price, GpuPrice):
        return None
    batch = tier.serving_batch
    prefill = price.prefill_tokens_per_second or price.tokens_per_second * DEFAULT_PREFILL_SPEEDUP
    full = batch / price.tokens_per_second
    single = price.single_stream_tokens_per_second
    if single is None or batch == 1:
        return StepLine(full, 0.0, prefill, batch, price.context_tokens)
    per_sequence = (full - 1 / single) / (batch - 1)
    return StepLine(full - batch * per_sequence, per_sequence, prefill, batch, price.context_tokens)


_lines: PerObject[Tier, StepLine | None] = PerObject(_line)


def step_line(tier: Tier) -> StepLine | None:
    """The tier's step line from its GPU price; None for a tier priced per token."""
    return _lines(tier)
