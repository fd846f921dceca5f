"""The ``verify`` step: checks on a cheaper tier's answer that send the request up a tier.

Each check looks at the OpenAI answer (and the request that asked for it) and either passes or
names what is wrong; :func:`find_problem` returns the first problem among the policy's checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from cascade.core.request import ChatRequest
from cascade.policy.model import Escalation

Check = Callable[[ChatRequest, Mapping[str, Any], Escalation], str | None]

# Openings of answers that decline the task. Anchored at the start: a refusal says so at once,
# while a helpful answer may quote such a phrase later on.
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry,? but |i apologi[sz]e,? but |sorry,? )?(?:i|we)\s*(?:can(?:no|')t|cannot|"
    r"am (?:not able|unable)|'m (?:not able|unable)|won'?t be able|must decline)\s+"
    r"(?:help|assist|do|provide|comply|answer|fulfil|complete)",
    re.IGNORECASE,
)


def _choice(body: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = body.get("choices") or [{}]
    first = choices[0]
    return first if isinstance(first, Mapping) else {}


def _message(body: Mapping[str, Any]) -> Mapping[str, Any]:
    message = _choice(body).get("message")
    return message if isinstance(message, Mapping) else {}


def _length(request: ChatRequest, body: Mapping[str, Any], rules: Escalation) -> str | None:
    if _choice(body).get("finish_reason") == "length":
        return "the answer was cut at max_tokens (finish_reason length)"
    return None


def _empty(request: ChatRequest, body: Mapping[str, Any], rules: Escalation) -> str | None:
    message = _message(body)
    if not str(message.get("content") or "").strip() and not message.get("tool_calls"):
        return "the answer is empty"
    return None


def _refusal(request: ChatRequest, body: Mapping[str, Any], rules: Escalation) -> str | None:
    message = _message(body)
    if message.get("refusal") or _REFUSAL.match(str(message.get("content") or "")):
        return "the answer refuses the task"
    return None


def _invalid_json(request: ChatRequest, body: Mapping[str, Any], rules: Escalation) -> str | None:
    wanted = request.response_format
    if not isinstance(wanted, Mapping) or wanted.get("type") not in ("json_object", "json_schema"):
        return None
    content = _message(body).get("content")
    if content is None and _message(body).get("tool_calls"):
        return None
    try:
        json.loads(str(content))
    except json.JSONDecodeError as exc:
        return f"response_format asks for JSON and the answer is not JSON ({exc.msg})"
    return None


def _invalid_tool_call(
    request: ChatRequest, body: Mapping[str, Any], rules: Escalation
) -> str | None:
    calls = _message(body).get("tool_calls")
    if not calls:
        return None
    offered = {
        (tool.get("function") or {}).get("name")
        for tool in request.tools or []
        if isinstance(tool, Mapping)
    }
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            return "a tool call has no function"
        if offered and function.get("name") not in offered:
            return f"a tool call names {function.get('name')!r}, which the request did not offer"
        try:
            arguments = json.loads(str(function.get("arguments")))
        except ValueError:
            return f"the arguments of tool call {function.get('name')!r} are not valid JSON"
        if not isinstance(arguments, dict):
            return f"the arguments of tool call {function.get('name')!r} are not a JSON object"
    return None


def _low_logprob(request: ChatRequest, body: Mapping[str, Any], rules: Escalation) -> str | None:
    logprobs = _choice(body).get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    values = [t["logprob"] for t in tokens or [] if isinstance(t, Mapping) and "logprob" in t]
    if not values:
        return None
    mean = sum(values) / len(values)
    if mean < rules.min_mean_logprob:
        return f"mean token logprob {mean:.2f} is below {rules.min_mean_logprob}"
    return None


CHECKS: dict[str, Check] = {
    "length": _length,
    "empty": _empty,
    "refusal": _refusal,
    "invalid_json": _invalid_json,
    "invalid_tool_call": _invalid_tool_call,
    "low_logprob": _low_logprob,
}


def find_problem(request: ChatRequest, body: Mapping[str, Any], rules: Escalation) -> str | None:
    """The first failed check, as ``"<check>: <what is wrong>"``, or None if the answer passes."""
    for name in rules.checks:
        problem = CHECKS[name](request, body, rules)
        if problem is not None:
            return f"{name}: {problem}"
    return None
