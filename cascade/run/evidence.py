"""The verify step's evidence: witnesses for a cheap tier's answer, and the verifier's verdict.

A tier with a ``verify`` block (:class:`~cascade.policy.parts.Verify`) answers with evidence:

- ``samples: N`` asks the tier for N answers in one call (OpenAI's ``n``). One is the *candidate*
  the client may get — the first, or with ``answer: majority`` one whose final answer most
  samples share — and the others are its witnesses. The call's usage covers every sample; it is
  split into the candidate's share (the prompt and its own output tokens) and the samples'
  share (their output tokens, by their length in characters), recorded as two attempts.
- ``witness: <tier>`` sends the same request to another tier in parallel; its answer is a
  witness, and the call an attempt of its own (role ``witness``).

The verifier (:class:`~cascade.model.verifier.Verifier`) then returns P(the candidate is good
enough) from the prompt, the candidate and the witnesses; :func:`judge` compares it with the
threshold.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cascade.core.request import ChatRequest
from cascade.model.code_evidence import looks_like_code
from cascade.model.final_answer import extract_final_answer, has_choices
from cascade.model.verifier import Verifier
from cascade.policy.model import Tier, Verify
from cascade.tiers.base import JSON, TierAnswer, Usage

__all__ = [
    "Samples",
    "Verdict",
    "answer_text",
    "first_choice",
    "judge",
    "prompt_text",
    "split_samples",
    "verify_rules",
]


@dataclass(frozen=True)
class Verdict:
    """What the verify step concluded about one candidate answer."""

    confidence: float | None
    """The verifier's P(good enough); None when there was no witness to judge by."""
    accepted: bool
    reason: str
    """In the attempts' ``"<check>: <what>"`` form, e.g. ``verify: confidence 0.31 below 0.5``."""
    witnesses: int


@dataclass(frozen=True)
class Samples:
    """One call's ``n`` answers, split into the candidate and its witnesses."""

    candidate: TierAnswer
    """The answer the client would get: one choice, re-indexed 0, with its share of the usage."""
    witnesses: tuple[str, ...]
    sample_usage: Usage | None
    """The other samples' output tokens (no prompt: they shared the candidate's prefill); None
    when the tier sent one answer only."""
    chosen: int
    """Index of the candidate among the samples the tier sent."""


def verify_rules(
    tier: Tier, allowed: Sequence[Tier], request: ChatRequest, only: Collection[str] | None = None
) -> Verify | None:
    """The tier's verify block, when it applies to a complete answer: one choice asked for (a
    client's own ``n`` is left alone), and a stronger tier to escalate to. Its witness is left
    out when the caller may use ``only`` some tiers and it is not one of them (the answer then
    has no witness: ``on_missing_evidence`` says what happens)."""
    rules = tier.verify
    if rules is None or request.n != 1:
        return None
    place = next((i for i, t in enumerate(allowed) if t is tier), len(allowed))
    if place >= len(allowed) - 1:
        return None
    if only is not None and rules.witness is not None and rules.witness not in only:
        return rules.model_copy(update={"witness": None})
    return rules


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text the verifier reads as the prompt: the last user message's text."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return _text(messages[-1].get("content")) if messages else ""


def answer_text(choice: Mapping[str, Any]) -> str:
    """A choice's answer as text: its content, or its tool calls as ``name {arguments}`` lines."""
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return ""
    content = _text(message.get("content"))
    calls = message.get("tool_calls")
    if not content and isinstance(calls, list):
        lines = []
        for call in calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                lines.append(f"{function.get('name')} {_canonical_json(function.get('arguments'))}")
        return "\n".join(lines)
    return content


def first_choice(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first choice of an OpenAI ``chat.completion`` body (empty if it has none)."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, Mapping) else {}


def split_samples(answer: TierAnswer, prompt: str, *, majority: bool) -> Samples:
    """The candidate and witnesses among the choices of an ``n``-sample answer."""
    choices = [c for c in answer.body.get("choices") or [] if isinstance(c, Mapping)]
    if len(choices) <= 1:
        return Samples(answer, (), None, 0)
    texts = [answer_text(c) for c in choices]
    chosen = _majority(texts, prompt) if majority else 0
    body: JSON = {**answer.body, "choices": [{**choices[chosen], "index": 0}]}
    usage = answer.usage
    lengths = [max(len(t), 1) for t in texts]
    own = round(usage.completion_tokens * lengths[chosen] / sum(lengths))
    candidate_usage = replace(usage, completion_tokens=own)
    body["usage"] = _usage_body(body.get("usage"), candidate_usage)
    rest = Usage(0, usage.completion_tokens - own, 0, usage.estimated)
    witnesses = tuple(t for i, t in enumerate(texts) if i != chosen)
    return Samples(replace(answer, body=body, usage=candidate_usage), witnesses, rest, chosen)


async def judge(
    verifier: Verifier,
    rules: Verify,
    prompt: str,
    candidate: str,
    witnesses: Sequence[str],
) -> Verdict:
    """Accept ``candidate`` when the verifier's confidence clears ``rules.threshold``.

    A text answer is judged inline (well under a millisecond); a code answer is run beside the
    witnesses' code in a sandbox (tens of milliseconds, up to its time limits), in a worker
    thread so the event loop keeps serving.
    """
    accepted = rules.on_missing_evidence == "accept"
    action = "kept unverified" if accepted else "escalated"
    if not witnesses:
        return Verdict(None, accepted, f"verify: no witness answered; {action}", 0)
    if not verifier.can_judge(prompt, candidate):
        why = "no final answer the verifier can compare (open-ended text)"
        return Verdict(None, accepted, f"verify: {why}; {action}", len(witnesses))
    if looks_like_code(candidate):
        confidence = await asyncio.to_thread(verifier.confidence, prompt, candidate, witnesses)
    else:
        confidence = verifier.confidence(prompt, candidate, witnesses)
    accepted = confidence >= rules.threshold
    relation = "at or above" if accepted else "below"
    reason = (
        f"verify: confidence {confidence:.3f} {relation} {rules.threshold}"
        f" ({len(witnesses)} witness{'es' if len(witnesses) != 1 else ''})"
    )
    return Verdict(confidence, accepted, reason, len(witnesses))


def _majority(texts: Sequence[str], prompt: str) -> int:
    """Index of the first text whose final answer the most texts share (ties: the earliest)."""
    choices = has_choices(prompt)
    keys = []
    for text in texts:
        final = extract_final_answer(text, choices=choices)
        keys.append(final.key if final is not None else None)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    best = max(counts.values())
    if best <= 1:
        return 0
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def _usage_body(reported: Any, usage: Usage) -> dict[str, Any]:
    body = dict(reported) if isinstance(reported, Mapping) else {}
    body["prompt_tokens"] = usage.prompt_tokens
    body["completion_tokens"] = usage.completion_tokens
    body["total_tokens"] = usage.prompt_tokens + usage.completion_tokens
    return body


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    return ""


def _canonical_json(arguments: Any) -> str:
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(arguments)
