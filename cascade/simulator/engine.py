"""The timing model: when each token of each sequence is produced, in simulated seconds.

:class:`BatchEngine` is a continuous-batching engine: one scheduler task steps every running
sequence together (one token each per step, the step's length from
:func:`~cascade.simulator.profiles.step_seconds`); a new sequence joins the batch at the next
step, its uncached prompt tokens prefilled in that step; beyond ``max_concurrency`` sequences it
waits in a queue, or is refused with :class:`Overloaded`. :class:`ApiEngine` is a remote API:
streams are independent, each with its own time to first token and token rate.

Simulated time runs ``1 / time_scale`` times faster than the wall clock (``time_scale`` 0.01:
a simulated second lasts 10 ms). Every time the engines record -- arrival, first token, finish --
and every duration the server reports is simulated time, the real serving time. When the host
cannot keep up with a small time scale, simulated time simply advances more slowly than asked;
the reported numbers stay those of the model.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from cascade.simulator.labels import draw
from cascade.simulator.profiles import ApiTiming, GpuTiming, Overload, step_seconds

__all__ = ["ApiEngine", "BatchEngine", "Clock", "EngineStats", "Overloaded", "Request"]

_MIN_SLEEP = 0.001  # event-loop timers have ~1 ms resolution: sleep only when that far ahead


class Overloaded(Exception):  # noqa: N818 -- a state, like asyncio.QueueFull
    """The engine is at capacity and refuses new sequences; retry after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"at capacity; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class Clock:
    """Simulated seconds since creation, running ``1 / time_scale`` times the wall clock.

    :meth:`advance` jumps it forward (tests use it to let an hour of prompt cache expire at
    once); anything sleeping until an earlier time then wakes at its next timer.
    """

    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale
        self._origin = time.perf_counter()

    def now(self) -> float:
        """The simulated time that corresponds to the wall clock now."""
        return (time.perf_counter() - self._origin) / self.time_scale

    def advance(self, seconds: float) -> None:
        """Move simulated time ``seconds`` forward (from any thread: a test is its only caller)."""
        self._origin -= seconds * self.time_scale

    async def sleep_until(self, simulated: float) -> None:
        """Wait until the wall clock reaches ``simulated``; always yields to the event loop."""
        delay = simulated * self.time_scale + self._origin - time.perf_counter()
        await asyncio.sleep(delay if delay > _MIN_SLEEP else 0)


@dataclass(eq=False)
class Request:
    """One sequence (one choice of a completion) to generate, and when things happened to it."""

    key: str  # the prompt text: per-prompt draws (API latency) are fixed by it
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    arrived: float = 0.0
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    emitted: int = 0
    cancelled: bool = False
    progress: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    def advance(self, now: float) -> None:
        """Record one more generated token at simulated time ``now``."""
        self.emitted += 1
        if self.first_token is None:
            self.first_token = now
        if self.emitted >= self.output_tokens:
            self.finished = now
        self.progress.put_nowait(self.emitted)


