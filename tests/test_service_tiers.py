"""Provider service tiers: a workload an API tier sends at flex is sent ``service_tier: flex``,
charged and estimated at flex's price, planned at it, spilled on flex's 429, and a policy that
names a service tier its provider does not take is refused where it says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import cascade
from cascade.core.day_traffic import HOURS, DayTraffic, Flow, VisitMix
from cascade.core.fleet_plan import fleets
from cascade.core.operating_point import tier_models
from cascade.errors import PolicyError
from cascade.policy import parse_policy
from cascade.run.pricing import Pricer
from cascade.tiers.base import Usage
from tests.servers import running_tier, serving
from tests.upstreams import ScriptedTier

# gpt-4o's list prices, and flex at half of them.
STANDARD_IN, STANDARD_OUT = Decimal("2.5") / 1_000_000, Decimal(10) / 1_000_000
FLEX_IN, FLEX_OUT = Decimal("1.25") / 1_000_000, Decimal(5) / 1_000_000
POLICY = """\
name: flexible
tiers:
  - name: frontier
    model: openai/gpt-4o
    kind: api
    endpoint: "{url}/v1"
    api_key_env: CASCADE_SIMULATED_KEY
    price: {{input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}}
    service_tiers:
      flex:
        workloads: [batch]
        price: {{input_usd_per_mtok: 1.25, output_usd_per_mtok: 5}}
        timeouts: {{first_byte_s: 900, total_s: 900}}
        expected_latency_s: 60
workloads:
  interactive: {{}}
  batch: {{}}
"""
HI = [{"role": "user", "content": "Name a prime number above 10."}]


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The policy above, its one tier the simulated frontier called through litellm."""
    monkeypatch.setenv("CASCADE_SIMULATED_KEY", "sk-simulated")
    with running_tier("frontier", time_scale=0.01) as url:
        path = tmp_path / "flexible.yaml"
        path.write_text(POLICY.format(url=url))
        yield path


def _run(policy: Path, workload: str) -> tuple[cascade.Decision, cascade.Completion]:
    async def use() -> tuple[cascade.Decision, cascade.Completion]:
        async with cascade.Router.open(policy) as router:
            request = cascade.ChatRequest.of({"messages": HI, "max_tokens": 100})
            decision = await router.plan(request, workload=workload)
            return decision, await router.run(request, decision)

    return asyncio.run(use())


def test_a_batch_call_is_sent_at_flex_and_charged_at_flexs_price(policy: Path) -> None:
    """The simulated frontier receives ``service_tier: flex`` (it answers that flex served the
    call), and the ledger's cost is the answer's tokens at $1.25/M in and $5/M out."""
    decision, done = _run(policy, "batch")
    assert done.body["service_tier"] == "flex"
    (attempt,) = done.attempts
    assert attempt.usage is not None
    usage = attempt.usage
    assert attempt.cost_usd == usage.prompt_tokens * FLEX_IN + usage.completion_tokens * FLEX_OUT
    assert decision.estimated_cost_usd == decision.prompt_tokens * FLEX_IN + 100 * FLEX_OUT
    assert "service tier flex (expected 60 s)" in decision.reason


def test_an_interactive_call_is_sent_and_charged_at_the_default(policy: Path) -> None:
    """A workload the tier does not list is sent without ``service_tier`` (the simulated tier
    names none back) and costs the tier's own price."""
    decision, done = _run(policy, "interactive")
    assert "service_tier" not in done.body
    (attempt,) = done.attempts
    assert attempt.usage is not None
    usage = attempt.usage
    expected = usage.prompt_tokens * STANDARD_IN + usage.completion_tokens * STANDARD_OUT
    assert attempt.cost_usd == expected
    assert decision.estimated_cost_usd == decision.prompt_tokens * STANDARD_IN + 100 * STANDARD_OUT


def test_a_call_is_priced_at_its_workloads_service_tier() -> None:
    """1,000 prompt and 200 answer tokens: at flex 1,000 x $1.25/M + 200 x $5/M = $0.00225; at
    the default price twice that, $0.0045."""
    tier = parse_policy(POLICY.format(url="http://127.0.0.1:9")).tiers[0]
    usage = Usage(1000, 200)
    pricer = Pricer()
    flex = pricer.attempt(tier, "primary", "ok", usage=usage, latency_s=1, workload="batch")
    default = pricer.attempt(tier, "primary", "ok", usage=usage, latency_s=1)
    assert flex.cost_usd == Decimal("0.00225")
    assert default.cost_usd == Decimal("0.0045")


