"""Reading a Chat Completions request at the proxy's edge."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cascade.server.openai_format import BadRequestError, ChatRequest, parse_chat_request

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "cascade", "messages": MESSAGES},
        {
            "model": "cascade/x",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 5,
            "n": 2,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "temperature": 0.2,
        },
        # lax forms pydantic accepts: the same request as their exact-typed twins
        {"model": "cascade", "messages": MESSAGES, "stream": "true", "max_tokens": "5"},
        {"model": "cascade", "messages": MESSAGES, "n": 2.0, "max_completion_tokens": 7.0},
    ],
)
def test_a_valid_request_reads_the_same_as_pydantic_validation(body: dict[str, Any]) -> None:
    """Exact-typed requests skip validation; what the proxy reads must not change by it."""
    request, parsed = parse_chat_request(json.dumps(body).encode())
    validated = ChatRequest.model_validate(body)
    fields = ChatRequest.model_fields
    assert {f: getattr(request, f) for f in fields} == {f: getattr(validated, f) for f in fields}
    assert parsed == body  # passed on to the tier unchanged


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "", "messages": MESSAGES}, "model: String should have at least 1 character"),
        ({"model": "cascade", "messages": []}, "messages: List should have at least 1 item"),
        ({"model": "cascade", "messages": MESSAGES, "n": 9}, "n: Input should be less than"),
        ({"model": "cascade", "messages": MESSAGES, "max_tokens": 0}, "max_tokens: Input should"),
        ({"model": "cascade", "messages": MESSAGES, "stream": "maybe"}, "stream: Input should"),
        ({"model": "cascade", "messages": MESSAGES, "tools": ["f"]}, "tools.0: Input should"),
    ],
)
def test_an_invalid_field_is_a_400_naming_it(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequestError, match=fragment) as caught:
        parse_chat_request(json.dumps(body).encode())
    assert caught.value.status == 400
