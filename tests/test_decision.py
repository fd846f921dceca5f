"""The decide step: thresholds, capacity, overflow, workloads and the cost estimate."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cascade.core.capacity import InFlightCounter, StaticCapacity
from cascade.core.decision import decide
from cascade.core.prompt import PreparedPrompt, prepare_prompt
from cascade.errors import RoutingError
from cascade.policy import Policy, parse_policy

THREE_TIERS = """\
name: three
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: http://127.0.0.1:8001/v1
    price: {gpu_usd_per_hour: 3.6, tokens_per_second: 1000, prefill_tokens_per_second: 10000}
    max_concurrency: 2
    threshold: 0.8
  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: http://127.0.0.1:8002/v1
    price: {gpu_usd_per_hour: 3.6, tokens_per_second: 500}
    max_concurrency: 1
    overflow: frontier
    threshold: 0.5
  - name: frontier
    model: openai/gpt-4o
    kind: api
    price: {input_usd_per_mtok: 2, output_usd_per_mtok: 10}
workloads:
  interactive: {}
  batch: {tiers: [small, medium], spill: false, expected_output_tokens: 100}
"""


@pytest.fixture
def policy() -> Policy:
    """A three-tier policy: small (no overflow), medium (overflows to frontier), frontier."""
    return parse_policy(THREE_TIERS)


@pytest.fixture
def prompt() -> PreparedPrompt:
    """A one-message request."""
    return prepare_prompt([{"role": "user", "content": "What is the capital of France?"}])


def test_confident_request_goes_to_the_cheapest_tier(
    policy: Policy, prompt: PreparedPrompt
) -> None:
    """A confidence above the first threshold routes to the first tier and says why."""
    d = decide(policy, 0.9, prompt, capacity=StaticCapacity())
    assert (d.tier, d.model, d.kind) == ("small", "distill-1.5b", "self_hosted")
    assert d.reason == "confidence 0.900 clears small's threshold 0.800"
    assert d.spilled_from is None
    assert not d.queued


def test_middling_confidence_goes_to_the_middle_tier(
    policy: Policy, prompt: PreparedPrompt
) -> None:
    """A confidence between thresholds skips the tiers it does not clear, naming them."""
    d = decide(policy, 0.6, prompt, capacity=StaticCapacity())
    assert d.tier == "medium"
    assert d.reason == "confidence 0.600 is below small's threshold 0.800; medium (0.500) takes it"


def test_low_confidence_goes_to_the_frontier(policy: Policy, prompt: PreparedPrompt) -> None:
    """A low confidence falls through to the last tier, which takes everything."""
    d = decide(policy, 0.1, prompt, capacity=StaticCapacity())
    assert d.tier == "frontier"
    assert "below small's threshold 0.800 and medium's threshold 0.500" in d.reason


def test_saturated_tier_spills_to_its_overflow(policy: Policy, prompt: PreparedPrompt) -> None:
    """A full tier with an overflow target takes the request, and the decision says from where."""
    d = decide(policy, 0.6, prompt, capacity=StaticCapacity({"medium": 1}))
    assert d.tier == "frontier"
    assert d.spilled_from == "medium"
    assert "medium is saturated (1/1 in flight); spilled to its overflow frontier" in d.reason


def test_saturated_tier_without_overflow_moves_up(policy: Policy, prompt: PreparedPrompt) -> None:
    """A full tier without overflow hands the request to the next stronger tier with room."""
    d = decide(policy, 0.9, prompt, capacity=StaticCapacity({"small": 2}))
    assert d.tier == "medium"
    assert d.spilled_from == "small"
    assert "moved up to medium, the next tier with room" in d.reason


def test_live_in_flight_counts_drive_spill(policy: Policy, prompt: PreparedPrompt) -> None:
    """Calls tracked in flight saturate a tier while they run and free it when they end."""
    counter = InFlightCounter()
    with counter.track("small"), counter.track("small"):
        assert decide(policy, 0.9, prompt, capacity=counter).tier == "medium"
    assert decide(policy, 0.9, prompt, capacity=counter).tier == "small"


def test_batch_workload_queues_instead_of_spilling(policy: Policy, prompt: PreparedPrompt) -> None:
    """A workload that may not spill queues on its saturated tier rather than paying for the API."""
    full = StaticCapacity({"small": 2, "medium": 1})
    d = decide(policy, 0.2, prompt, capacity=full, workload="batch")
    assert d.tier == "medium"
    assert d.queued
    assert d.reason.endswith(
        "this workload does not spill, so it queues (workload batch allows small, medium)"
    )


def test_workload_limits_the_tiers(policy: Policy, prompt: PreparedPrompt) -> None:
    """A batch request never reaches a tier its workload excludes, however low its confidence."""
    assert decide(policy, 0.0, prompt, capacity=StaticCapacity(), workload="batch").tier == "medium"


def test_a_callers_tiers_narrow_the_workloads(policy: Policy, prompt: PreparedPrompt) -> None:
    """A caller whose key allows small and medium never gets the frontier, even saturated or
    unsure, and the decision carries the narrowed tiers for the escalations after it."""
    only = {"small", "medium"}
    d = decide(policy, 0.0, prompt, capacity=StaticCapacity(), only_tiers=only)
    assert (d.tier, d.only_tiers) == ("medium", ("small", "medium"))
    assert d.reason.endswith("(this caller may use small, medium)")
    full = StaticCapacity({"medium": 1})  # medium's overflow is the frontier: not allowed here
    d = decide(policy, 0.6, prompt, capacity=full, only_tiers=only)
    assert d.tier == "medium"
    assert d.queued
    with pytest.raises(RoutingError, match=r"workload 'batch' .* none of the tiers.*frontier"):
        decide(
            policy,
            0.5,
            prompt,
            capacity=StaticCapacity(),
            workload="batch",
            only_tiers={"frontier"},
        )


def test_everything_saturated_queues_on_the_chosen_tier(
    policy: Policy, prompt: PreparedPrompt
) -> None:
    """When every allowed tier is full, the request queues on the tier its confidence chose."""
    full = StaticCapacity({"small": 2, "medium": 1, "frontier": 64})
    d = decide(policy, 0.9, prompt, capacity=full)
    assert (d.tier, d.queued) == ("small", True)
    assert "every allowed tier is saturated" in d.reason


def test_everything_saturated_waits_in_the_first_queue_with_room(
    policy: Policy, prompt: PreparedPrompt
) -> None:
    """With every allowed tier full, a request whose tier's queue is full too waits in the next
    queue along its way (stronger tiers, cheapest first); with every queue full the decision
    says so (the router will refuse it)."""
    slots = {"small": 2, "medium": 1, "frontier": 64}
    small_full = StaticCapacity(slots, waiting={"small": 2})
    d = decide(policy, 0.9, prompt, capacity=small_full)
    assert (d.tier, d.queued, d.spilled_from) == ("medium", True, "small")
    assert d.reason.endswith("every allowed tier is saturated, so it queues on medium")
    all_full = StaticCapacity(slots, waiting={"small": 2, "medium": 1, "frontier": 64})
    d = decide(policy, 0.9, prompt, capacity=all_full)
    assert (d.tier, d.queued) == ("small", True)
    assert d.reason.endswith("every allowed tier is saturated and its queue full")


def test_unknown_workload_is_a_clear_error(policy: Policy, prompt: PreparedPrompt) -> None:
    """Asking for a workload the policy lacks names the allowed ones."""
    with pytest.raises(
        RoutingError, match=r"unknown workload 'nightly'.*allowed: interactive, batch"
    ):
        decide(policy, 0.5, prompt, capacity=StaticCapacity(), workload="nightly")


def test_estimated_cost_uses_max_tokens_or_the_workload_default(
    policy: Policy, prompt: PreparedPrompt
) -> None:
    """The estimate prices the prompt plus max_tokens (or the workload's expected output)."""
    d = decide(policy, 0.1, prompt, capacity=StaticCapacity(), max_tokens=1000)
    expected = prompt.prompt_tokens * Decimal("0.000002") + 1000 * Decimal("0.00001")
    assert d.estimated_cost_usd == expected
    batch = decide(policy, 0.9, prompt, capacity=StaticCapacity(), workload="batch")
    assert batch.expected_output_tokens == 100
    # small: $3.6/hour = $0.001/s; 100 output tokens at 1,000 tok/s is 0.1 s.
    gpu = Decimal("0.0001") + prompt.prompt_tokens * Decimal("0.0000001")
    assert batch.estimated_cost_usd is not None
    assert batch.estimated_cost_usd.quantize(Decimal("1e-15")) == gpu.quantize(Decimal("1e-15"))


def test_decision_records_policy_version_and_prefix(policy: Policy, prompt: PreparedPrompt) -> None:
    """A decision carries the policy's name and version and the prompt's prefix hash."""
    d = decide(policy, 0.9, prompt, capacity=StaticCapacity())
    assert (d.policy, d.policy_version) == ("three", policy.fingerprint)
    assert d.prefix_hash == prompt.prefix_hash
    assert d.to_dict()["estimated_cost_usd"] == str(d.estimated_cost_usd)
