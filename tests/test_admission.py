"""Admission control: a tier's slots, the bounded queue in front of them, and the 503 with
Retry-After that a request gets when neither has room."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import cascade
from cascade.core.capacity import InFlightCounter
from cascade.errors import TierError
from cascade.policy import parse_policy
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.raw_servers import until
from tests.servers import serving, wait_until
from tests.test_run import Run
from tests.upstreams import ScriptedTier

HI = [{"role": "user", "content": "What is 2+2?"}]

ONE_TIER = """\
name: admission
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
    max_concurrency: {slots}
    max_queue: {queue}
    queue_timeout_s: {timeout}
"""


def _tier(slots: int, queue: int, timeout: float) -> cascade.Tier:
    text = ONE_TIER.format(small="http://127.0.0.1:9", slots=slots, queue=queue, timeout=timeout)
    policy = parse_policy(text)
    return policy.tiers[0]


def test_a_freed_slot_passes_to_the_first_in_line_at_once() -> None:
    """Waiting requests get slots first come, first served, the moment one is released (the
    handover happens in release itself: nobody polls); the count of calls in flight stays at
    the limit until the line is empty."""
    tier = _tier(1, 2, 30)

    async def scenario() -> None:
        counter = InFlightCounter()
        await counter.admit(tier)
        first = asyncio.create_task(counter.admit(tier))
        second = asyncio.create_task(counter.admit(tier))
        await until(lambda: counter.waiting("small") == 2)
        counter.release("small", 1)
        assert (counter.waiting("small"), counter.in_flight("small")) == (1, 1)  # handed over
        await first
        assert not second.done()
        counter.release("small", 1)
        await second
        counter.release("small", 1)
        assert (counter.waiting("small"), counter.in_flight("small")) == (0, 0)

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_and_a_long_wait_gives_up() -> None:
    """With every slot busy, a request beyond max_queue is refused without waiting, and one in
    the queue gives up after queue_timeout_s; both as ``saturated`` with a Retry-After."""
    tier = _tier(1, 1, 0.1)

    async def scenario() -> tuple[TierError, TierError, float]:
        counter = InFlightCounter()
        await counter.admit(tier)
        queued = asyncio.create_task(counter.admit(tier))
        await until(lambda: counter.waiting("small") == 1)
        with pytest.raises(TierError) as full:
            await counter.admit(tier)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TierError) as late:
            await queued
        assert (counter.waiting("small"), counter.in_flight("small")) == (0, 1)
        return full.value, late.value, loop.time() - started

    full, late, waited = asyncio.run(scenario())
    assert (full.kind, full.retry_after_s) == ("saturated", 1.0)
    assert "1 requests already wait for one (max_queue 1)" in str(full)
    assert (late.kind, late.retry_after_s) == ("saturated", 1.0)
    assert "none came free within queue_timeout_s (0.1 s)" in str(late)
    assert waited < 5


def test_a_cancelled_waiter_leaves_the_line_and_passes_on_a_slot_it_was_given() -> None:
    """A request cancelled in the queue (its client left) takes no slot with it: it leaves the
    line, and a slot handed to it as it was cancelled goes to the next in line."""
    tier = _tier(1, 3, 30)

    async def scenario() -> None:
        counter = InFlightCounter()
        await counter.admit(tier)
        leaving = asyncio.create_task(counter.admit(tier))
        handed = asyncio.create_task(counter.admit(tier))
        staying = asyncio.create_task(counter.admit(tier))
        await until(lambda: counter.waiting("small") == 3)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        assert counter.waiting("small") == 2
        counter.release("small", 1)  # to ``handed``, which is cancelled before it runs
        handed.cancel()
        await asyncio.gather(handed, return_exceptions=True)
        await staying
        assert (counter.waiting("small"), counter.in_flight("small")) == (0, 1)

    asyncio.run(scenario())


def test_a_queued_request_runs_when_the_tiers_slot_frees(tmp_path: Path) -> None:
    """Through the router: with the tier's one slot taken, the next request waits in its queue
    rather than failing, a third (over max_queue) fails at once as saturated, and when the first
    call ends the queued one is sent to the tier."""
    hold = threading.Event()
    small = ScriptedTier("small", hold=hold)
    with serving(small.app()) as url:
        policy = tmp_path / "admission.yaml"
        policy.write_text(ONE_TIER.format(small=url, slots=1, queue=1, timeout=30))

        async def scenario() -> tuple[list[cascade.Completion], TierError]:
            async with cascade.Router.open(policy) as router:
                first = asyncio.create_task(router.complete({"messages": HI}))
                await until(lambda: small.calls == 1)
                second = asyncio.create_task(router.complete({"messages": HI}))
                await until(lambda: router.capacity.waiting("small") == 1)
                with pytest.raises(TierError) as refused:
                    await router.complete({"messages": HI})
                assert small.calls == 1
                hold.set()
                return list(await asyncio.gather(first, second)), refused.value

        try:
            answered, refused = asyncio.run(scenario())
        finally:
            hold.set()
    assert [c.tier for c in answered] == ["small", "small"]
    assert "every allowed tier is saturated, so it queues" in answered[1].decision.reason
    assert small.calls == 2
    assert refused.kind == "saturated"


async def _burst(url: str, count: int, done: list[httpx.Response]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one() -> None:
            done.append(await client.post("/v1/chat/completions", json=body))

        body = {"model": "cascade", "messages": HI}
        await asyncio.gather(*(one() for _ in range(count)))


def test_a_burst_beyond_slots_and_queue_gets_fast_503s_for_the_excess(tmp_path: Path) -> None:
    """Eight requests at once on a tier with 2 slots and a queue of 3: the 3 that find no room
    are answered 503 in OpenAI's shape with Retry-After while the tier still holds the others,
    are recorded as ``saturated``, and the other 5 are answered once the tier lets go."""
    hold = threading.Event()
    small = ScriptedTier("small", hold=hold)
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    done: list[httpx.Response] = []
    with serving(small.app()) as s:
        policy = tmp_path / "admission.yaml"
        policy.write_text(ONE_TIER.format(small=s, slots=2, queue=3, timeout=30))
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as url, ThreadPoolExecutor(1) as pool:
            burst = pool.submit(asyncio.run, _burst(url, 8, done))
            try:
                assert wait_until(lambda: len(done) == 3 and small.calls == 2)
                refused = list(done)
            finally:
                hold.set()
            burst.result()
            run = Run(url, small, small, database)
            assert wait_until(lambda: len(run.rows()[0]) == 8)
            requests, attempts = run.rows()
    assert [r.status_code for r in refused] == [503] * 3
    for reply in refused:
        assert reply.headers["retry-after"] == "1"
        error = reply.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "saturated")
    assert sorted(r.status_code for r in done) == [200] * 5 + [503] * 3
    assert small.calls == 5
    assert sorted(int(str(r["http_status"])) for r in requests) == [200] * 5 + [503] * 3
    refusals = [a for a in attempts if a["error_class"] == "saturated"]
    assert len(refusals) == 3
