"""What a request can cost at most: the amount a budget reserves before the first call.

A run makes at most ``escalation.max_attempts`` calls for an answer (the first, escalations and
spills), each to a tier the request may use, and each call at a tier with a ``verify`` block
brings its evidence: a ``samples: N`` call decodes N answers, and a witness tier is one more
call. So the ceiling is ``max_attempts`` times the dearest of those calls, evidence included,
each priced at

- the prompt's tokens at most: the request's size in bytes as JSON (a token of a byte-level BPE
  vocabulary holds at least one byte, and the JSON's quotes and keys outweigh the few tokens a
  chat template adds per message), plus :data:`ATTACHMENT_TOKENS` for each part of a message
  that is not text (an image or a file given by URL costs tokens its bytes here do not show),
  plus :data:`TOOLS_PREAMBLE_TOKENS` when tools are given (providers wrap them in instructions);
- the output the request allows: ``max_tokens`` (or ``max_completion_tokens``), times the
  answers asked for (the client's ``n``, or the tier's ``samples``).

It is a bound, not an estimate: a request usually costs a small part of it. A tier without a
known price costs nothing here, as it does in the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from decimal import Decimal

import orjson

from cascade.core.pricing import Rates
from cascade.core.request import ChatRequest
from cascade.policy.model import Policy, Tier
from cascade.run.evidence import verify_rules

__all__ = ["ATTACHMENT_TOKENS", "TOOLS_PREAMBLE_TOKENS", "cost_ceiling", "prompt_token_ceiling"]

ATTACHMENT_TOKENS = 4096
"""Tokens counted for each message part that is not text: more than providers charge for one
image (OpenAI's largest at high detail, Anthropic's at its size limit: under 2,500)."""
TOOLS_PREAMBLE_TOKENS = 1024
"""Tokens counted for the instructions a provider adds around tool definitions (a few
hundred)."""


def prompt_token_ceiling(request: ChatRequest) -> int:
    """The most prompt tokens ``request`` can cost on any tier (see the module docstring)."""
    tokens = len(orjson.dumps(request.body, default=str))
    for message in request.messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            tokens += ATTACHMENT_TOKENS * sum(1 for part in content if not _is_text(part))
    if request.tools:
        tokens += TOOLS_PREAMBLE_TOKENS
    return tokens


def cost_ceiling(
    policy: Policy,
    request: ChatRequest,
    allowed: Sequence[Tier],
    rates: Callable[[Tier], Rates | None],
    *,
    only: Collection[str] | None = None,
    metered: Callable[[Tier], bool] = lambda tier: True,
) -> Decimal:
    """The most ``request`` can cost when its calls go to the ``allowed`` tiers (cheapest
    first, as :meth:`~cascade.run.router.Router.allowed` gives them; ``only``: the caller's
    tiers, which also bound its witnesses), counting the tiers that are ``metered``.

    The request must cap its output (``max_tokens`` or ``max_completion_tokens``).
    """
    output = request.max_output_tokens
    if output is None:
        raise ValueError("a request without max_tokens has no cost ceiling; cap it first")
    prompt = prompt_token_ceiling(request)

    def call(tier: Tier, answers: int) -> Decimal:
        priced = rates(tier) if metered(tier) else None
        return Decimal(0) if priced is None else priced.most(prompt, output * answers)

    def with_evidence(tier: Tier) -> Decimal:
        rules = verify_rules(tier, allowed, request, only)
        if rules is None:
            return call(tier, request.n)
        cost = call(tier, rules.samples or 1)
        if rules.witness is not None:
            cost += call(policy.tier(rules.witness), 1)
        return cost

    dearest = max((with_evidence(tier) for tier in allowed), default=Decimal(0))
    return dearest * policy.escalation.max_attempts


def _is_text(part: object) -> bool:
    return isinstance(part, Mapping) and part.get("type", "text") == "text"
