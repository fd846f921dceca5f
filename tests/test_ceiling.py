"""What a request can cost at most: above its real token counts, with every attempt and every
piece of evidence it may pay for."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cascade.core.pricing import tier_rates
from cascade.core.request import ChatRequest
from cascade.policy.loading import load_policy
from cascade.policy.model import Policy
from cascade.run.ceiling import ATTACHMENT_TOKENS, cost_ceiling, prompt_token_ceiling
from tests.test_tokens import KNOWN_COUNTS

POLICY = """\
name: ceiling
escalation: {max_attempts: 3}
tiers:
  - {name: small, model: s, kind: self_hosted, endpoint: "http://127.0.0.1:1/v1", threshold: 0.8,
     price: {input_usd_per_mtok: 1, output_usd_per_mtok: 2},
     verify: {samples: 4, witness: medium}}
  - {name: medium, model: m, kind: self_hosted, endpoint: "http://127.0.0.1:1/v1",
     threshold: 0.5, price: {input_usd_per_mtok: 3, output_usd_per_mtok: 5}}
  - {name: big, model: b, kind: api, price: {input_usd_per_mtok: 10, output_usd_per_mtok: 30}}
"""


def _request(**fields: Any) -> ChatRequest:
    return ChatRequest.of({"messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.fixture
def policy(write_policy: Callable[[str], Path]) -> Policy:
    return load_policy(write_policy(POLICY))


@pytest.mark.parametrize(("text", "cl100k"), KNOWN_COUNTS)
def test_the_prompt_ceiling_is_above_the_real_token_count(text: str, cl100k: int) -> None:
    """For English, code, JSON, logs, Chinese and Japanese alike, the prompt's ceiling is above
    what a real tokenizer counts (plus the chat template's few tokens)."""
    request = ChatRequest.of({"messages": [{"role": "user", "content": text}]})
    assert prompt_token_ceiling(request) >= cl100k + 8


def test_an_image_by_url_counts_a_whole_images_tokens() -> None:
    """An image given by URL is a few bytes but many tokens: each counts its allowance."""
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    text = {"type": "text", "text": "What is this?"}
    plain = _request(messages=[{"role": "user", "content": [text]}])
    with_images = _request(messages=[{"role": "user", "content": [text, image, image]}])
    added = prompt_token_ceiling(with_images) - prompt_token_ceiling(plain)
    assert added >= 2 * ATTACHMENT_TOKENS


def test_every_attempt_at_the_dearest_tier_with_its_evidence(policy: Policy) -> None:
    """Three attempts, each as dear as the dearest call: here the API tier's (its prompt and
    100 tokens of output), above small's four samples plus its witness on medium."""
    request = _request(max_tokens=100)
    prompt = prompt_token_ceiling(request)
    big = tier_rates(policy.tier("big"))
    assert big is not None
    expected = 3 * big.cost(prompt, 100)
    assert cost_ceiling(policy, request, policy.tiers, tier_rates) == expected


def test_samples_and_a_witness_count_when_they_are_the_dearest(policy: Policy) -> None:
    """Without the API tier, small's call with its four samples and medium's witness answer is
    the dearest call a run can make."""
    request = _request(max_tokens=1000)
    prompt = prompt_token_ceiling(request)
    small, medium = tier_rates(policy.tier("small")), tier_rates(policy.tier("medium"))
    assert small is not None
    assert medium is not None
    call = small.cost(prompt, 4 * 1000) + medium.cost(prompt, 1000)
    assert call > medium.cost(prompt, 1000)
    tiers = [policy.tier("small"), policy.tier("medium")]
    assert cost_ceiling(policy, request, tiers, tier_rates) == 3 * call


def test_a_witness_the_caller_may_not_use_is_not_paid_for(policy: Policy) -> None:
    """A key that may use small and big only gets no witness from medium: the ceiling leaves
    it out, as the run does."""
    request = _request(max_tokens=1000)
    prompt = prompt_token_ceiling(request)
    small = tier_rates(policy.tier("small"))
    assert small is not None
    tiers = [policy.tier("small"), policy.tier("big")]
    unmetered = {"big"}
    ceiling = cost_ceiling(
        policy,
        request,
        tiers,
        tier_rates,
        only={"small", "big"},
        metered=lambda tier: tier.name not in unmetered,
    )
    assert ceiling == 3 * small.cost(prompt, 4 * 1000)


def test_only_metered_tiers_count(policy: Policy) -> None:
    """When the budget covers API spend only, a request that may reach the API tier reserves
    for it alone, and one that may not reserves nothing."""
    request = _request(max_tokens=10)
    api_only = {"big"}

    def metered(tier: Any) -> bool:
        return tier.name in api_only

    everywhere = cost_ceiling(policy, request, policy.tiers, tier_rates, metered=metered)
    assert everywhere > 0
    self_hosted = [policy.tier("small"), policy.tier("medium")]
    assert cost_ceiling(policy, request, self_hosted, tier_rates, metered=metered) == Decimal(0)


def test_a_request_without_an_output_cap_has_no_ceiling(policy: Policy) -> None:
    """The output bounds the cost: a request must be capped before its ceiling is asked."""
    with pytest.raises(ValueError, match="max_tokens"):
        cost_ceiling(policy, _request(), policy.tiers, tier_rates)
