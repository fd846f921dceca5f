"""Latency targets in the price: a workload's max_tpot_ms sets a self-hosted tier's batch, and
so what its tokens cost; the step-time line behind it, checked by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from cascade.core.capacity import StaticCapacity
from cascade.core.decision import decide
from cascade.core.pricing import tier_rates, workload_rates
from cascade.core.prompt import prepare_prompt
from cascade.core.serving_model import SequenceLoad, step_line
from cascade.errors import PolicyError
from cascade.policy import Policy, parse_policy
from cascade.run.pricing import Pricer
from cascade.tiers.base import Usage

# One GPU at $3.60/hour ($0.001/s). At batch 10 it decodes 1,000 tok/s (a 10 ms step); one
# sequence alone 250 tok/s (a 4 ms step): the line is 3.33 ms + 0.667 ms per sequence.
LATENCY = """\
name: latency
tiers:
  - name: gpu
    model: distill-7b
    kind: self_hosted
    endpoint: http://127.0.0.1:8002/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000, prefill_tokens_per_second: 10000,
            batch: 10, single_stream_tokens_per_second: {single}}}
    max_concurrency: 10
    overflow: api
  - name: api
    model: openai/gpt-4o
    kind: api
    price: {{input_usd_per_mtok: 2, output_usd_per_mtok: 10}}
workloads:
  interactive: {{max_tpot_ms: 6.5}}
  batch: {{spill: false}}
"""


@pytest.fixture
def policy() -> Policy:
    """The latency policy: interactive with a 6.5 ms target, batch with none."""
    return parse_policy(LATENCY.format(single=250))


def test_the_line_passes_through_both_measurements(policy: Policy) -> None:
    """The step line gives back the two speeds it was built from: 4 ms alone, 10 ms at 10."""
    line = step_line(policy.tier("gpu"))
    assert line is not None
    assert line.decode_step(1) == pytest.approx(0.004)
    assert line.decode_step(10) == pytest.approx(0.010)
    assert line.tokens_per_second(10) == pytest.approx(1000)
    assert step_line(policy.tier("api")) is None


def test_a_latency_target_lowers_the_batch_and_raises_the_price(policy: Policy) -> None:
    """6.5 ms a token allows batch 4 (a 6 ms step; 5 would take 6.67 ms), where an output token
    costs $0.001/s x 6 ms / 4 = $1.5e-6 against $1e-6 at the full batch of 10."""
    line = step_line(policy.tier("gpu"))
    assert line is not None
    assert line.operating_batch(0.0065) == 4
    assert line.operating_batch(None) == 10
    interactive = workload_rates(policy.tier("gpu"), policy.workloads["interactive"])
    batch = workload_rates(policy.tier("gpu"), policy.workloads["batch"])
    assert interactive is not None
    assert batch is not None
    assert interactive.output.quantize(Decimal("1e-15")) == Decimal("1.5e-6").quantize(
        Decimal("1e-15")
    )
    assert batch.output == Decimal("0.000001")
    assert interactive.input == batch.input  # prefill is compute-bound: no batch in its price
    assert interactive.output > batch.output


def test_no_target_leaves_the_rates_as_they_were(policy: Policy) -> None:
    """A workload without a target, or an API tier, gets the tier's rates unchanged."""
    gpu, api = policy.tier("gpu"), policy.tier("api")
    assert workload_rates(gpu, policy.workloads["batch"]) is tier_rates(gpu)
    assert workload_rates(api, policy.workloads["interactive"]) is tier_rates(api)


def test_the_decision_estimates_at_the_workloads_batch(policy: Policy) -> None:
    """The same request routed to the GPU tier is estimated dearer as interactive than as batch:
    1,000 output tokens cost $0.0015 at batch 4 against $0.001 at batch 10."""
    prompt = prepare_prompt([{"role": "user", "content": "hi"}])
    costs = {}
    for workload in ("interactive", "batch"):
        d = decide(
            policy, 0.9, prompt, capacity=StaticCapacity(), workload=workload, max_tokens=1000
        )
        assert d.tier == "gpu"
        assert d.estimated_cost_usd is not None
        costs[workload] = d.estimated_cost_usd - prompt.prompt_tokens * Decimal("0.0000001")
    assert costs["interactive"].quantize(Decimal("1e-12")) == Decimal("0.0015")
    assert costs["batch"].quantize(Decimal("1e-12")) == Decimal("0.001")


def test_the_ledger_charges_each_call_at_its_workloads_batch(policy: Policy) -> None:
    """What a call is charged (the router's Pricer) follows the workload's latency target like
    the estimate: 1,000 output tokens cost $0.0015 as interactive (batch 4), $0.001 as batch."""
    pricer = Pricer(policy=lambda: policy)
    usage = Usage(0, 1000)
    costs = {
        workload: pricer.attempt(
            policy.tier("gpu"), "primary", "ok", usage=usage, latency_s=0.1, workload=workload
        ).cost_usd
        for workload in ("interactive", "batch")
    }
    assert costs["interactive"].quantize(Decimal("1e-12")) == Decimal("0.0015")
    assert costs["batch"].quantize(Decimal("1e-12")) == Decimal("0.001")


def test_joining_sequences_lengthen_the_mean_step(policy: Policy) -> None:
    """At batch 10 with 100-token outputs, 0.1 sequences join a step on average (a Poisson
    count), each prefilling 500 tokens: a step one joins takes (10 + 500) / 10,000 = 51 ms, two
    101 ms, none 10 ms: 14.1 ms on average."""
    line = step_line(policy.tier("gpu"))
    assert line is not None
    load = SequenceLoad(prefill_tokens=500, output_tokens=100)
    shares = [math.exp(-0.1) * 0.1**k / math.factorial(k) for k in range(8)]
    steps = [max(0.010, (10 + 500 * k) / 10_000) for k in range(8)]
    expected = sum(p * t for p, t in zip(shares, steps, strict=True))
    assert line.mean_step(10, load) == pytest.approx(expected)
    assert expected == pytest.approx(0.0141, abs=1e-4)
    # Half the measured context: the KV part of the step (6.67 ms of 10 at batch 10) halves.
    halved = SequenceLoad(prefill_tokens=0, output_tokens=100, context_tokens=1000)
    price = parse_policy(
        LATENCY.format(single=250).replace("batch: 10,", "batch: 10, context_tokens: 2000,")
    )
    line = step_line(price.tier("gpu"))
    assert line is not None
    assert line.mean_step(10, halved) == pytest.approx(0.010 - 0.020 / 6)


def test_an_unreachable_target_serves_one_sequence_at_a_time(policy: Policy) -> None:
    """A target below the single-stream step still runs batch 1, priced there."""
    line = step_line(policy.tier("gpu"))
    assert line is not None
    assert line.operating_batch(0.001) == 1
    assert line.mean_step(1) > 0.001


def test_a_target_needs_the_single_stream_speed() -> None:
    """A latency target on a workload whose GPU tier lacks the single-stream speed is refused,
    naming the field and the tier."""
    text = LATENCY.format(single=250).replace(", single_stream_tokens_per_second: 250", "")
    with pytest.raises(PolicyError, match=r"max_tpot_ms.*single_stream_tokens_per_second.*gpu"):
        parse_policy(text)


@pytest.mark.parametrize("single", [50, 2000])
def test_a_single_stream_speed_outside_the_batch_speeds_is_refused(single: int) -> None:
    """One sequence can be neither slower than its share of a batch nor faster than the batch."""
    with pytest.raises(PolicyError, match=r"between tokens_per_second / batch \(100:"):
        parse_policy(LATENCY.format(single=single))
