"""Reading a Chat Completions request once, at the edge (cascade.core.request)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cascade.core.request import MAX_DEPTH, ChatRequest, RequestFields, parse_chat_request
from cascade.errors import InvalidRequestError

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
    request = parse_chat_request(json.dumps(body).encode())
    validated = RequestFields.model_validate(body)
    fields = RequestFields.model_fields
    assert {f: getattr(request, f) for f in fields} == {f: getattr(validated, f) for f in fields}
    assert request.body == body  # passed on to the tier unchanged


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
    with pytest.raises(InvalidRequestError, match=fragment) as caught:
        parse_chat_request(json.dumps(body).encode())
    assert caught.value.param == fragment.split(":", maxsplit=1)[0]


def test_a_library_callers_dict_is_read_like_a_proxy_request() -> None:
    """``ChatRequest.of`` takes a plain dict (no model needed) and checks it like the proxy."""
    request = ChatRequest.of({"messages": MESSAGES, "max_tokens": 9, "temperature": 0.1})
    assert request.model == "cascade"
    assert request.max_output_tokens == 9
    assert ChatRequest.of(request) is request
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        ChatRequest.of({"messages": MESSAGES, "max_tokens": -1})


def test_the_tier_payload_keeps_the_clients_parameters_with_the_routed_messages() -> None:
    """What goes to a tier: the client's own parameters, cascade's messages, no routing fields."""
    request = parse_chat_request(
        json.dumps(
            {
                "model": "cascade",
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": 0.3,
                "response_format": {"type": "json_object"},
            }
        ).encode()
    )
    routed = [{"role": "system", "content": "stable"}, *MESSAGES]
    payload = request.payload(routed, None)
    assert payload == {
        "messages": routed,
        "temperature": 0.3,
        "response_format": {"type": "json_object"},
    }
    assert request.include_usage
    assert request.response_format == {"type": "json_object"}


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_refused_with_what_it_was(raw: bytes) -> None:
    """Malformed bodies are an InvalidRequestError (the proxy's 400), never a crash."""
    with pytest.raises(InvalidRequestError, match="JSON"):
        parse_chat_request(raw)


def _nested(depth: int) -> str:
    """A JSON value ``depth`` levels deep: arrays around a string."""
    return "[" * depth + '"x"' + "]" * depth


_HI = '"messages":[{"role":"user","content":"hi"}]'


@pytest.mark.parametrize(
    ("template", "field", "above"),
    [
        ('{"model":"cascade",HI,"metadata":VALUE}', "metadata", 1),
        (
            '{"model":"cascade","messages":[{"role":"user","content":"hi","x":VALUE}]}',
            "messages",
            3,
        ),
        ('{"model":"cascade",HI,"tools":[{"function":{"parameters":VALUE}}]}', "tools", 4),
    ],
)
def test_a_request_nested_deeper_than_the_limit_is_refused_naming_its_field(
    template: str, field: str, above: int
) -> None:
    """The body is level one; a request 64 levels deep is read, one level more is refused, and
    so is any depth beyond (orjson, which re-encodes the request for a tier, stops at 254)."""
    template = template.replace("HI", _HI)
    at_limit = template.replace("VALUE", _nested(MAX_DEPTH - above))
    assert parse_chat_request(at_limit.encode()).body[field]
    for depth in (MAX_DEPTH - above + 1, 300, 1000):
        deeper = template.replace("VALUE", _nested(depth))
        with pytest.raises(InvalidRequestError, match="nests deeper than 64 levels") as caught:
            parse_chat_request(deeper.encode())
        assert caught.value.param == field


def test_a_library_callers_dict_is_held_to_the_same_depth() -> None:
    """``ChatRequest.of`` checks depth too: a library call would otherwise fail re-encoding."""
    deep: object = "x"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(InvalidRequestError, match="metadata: the request nests deeper"):
        ChatRequest.of({"messages": MESSAGES, "metadata": deep})


def test_many_containers_side_by_side_are_not_depth() -> None:
    """A long conversation has hundreds of objects, each only a few levels down: it is read."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "[{["}]}] * 500
    body = {"model": "cascade", "messages": messages, "tools": [{"a": {"b": [{}]}}] * 100}
    assert len(parse_chat_request(json.dumps(body).encode()).messages) == 500
