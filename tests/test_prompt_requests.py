"""The prompt step on whole requests: tools in canonical order, the caller's objects untouched,
scoring text and token estimates, and malformed requests refused naming the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pytest

from cascade.core.prompt import prepare_prompt
from cascade.core.tokens import estimate_message_tokens
from cascade.errors import RoutingError
from tests.test_prompt import INSTRUCTIONS, QUESTION, SEARCH_TOOL, TICKET_TOOL, chat, with_line


def test_tools_get_canonical_order_and_key_order() -> None:
    """Tools are sorted by function name and their keys sorted at every depth."""
    prepared = prepare_prompt(chat(INSTRUCTIONS), [SEARCH_TOOL, TICKET_TOOL])
    assert prepared.tools is not None
    assert [tool["function"]["name"] for tool in prepared.tools] == ["open_ticket", "search_docs"]
    sent = json.dumps(prepared.tools[0])
    assert sent == json.dumps(TICKET_TOOL, sort_keys=True)
    assert list(prepared.tools[0]["function"]) == ["description", "name", "parameters"]


def test_tool_order_and_key_order_do_not_change_the_hash() -> None:
    """Two requests whose tools differ only in order or key order share a prefix hash."""
    shuffled = json.loads(json.dumps(SEARCH_TOOL, sort_keys=True))
    first = prepare_prompt(chat(INSTRUCTIONS), [SEARCH_TOOL, TICKET_TOOL])
    second = prepare_prompt(chat(INSTRUCTIONS), [TICKET_TOOL, shuffled])
    assert first.prefix_hash == second.prefix_hash
    assert first.tools == second.tools


def test_tool_changes_and_presence_change_the_hash() -> None:
    """Adding a tool or editing its description gives a different prefix hash."""
    edited = copy.deepcopy(SEARCH_TOOL)
    edited["function"]["description"] = "Search the developer docs"
    hashes = {
        prepare_prompt(chat(INSTRUCTIONS)).prefix_hash,
        prepare_prompt(chat(INSTRUCTIONS), [SEARCH_TOOL]).prefix_hash,
        prepare_prompt(chat(INSTRUCTIONS), [edited]).prefix_hash,
    }
    assert len(hashes) == 3


def test_tools_are_none_when_none_are_given() -> None:
    """No tools, or an empty list, is reported as None."""
    assert prepare_prompt(chat(INSTRUCTIONS)).tools is None
    assert prepare_prompt(chat(INSTRUCTIONS), []).tools is None


def test_callers_messages_and_tools_are_never_changed() -> None:
    """Preparing a prompt leaves every object the caller passed exactly as it was."""
    parts = [{"type": "text", "text": "Describe this."}, {"type": "image_url", "image_url": {}}]
    messages: list[Any] = [
        {"role": "system", "content": [{"type": "text", "text": with_line("Hello, Alice!")}]},
        {"role": "system", "content": with_line("Current date: 2026-11-22")},
        {"role": "user", "content": parts},
    ]
    tools = [SEARCH_TOOL, TICKET_TOOL]
    before = copy.deepcopy((messages, tools))
    prepared = prepare_prompt(messages, tools)
    assert prepared.moved
    assert (messages, tools) == before


def test_read_only_mappings_are_accepted() -> None:
    """Messages may be any mapping, such as a read-only view; the output is plain dicts."""
    messages = [
        MappingProxyType({"role": "system", "content": with_line("Hi Bob.")}),
        MappingProxyType({"role": "user", "content": QUESTION}),
    ]
    prepared = prepare_prompt(messages, volatile="user")
    assert all(type(message) is dict for message in prepared.messages)
    assert prepared.messages[1]["content"] == f"Hi Bob.\n\n{QUESTION}"


def test_scoring_text_is_the_last_user_messages_own_text() -> None:
    """The scorer reads the last user message's text parts joined by newlines, nothing moved."""
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "First part."},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        {"type": "text", "text": "Second part."},
    ]
    messages = [*chat(with_line("Today is 2026-11-22."), "Old question"), *chat("", parts)[1:]]
    assert prepare_prompt(messages).scoring_text == "First part.\nSecond part."


def test_token_estimates_cover_prefix_and_whole_request() -> None:
    """The prefix estimate counts system messages and tools; the whole one counts everything."""
    messages = chat(with_line("Current date: 2026-11-22"))
    prepared = prepare_prompt(messages, [SEARCH_TOOL])
    assert prepared.prefix_tokens == estimate_message_tokens(prepared.messages[:1], prepared.tools)
    assert prepared.prompt_tokens == estimate_message_tokens(prepared.messages, prepared.tools)
    assert 0 < prepared.prefix_tokens < prepared.prompt_tokens
    assert prepare_prompt([{"role": "user", "content": QUESTION}]).prefix_tokens == 0


INVALID = [
    pytest.param([], "messages: must not be empty", id="empty"),
    pytest.param("hello", "messages: must be a list of message objects, got str", id="string"),
    pytest.param([{"role": "user", "content": "hi"}, "oops"], r"messages\[1\]: must be an object"),
    pytest.param([{"content": "hi"}], r"messages\[0\]\.role: missing; allowed: assistant"),
    pytest.param(
        [{"role": "admin", "content": "hi"}], r"messages\[0\]\.role: unknown role 'admin'"
    ),
    pytest.param(
        [{"role": "user", "content": 42}],
        r"messages\[0\]\.content: must be a string or a list of content parts, got int",
    ),
    pytest.param([{"role": "user"}], r"messages\[0\]\.content: missing"),
    pytest.param(
        [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}],
        r"messages\[0\]\.content\[1\]: must be an object",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "text", "text": None}]}],
        r"messages\[0\]\.content\[0\]\.text: must be a string, got null",
    ),
    pytest.param(
        [{"role": "user", "content": [{"text": "a"}]}],
        r"messages\[0\]\.content\[0\]\.type: must be a string",
    ),
    pytest.param(
        [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}],
        r"messages\[0\]\.content\[0\]\.type: a system message takes only \"text\" parts",
    ),
    pytest.param(
        [{"role": "system", "content": "Be kind."}, {"role": "assistant", "content": "Hi"}],
        'messages: no message has role "user"',
        id="no-user",
    ),
]


@pytest.mark.parametrize(("messages", "message"), INVALID)
def test_malformed_requests_are_refused_naming_the_field(
    messages: Sequence[Mapping[str, Any]], message: str
) -> None:
    """A malformed request raises RoutingError saying what is wrong, where, and what is allowed."""
    with pytest.raises(RoutingError, match=message):
        prepare_prompt(messages)


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        pytest.param({"type": "function"}, "tools: must be a list of tool objects, got dict"),
        pytest.param([SEARCH_TOOL, "search"], r"tools\[1\]: must be an object"),
        pytest.param([{"type": "function", "x": object()}], r"tools\[0\]: must be plain JSON"),
    ],
)
def test_malformed_tools_are_refused_naming_the_field(tools: Any, message: str) -> None:
    """Tools that are not a list of JSON objects raise RoutingError naming the tool."""
    with pytest.raises(RoutingError, match=message):
        prepare_prompt(chat(INSTRUCTIONS), tools)


def test_assistant_messages_may_have_null_content() -> None:
    """An assistant turn that only called tools, with null content, is accepted."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert prepare_prompt(messages).scoring_text == "Weather?"
