"""Was a delivered answer right? The simulator's own ground truth, for demos that grade answers.

A simulated tier's answers are deterministic per prompt, profile and sample index
(:func:`~cascade.simulator.answers.compose_samples`), and each knows whether the data makes it
right. :func:`grade` finds the answer a client received among what the profiles would have
written and returns its verdict — what a user marking wrong answers would say, without the
router ever seeing it. Answers cut by ``max_tokens`` match by their start.
"""

from __future__ import annotations

from collections.abc import Iterable

from cascade.simulator.answers import Ask, compose_samples
from cascade.simulator.labels import LabelTable
from cascade.simulator.profiles import Profile

__all__ = ["grade"]


def grade(
    ask: Ask,
    delivered: str,
    profiles: Iterable[Profile],
    labels: LabelTable,
    *,
    samples: int = 8,
) -> bool | None:
    """True or False when ``delivered`` is one of the answers ``profiles`` give to ``ask`` (the
    first ``samples`` samples of each), None when it is none of them."""
    text = delivered.strip()
    if not text:
        return None
    for profile in profiles:
        for reply in compose_samples(ask, profile, labels, samples):
            written = reply.text.strip()
            if written == text or written.startswith(text):
                return reply.correct
    return None