def test_without_a_price_flex_is_priced_from_litellms_map() -> None:
    """A tier priced from litellm's map: gpt-5 at flex costs the map's flex prices ($0.625/M in,
    $5/M out), half its standard ones: 1,000 x $0.625/M + 200 x $5/M = $0.001625."""
    from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

    text = POLICY.format(url="http://127.0.0.1:9").replace("gpt-4o", "gpt-5")
    text = text.replace("    price: {input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}\n", "")
    text = text.replace("        price: {input_usd_per_mtok: 1.25, output_usd_per_mtok: 5}\n", "")
    tier = parse_policy(text).tiers[0]
    pricer = Pricer(LiteLLMClient().rates)
    flex = pricer.attempt(
        tier, "primary", "ok", usage=Usage(1000, 200), latency_s=1, workload="batch"
    )
    default = pricer.attempt(tier, "primary", "ok", usage=Usage(1000, 200), latency_s=1)
    assert flex.cost_usd == Decimal("0.001625")
    assert default.cost_usd == Decimal("0.00325")


def test_a_flex_429_spills_to_the_overflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flex without capacity answers 429 (OpenAI's ``resource_unavailable``): the call is
    ``rate_limited`` and the request spills to the tier's overflow, which gets no
    ``service_tier`` of its own."""
    monkeypatch.setenv("CASCADE_SIMULATED_KEY", "sk-simulated")
    flex, other = ScriptedTier("flex", mode="429"), ScriptedTier("other")
    with serving(flex.app()) as f, serving(other.app()) as o:
        text = POLICY.format(url=f).replace("workloads:\n  interactive", _OVERFLOW.format(url=o))
        policy = tmp_path / "spilling.yaml"
        policy.write_text(text)
        _, done = _run(policy, "batch")
    assert [(a.tier, a.role, a.error_class) for a in done.attempts] == [
        ("frontier", "primary", "rate_limited"),
        ("standard", "spill", None),
    ]
    assert flex.requests[0]["service_tier"] == "flex"
    assert "service_tier" not in other.requests[0]


_OVERFLOW = """\
    overflow: standard
  - name: standard
    model: openai/gpt-4o
    kind: api
    endpoint: "{url}/v1"
    api_key_env: CASCADE_SIMULATED_KEY
    price: {{input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}}
workloads:
  interactive"""


def test_plan_prices_a_batch_workloads_api_work_at_flex() -> None:
    """All 1,000 batch visits a day of 100 answer tokens reach the API, at flex's $5/M out:
    $0.50 a day, where the interactive workload's same visits cost $1.00."""
    policy = parse_policy(POLICY.format(url="http://127.0.0.1:9"))
    mix = VisitMix(
        prompt_tokens=0, cached_tokens=0, completion_tokens=100, decode_tokens=100, prefill_tokens=0
    )
    day = [1000.0 / HOURS] * HOURS
    for workload, usd in (("batch", 0.50), ("interactive", 1.00)):
        traffic = DayTraffic((Flow(workload, "frontier", tuple(day), mix),), days=1, requests=1)
        (outcome,) = fleets(policy, traffic, tier_models(policy, traffic), {})
        assert outcome.total_usd == pytest.approx(usd)


def _refused(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[batch]", "[nightly]"),
            r"service_tiers\.flex\.workloads\[0\]: unknown workload 'nightly'",
        ),
        (("openai/gpt-4o", "mistral/mistral-large"), r"only openai/, azure/.* take a service_tier"),
        (
            ("openai/gpt-4o", "anthropic/claude-sonnet-4-5"),
            r"anthropic takes service_tier auto, standard_only, not 'flex'",
        ),
        (
            ("        price: {input_usd_per_mtok: 1.25, output_usd_per_mtok: 5}\n", ""),
            r"flex\.price: the tier's price is its standard one",
        ),
        (("kind: api", "kind: self_hosted"), r"a self_hosted tier has none"),
    ],
)
def test_a_service_tier_the_policy_cannot_use_is_refused(
    change: tuple[str, str], message: str
) -> None:
    """Each mistake is reported at its place with what is allowed."""
    text = POLICY.format(url="http://127.0.0.1:9").replace(*change)
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_a_workload_goes_to_one_service_tier_per_tier() -> None:
    text = POLICY.format(url="http://127.0.0.1:9")
    text = text.replace(
        "        expected_latency_s: 60\n",
        "        expected_latency_s: 60\n      priority:\n        workloads: [batch]\n"
        "        price: {input_usd_per_mtok: 4.25, output_usd_per_mtok: 17}\n",
    )
    assert "'batch' is already sent at 'flex'" in _refused(text)
