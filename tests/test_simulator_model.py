"""The simulator's timing model, labels and answers, checked without a server."""

from __future__ import annotations

import json

import pytest

from cascade.errors import CascadeError
from cascade.simulator.answers import Ask, compose, split_tokens
from cascade.simulator.profiles import PROFILES, GpuTiming, decode_throughput, step_seconds
from cascade.simulator.settings import SimulatorSettings
from tests.servers import shared_labels


def _gpu(profile: str) -> GpuTiming:
    timing = PROFILES[profile].timing
    assert isinstance(timing, GpuTiming)
    return timing


@pytest.mark.parametrize(("profile", "reference"), [("1.5b", 32_000), ("7b", 14_500)])
def test_batch_64_throughput_is_near_the_reference(profile: str, reference: float) -> None:
    """At batch 64 and the reference context, each GPU profile is within 10% of DESIGN.md."""
    assert decode_throughput(_gpu(profile), 64) == pytest.approx(reference, rel=0.1)


def test_small_batches_are_memory_bound_and_huge_ones_compute_bound() -> None:
    """A step costs about the same for 1 or 8 sequences, but grows linearly once compute binds."""
    timing = _gpu("7b")
    assert step_seconds(timing, 8, 0, 0) == step_seconds(timing, 1, 0, 0)
    assert step_seconds(timing, 4000, 0, 0) == pytest.approx(2 * step_seconds(timing, 2000, 0, 0))


def test_prefill_is_paid_in_compute() -> None:
    """Prefilling a long prompt makes that step longer than a plain decode step."""
    timing = _gpu("1.5b")
    assert step_seconds(timing, 1, 0, 8000) > 5 * step_seconds(timing, 1, 0, 0)


def test_accuracy_rises_with_the_profile() -> None:
    """On the shipped data the 1.5b is right less often than the 7b, and the 7b than the
    frontier; the 1.5b keeps about 80% of the 7b's right answers."""
    labels = shared_labels()
    small, medium = PROFILES["1.5b"].quality, PROFILES["7b"].quality
    assert (
        labels.accuracy(small)
        < labels.accuracy(medium)
        < labels.accuracy(PROFILES["frontier"].quality)
    )
    prompts = [f"Question {i}: how many apples are left?" for i in range(600)]
    right = {
        name: sum(labels.is_correct(PROFILES[name].quality, p, None) for p in prompts)
        for name in ("1.5b", "7b")
    }
    assert 0.7 < right["1.5b"] / right["7b"] < 0.9


def test_answers_are_deterministic_and_whitespace_insensitive() -> None:
    """The same prompt, however it is spaced, gets the same answer every time."""
    labels = shared_labels()
    first = compose(Ask("What is  the capital\nof Peru?"), PROFILES["7b"], labels)
    again = compose(Ask("What is the capital of Peru? "), PROFILES["7b"], labels)
    assert first.correct == again.correct
    assert first.text == again.text


def test_multiple_choice_answers_name_an_option() -> None:
    """A prompt with lettered options is answered with one of its options."""
    prompt = (
        "Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Neon\nAnswer:"
    )
    reply = compose(Ask(prompt), PROFILES["frontier"], shared_labels())
    assert any(f"The answer is {letter}." in reply.text for letter in "ABCD")


def test_weak_profiles_sometimes_break_json_at_their_rate() -> None:
    """The 1.5b profile emits invalid JSON for a share of prompts near its calibrated rate."""
    labels = shared_labels()
    broken = 0
    for i in range(400):
        reply = compose(Ask(f"Return item {i} as JSON.", json_mode=True), PROFILES["1.5b"], labels)
        try:
            json.loads(reply.text)
        except ValueError:
            broken += 1
    assert 0.04 < broken / 400 < 0.2


def test_frontier_tool_calls_always_parse() -> None:
    """The frontier profile never emits malformed tool-call arguments."""
    labels = shared_labels()
    tool = {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {}}}}
    for i in range(100):
        reply = compose(Ask(f"Look up order {i}.", tool=tool), PROFILES["frontier"], labels)
        assert json.loads(reply.text)["q"]


def test_split_tokens_round_trips() -> None:
    """Token pieces join back to the exact text."""
    text = "  Héllo, wörld!\n\tThe answer is 12,345.67 —  extraordinarily so.  "
    assert "".join(split_tokens(text)) == text


def test_settings_reject_unknown_profile_and_bad_scale() -> None:
    """Settings name the bad value and what is allowed."""
    with pytest.raises(CascadeError, match=r"unknown; allowed: 1\.5b, 7b, frontier"):
        SimulatorSettings(profile="70b")
    with pytest.raises(CascadeError, match="greater than 0"):
        SimulatorSettings(time_scale=0)