@dataclass
class EngineStats:
    """Counters and gauges that ``/metrics`` exports (simulated seconds)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0
    busy_seconds: float = 0.0
    finished: int = 0


async def _drain(request: Request) -> AsyncGenerator[int, None]:
    """Yield the emitted-token count each time it grows, until the request is done."""
    try:
        while True:
            count = await request.progress.get()
            while not request.progress.empty():  # several steps since the last read: coalesce
                count = request.progress.get_nowait()
            yield count
            if count >= request.output_tokens:
                return
    finally:
        request.cancelled = request.finished is None


class BatchEngine:
    """Continuous batching on one GPU: every running sequence advances one token per step."""

    def __init__(
        self, timing: GpuTiming, clock: Clock, max_concurrency: int, overload: Overload
    ) -> None:
        self._timing = timing
        self._clock = clock
        self._max = max_concurrency
        self._overload = overload
        self._running: list[Request] = []
        self._waiting: deque[Request] = deque()
        self._wake = asyncio.Event()
        self._now = 0.0
        self._last_step = step_seconds(timing, 1, 0, 0)
        self.stats = EngineStats()

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue ``requests`` to join the batch, or raise :class:`Overloaded` (429/503 modes)."""
        busy = len(self._running) + len(self._waiting)
        if self._overload != "queue" and busy + len(requests) > self._max:
            raise Overloaded(self._retry_after())
        for request in requests:
            # Into an idle engine a request arrives when the scheduler wakes: the host's delay
            # before that, magnified by 1 / time_scale, is no part of the model's latency.
            request.arrived = self._now if busy else -1.0
            self._waiting.append(request)
        self.stats.waiting = len(self._waiting)
        self._wake.set()

    def stream(self, request: Request) -> AsyncGenerator[int, None]:
        """The growing count of ``request``'s generated tokens; closing it cancels the request."""
        return _drain(request)

    def _retry_after(self) -> float:
        remaining = min((r.output_tokens - r.emitted for r in self._running), default=1)
        return remaining * self._last_step * self._clock.time_scale

    async def run(self) -> None:
        """The scheduler loop; runs until cancelled."""
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                self._now = max(self._now, self._clock.now())
                for request in self._waiting:
                    request.arrived = self._now if request.arrived < 0 else request.arrived
            self._step()
            await self._clock.sleep_until(self._now)

    def _step(self) -> None:
        self._running = [r for r in self._running if not r.cancelled]
        prefill = 0
        while self._waiting and len(self._running) < self._max:
            request = self._waiting.popleft()
            if request.cancelled:
                continue
            if request.arrived < 0:  # submitted while the last step was ending
                request.arrived = self._now
            request.started = self._now
            prefill += request.prompt_tokens - request.cached_tokens
            self.stats.prompt_tokens += request.prompt_tokens
            self._running.append(request)
        self.stats.waiting = len(self._waiting)
        if not self._running:
            self.stats.running = 0
            return
        context = sum(r.prompt_tokens + r.emitted for r in self._running)
        self._last_step = step_seconds(self._timing, len(self._running), context, prefill)
        self._now += self._last_step
        for request in self._running:
            request.advance(self._now)
        self.stats.steps += 1
        self.stats.busy_seconds += self._last_step
        self.stats.generation_tokens += len(self._running)
        self.stats.kv_usage = min(
            1.0, (context + len(self._running)) / self._timing.kv_capacity_tokens
        )
        done = [r for r in self._running if r.finished is not None]
        if done:
            self.stats.finished += len(done)
            self._running = [r for r in self._running if r.finished is None]
        self.stats.running = len(self._running)


class ApiEngine:
    """A remote API: independent streams, each with a drawn time to first token and token rate."""

    def __init__(
        self, timing: ApiTiming, clock: Clock, max_concurrency: int, overload: Overload
    ) -> None:
        self._timing = timing
        self._clock = clock
        self._max = max_concurrency
        self._overload = overload
        self._slots = asyncio.Semaphore(max_concurrency)
        self.stats = EngineStats()

    def submit(self, requests: Sequence[Request]) -> None:
        """Accept ``requests``, or raise :class:`Overloaded` past the concurrency limit."""
        busy = self.stats.running + self.stats.waiting
        if self._overload != "queue" and busy + len(requests) > self._max:
            raise Overloaded(max(self._timing.ttft_seconds) * self._clock.time_scale)
        now = self._clock.now()
        for request in requests:
            request.arrived = now
        self.stats.waiting += len(requests)

    async def run(self) -> None:
        """Nothing to schedule: streams pace themselves. Present for a uniform lifespan."""
        await asyncio.Event().wait()

    async def stream(self, request: Request) -> AsyncGenerator[int, None]:
        """Yield the growing count of generated tokens at the API's pace."""
        low, high = self._timing.ttft_seconds
        ttft = low + (high - low) * draw(request.key, "ttft")
        low, high = self._timing.tokens_per_second
        interval = 1.0 / (low + (high - low) * draw(request.key, "rate"))
        try:
            immediate = not self._slots.locked()
            async with self._slots:
                self.stats.waiting -= 1
                self.stats.running += 1
                # Without a wait for a slot, the host's delay until now is not the API's latency.
                request.started = request.arrived if immediate else self._clock.now()
                self.stats.prompt_tokens += request.prompt_tokens
                first = request.started + ttft
                await self._clock.sleep_until(first)
                while request.emitted < request.output_tokens:
                    due = min(
                        request.output_tokens, 1 + int((self._clock.now() - first) / interval)
                    )
                    while request.emitted < due:
                        request.advance(first + request.emitted * interval)
                        self.stats.generation_tokens += 1
                    yield request.emitted
                    if request.emitted >= request.output_tokens:
                        break
                    step = max(interval, _MIN_SLEEP / self._clock.time_scale)
                    await self._clock.sleep_until(first + (request.emitted - 1) * interval + step)
                self.stats.finished += 1
        finally:
            self.stats.running -= request.started is not None
            self.stats.waiting -= request.started is None
            request.cancelled = request.finished is None
