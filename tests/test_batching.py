"""Micro-batching: concurrent async callers share scorer calls and each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from cascade.errors import ScorerError
from cascade.model.batching import LoopBatcher, MicroBatcher
from cascade.model.scorer import OnnxScorer
from cascade.training.train import PARITY_TEXTS


class RecordingScorer:
    """Scores a text as len(text) / 1000 and records each batch and the thread it ran on."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()

    def score(self, text: str) -> float:
        return self.score_batch([text])[0]

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        self.batches.append(list(texts))
        self.threads.add(threading.get_ident())
        return [len(t) / 1000 for t in texts]


class FailingScorer(RecordingScorer):
    """Raises on every batch, as a broken model would."""

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        super().score_batch(texts)
        raise ScorerError("model exploded")


class GatedScorer(RecordingScorer):
    """Blocks each batch until ``gate`` is set; tells the loop when a batch has started."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.started = asyncio.Event()
        self.gate = threading.Event()

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        self.loop.call_soon_threadsafe(self.started.set)
        self.gate.wait(timeout=10)
        return super().score_batch(texts)


def test_concurrent_calls_match_sequential_scores() -> None:
    """N concurrent callers get the scores sequential calls give, in fewer than N batches."""
    scorer = OnnxScorer("tfidf-lr-v1", device="cpu")
    texts = [*PARITY_TEXTS, *(f"question {i}: what is {i} + {i}?" for i in range(30))]
    sequential = [scorer.score(t) for t in texts]

    async def run() -> tuple[list[float], int]:
        async with MicroBatcher(scorer, max_batch=16) as batcher:
            scores = await asyncio.gather(*(batcher.score(t) for t in texts))
            return list(scores), batcher.batches_run

    scores, batches = asyncio.run(run())
    assert scores == pytest.approx(sequential, abs=1e-6)
    assert batches < len(texts)


def test_batches_respect_max_batch_and_run_off_the_loop() -> None:
    """No batch exceeds max_batch, every caller gets its own result, scoring runs in a worker."""
    scorer = RecordingScorer()
    texts = ["x" * n for n in range(10)]

    async def run() -> list[float]:
        async with MicroBatcher(scorer, max_batch=4) as batcher:
            return list(await asyncio.gather(*(batcher.score(t) for t in texts)))

    assert asyncio.run(run()) == [n / 1000 for n in range(10)]
    assert max(len(b) for b in scorer.batches) <= 4
    assert sorted(t for b in scorer.batches for t in b) == sorted(texts)
    assert threading.get_ident() not in scorer.threads


def test_scorer_error_reaches_every_caller() -> None:
    """When the scorer raises, every caller waiting on that batch gets the exception."""
    scorer = FailingScorer()

    async def run() -> list[float | BaseException]:
        async with MicroBatcher(scorer) as batcher:
            calls = (batcher.score(f"prompt {i}") for i in range(5))
            return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(run())
    assert len(results) == 5
    assert all(isinstance(r, ScorerError) and "model exploded" in str(r) for r in results)


def test_aclose_finishes_queued_work_then_refuses_more() -> None:
    """aclose scores what is already queued before it returns; later calls raise ScorerError."""

    async def run() -> None:
        scorer = GatedScorer(asyncio.get_running_loop())
        batcher = MicroBatcher(scorer)
        first = asyncio.create_task(batcher.score("first"))
        await scorer.started.wait()  # the first batch is now blocked inside the scorer
        queued = [asyncio.create_task(batcher.score(f"queued {i}")) for i in range(3)]
        closing = asyncio.create_task(batcher.aclose())  # runs after the three have queued
        scorer.gate.set()
        await closing
        assert first.result() == len("first") / 1000
        assert [t.result() for t in queued] == [len("queued 0") / 1000] * 3
        assert batcher.batches_run == 2
        with pytest.raises(ScorerError, match="closed"):
            await batcher.score("too late")

    asyncio.run(run())


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    """A caller giving up while its batch is scoring leaves the other callers' results intact."""

    async def run() -> None:
        scorer = GatedScorer(asyncio.get_running_loop())
        async with MicroBatcher(scorer) as batcher:
            tasks = [asyncio.create_task(batcher.score(t)) for t in ("a", "bb", "ccc")]
            await scorer.started.wait()
            tasks[1].cancel()
            scorer.gate.set()
            done = await asyncio.gather(*tasks, return_exceptions=True)
        assert done[0] == 0.001
        assert isinstance(done[1], asyncio.CancelledError)
        assert done[2] == 0.003

    asyncio.run(run())


def test_invalid_settings_are_refused() -> None:
    """max_batch below 1 and negative or absurd waits are ValueErrors."""
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(RecordingScorer(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(RecordingScorer(), max_wait_ms=-1)


def test_loop_batcher_scores_one_loop_turn_in_one_call_on_the_loop() -> None:
    """Calls made in the same loop turn share one score_batch on the loop's own thread, each
    caller gets the score of its own text, and the shipped model's scores are unchanged."""
    model = OnnxScorer("prompt-features-v1", device="cpu")
    texts = [*PARITY_TEXTS, *(f"question {i}: what is {i} + {i}?" for i in range(30))]

    async def run() -> tuple[list[float], list[float], RecordingScorer, int]:
        batched = LoopBatcher(model)
        scores = await asyncio.gather(*(batched.score(t) for t in texts))
        recording = RecordingScorer()
        batcher = LoopBatcher(recording, max_batch=8)
        first = await asyncio.gather(*(batcher.score(t) for t in ["a", "bb", "ccc"]))
        later = await batcher.score("dddd")  # a later turn: a batch of its own
        assert later == 0.004
        return list(scores), first, recording, batched.batches_run

    scores, first, recording, runs = asyncio.run(run())
    assert scores == [model.score(t) for t in texts]
    assert runs == 1
    assert first == [0.001, 0.002, 0.003]
    assert recording.batches == [["a", "bb", "ccc"], ["dddd"]]
    assert recording.threads == {threading.get_ident()}  # no worker thread


def test_loop_batcher_splits_at_max_batch_and_skips_cancelled_callers() -> None:
    recording = RecordingScorer()

    async def run() -> list[float]:
        batcher = LoopBatcher(recording, max_batch=2)
        tasks = [asyncio.ensure_future(batcher.score(t)) for t in ["a", "bb", "ccc", "dddd"]]
        await asyncio.sleep(0)  # every task has queued its text
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return [d for d in done if isinstance(d, float)]

    assert asyncio.run(run()) == [0.001, 0.003, 0.004]
    assert recording.batches == [["a"], ["ccc", "dddd"]]


def test_loop_batcher_gives_every_caller_the_scorers_error_and_refuses_after_close() -> None:
    async def run() -> list[BaseException | float]:
        batcher = LoopBatcher(FailingScorer())
        results = await asyncio.gather(
            *(batcher.score(t) for t in ["a", "b"]), return_exceptions=True
        )
        await batcher.aclose()
        with pytest.raises(ScorerError, match="closed"):
            await batcher.score("c")
        return list(results)

    results = asyncio.run(run())
    assert all(isinstance(r, ScorerError) and "exploded" in str(r) for r in results)
