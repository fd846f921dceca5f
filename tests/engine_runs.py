"""One simulated engine fed seeded Poisson arrivals, stepped in simulated time.

Shared by ``tests/test_plan_accuracy.py`` and ``benchmarks/bench_plan_model.py``, which set
``cascade plan``'s capacity model against the simulated tiers. The engine
(:class:`~cascade.simulator.engine.BatchEngine`) is stepped here directly, through its
``_step`` and ``_now``, rather than by its scheduler task: that task sleeps on the wall clock,
and a host slower than the time scale would then stretch the arrivals against the steps. Here
every number is exact and repeatable for a seed.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import dataclass

from cascade.simulator.engine import BatchEngine, Clock, Overloaded, Request
from cascade.simulator.profiles import GpuTiming

__all__ = ["Run", "simulate"]


@dataclass(frozen=True)
class Run:
    """What one simulated engine did."""

    offered: int
    refused: int
    served_per_s: float
    tpot_s: float


def simulate(
    timing: GpuTiming,
    batch: int,
    rate: float,
    mix: tuple[int, int, int],
    *,
    seconds: float,
    seed: int,
) -> Run:
    """Feed one engine of ``batch`` slots (a sequence finding them full is refused, as the proxy
    spills it) Poisson arrivals at ``rate`` a second for ``seconds`` after a tenth as much
    warm-up: prompts within +-50% of ``mix``'s (prompt, cached) keeping its cached share,
    outputs within +-50% of its output."""
    rng = random.Random(seed)
    warm, end = seconds / 10, seconds * 1.1
    arrivals: deque[tuple[float, Request]] = deque()
    at = 0.0
    while at < end:
        at += rng.expovariate(rate)
        scale = rng.uniform(0.5, 1.5)  # the prompt's length; its cached share stays the mix's
        prompt, cached = round(mix[0] * scale), round(mix[1] * scale)
        output = max(2, round(mix[2] * rng.uniform(0.5, 1.5)))
        request = Request(f"r{len(arrivals)}", prompt, cached, output)
        arrivals.append((at, request))
    engine = BatchEngine(timing, Clock(1.0), max_concurrency=batch, overload="503")
    offered = refused = served = 0
    tpots: list[float] = []
    running: list[Request] = []
    while arrivals:
        now = engine._now  # stepped here: see the module docstring
        while arrivals and arrivals[0][0] <= now:
            arrived, request = arrivals.popleft()
            measured = warm <= arrived < end
            offered += measured
            try:
                engine.submit([request])
            except Overloaded:
                refused += measured
                continue
            running.append(request)
        if not engine._running and not engine._waiting:
            engine._now = arrivals[0][0] if arrivals else now
            continue
        engine._step()
        for request in [r for r in running if r.finished is not None]:
            running.remove(request)
            assert request.finished is not None
            assert request.first_token is not None
            if warm <= request.finished < end:
                served += 1
                gaps = request.output_tokens - 1
                tpots.append((request.finished - request.first_token) / gaps)
    return Run(offered, refused, served / seconds, statistics.fmean(tpots))
