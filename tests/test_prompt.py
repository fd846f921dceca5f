"""The prompt step: a stable, hashable prefix, and volatile lines found and placed verbatim."""

from __future__ import annotations

from typing import Any

import pytest

from cascade.core.prompt import MovedSpan, prepare_prompt

INSTRUCTIONS = "You are a support assistant for Acme.\nAnswer in two sentences at most."
QUESTION = "How do I reset my password?"

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the help center",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
TICKET_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "open_ticket",
        "parameters": {"properties": {"title": {"type": "string"}}, "type": "object"},
        "description": "Open a support ticket",
    },
}


def chat(system: str, user: str | list[dict[str, Any]] = QUESTION) -> list[dict[str, Any]]:
    """A system message and a user message."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def with_line(line: str) -> str:
    """The instructions with ``line`` between their two lines."""
    first, second = INSTRUCTIONS.split("\n")
    return f"{first}\n{line}\n{second}"


VOLATILE_PAIRS = [
    pytest.param("Current date: 2026-11-22", "Current date: 2026-11-23", "date", id="iso-date"),
    pytest.param("Today is 22/11/2026.", "Today is 23/11/2026.", "date", id="day-first-date"),
    pytest.param("Date: 11/22/2026", "Date: 11/23/2026", "date", id="month-first-date"),
    pytest.param("It is Nov 22, 2026.", "It is Nov 23, 2026.", "date", id="month-name"),
    pytest.param("Today: 22 November 2026", "Today: 23 November 2026", "date", id="day-month"),
    pytest.param("Today is Sunday, November 22.", "Today is Monday, November 23.", "date"),
    pytest.param("Now: 2026-11-22T14:03:22Z", "Now: 2026-11-22T14:05:09Z", "timestamp"),
    pytest.param("Current time: 14:03", "Current time: 14:04", "time", id="clock"),
    pytest.param("The time is 2:03 PM.", "The time is 2:04 PM.", "time", id="clock-12h"),
    pytest.param(
        "Session: 8f3a2c1e-7b4d-4e2a-9c1f-0a1b2c3d4e5f",
        "Session: 0b9d5e8a-1c2f-4a3b-8d7e-6f5a4b3c2d1e",
        "uuid",
    ),
    pytest.param("req_8f3a2c1e9b", "req_77d0a1b2c3", "request_id", id="prefixed-id"),
    pytest.param("Request ID: abc123def", "Request ID: xyz789ghi", "request_id", id="labeled-id"),
    pytest.param(
        "trace-id: 4bf92f3577b34da6a3ce929d0e0e4736",
        "trace-id: 00f067aa0ba902b7e0e4736a3ce929d0",
        "request_id",
        id="trace-id",
    ),
    pytest.param("Hello, Alice!", "Hello, Bob!", "greeting", id="hello"),
    pytest.param("You are talking to Bob.", "You are talking to Carol.", "greeting"),
    pytest.param("The user's name is Carol", "The user's name is Dave", "greeting"),
    pytest.param("Current user: dave@example.com", "Current user: eve@example.org", "greeting"),
]


@pytest.mark.parametrize(("line", "other", "kind"), VOLATILE_PAIRS)
def test_requests_differing_only_in_volatile_lines_share_a_prefix_hash(
    line: str, other: str, kind: str
) -> None:
    """Two system prompts that differ only in a date, id or greeting line hash the same."""
    first = prepare_prompt(chat(with_line(line)))
    second = prepare_prompt(chat(with_line(other)))
    assert first.prefix_hash == second.prefix_hash
    assert first.messages[0]["content"] == INSTRUCTIONS
    assert first.volatile == (MovedSpan(kind, line, 0),)
    assert first.moved


def test_volatile_line_moves_verbatim_to_the_start_of_the_last_user_message() -> None:
    """The moved line opens the user's message, a blank line before the user's own text."""
    prepared = prepare_prompt(chat(with_line("Current date: 2026-11-22")), volatile="user")
    assert prepared.messages == (
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": f"Current date: 2026-11-22\n\n{QUESTION}"},
    )


def test_moved_lines_keep_their_order_across_system_messages() -> None:
    """Lines from several system and developer messages move in order, joined by newlines."""
    messages = [
        {"role": "system", "content": "Today is 2026-11-22.\nBe brief."},
        {"role": "developer", "content": "Use metric units.\nrequest id: 8f3a2c1e9b7d"},
        {"role": "user", "content": QUESTION},
    ]
    prepared = prepare_prompt(messages, volatile="user")
    assert [(s.kind, s.text, s.from_message) for s in prepared.volatile] == [
        ("date", "Today is 2026-11-22.", 0),
        ("request_id", "request id: 8f3a2c1e9b7d", 1),
    ]
    assert prepared.messages[0]["content"] == "Be brief."
    assert prepared.messages[1]["content"] == "Use metric units."
    assert prepared.messages[2]["content"] == (
        f"Today is 2026-11-22.\nrequest id: 8f3a2c1e9b7d\n\n{QUESTION}"
    )


def test_rest_of_the_system_message_stays_byte_identical() -> None:
    """Only the volatile line goes: other lines, blank lines and trailing newline are kept."""
    system = "# Rules\n\n  - be kind  \nCurrent date: 2026-11-22\n\n\tEnd.\n"
    prepared = prepare_prompt(chat(system))
    assert prepared.messages[0]["content"] == "# Rules\n\n  - be kind  \n\n\tEnd.\n"


def test_moved_text_drops_a_windows_line_break() -> None:
    """A CRLF line moves without its carriage return; the other lines keep theirs."""
    prepared = prepare_prompt(chat("Be kind.\r\nDate: 2026-11-22\r\nBe brief."))
    assert prepared.volatile[0].text == "Date: 2026-11-22"
    assert prepared.messages[0]["content"] == "Be kind.\r\nBe brief."


def test_list_content_user_message_gets_a_leading_text_part() -> None:
    """A user message made of parts gets the moved lines as a new first text part."""
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    prepared = prepare_prompt(chat(with_line("Today is 2026-11-22."), parts), volatile="user")
    assert prepared.messages[1]["content"] == [
        {"type": "text", "text": "Today is 2026-11-22."},
        *parts,
    ]
    assert prepared.scoring_text == "What is in this picture?"


def test_system_text_parts_are_cleaned_part_by_part() -> None:
    """A system message given as text parts loses its volatile line from the part that had it."""
    system = [{"type": "text", "text": "Be kind."}, {"type": "text", "text": "Hi Bob.\nBe brief."}]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": QUESTION},
    ]
    prepared = prepare_prompt(messages)
    assert prepared.messages[0]["content"] == [
        {"type": "text", "text": "Be kind."},
        {"type": "text", "text": "Be brief."},
    ]
    assert prepared.volatile == (MovedSpan("greeting", "Hi Bob.", 0),)


def test_lines_move_to_the_last_user_message_even_when_a_tool_result_follows() -> None:
    """In a tool-calling turn the moved lines go to the last user message, not the tool result."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": with_line("Current time: 14:03")},
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{}"},
    ]
    prepared = prepare_prompt(messages, volatile="user")
    assert prepared.messages[3]["content"] == f"Current time: 14:03\n\n{QUESTION}"
    assert prepared.messages[1]["content"] == "Earlier question"
    assert prepared.messages[5] == messages[5]


def test_system_message_left_empty_is_dropped() -> None:
    """A system message that held only volatile lines disappears instead of being sent empty."""
    messages = [
        {"role": "system", "content": "Hello, Alice!"},
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
    ]
    prepared = prepare_prompt(messages, volatile="user")
    assert [m["role"] for m in prepared.messages] == ["system", "user"]
    assert prepared.volatile == (MovedSpan("greeting", "Hello, Alice!", 0),)
    assert prepared.prefix_hash == prepare_prompt(chat(INSTRUCTIONS), volatile="user").prefix_hash


def test_system_message_that_was_empty_to_begin_with_is_kept() -> None:
    """Only messages emptied by the move are dropped; an empty one the caller sent stays."""
    messages = [
        {"role": "system", "content": ""},
        {"role": "system", "content": with_line("Hi Bob.")},
        {"role": "user", "content": QUESTION},
    ]
    prepared = prepare_prompt(messages)
    assert [m["content"] for m in prepared.messages[:2]] == ["", INSTRUCTIONS]


def test_without_moving_nothing_changes_but_volatile_lines_are_reported() -> None:
    """With volatile: keep the request is sent as given, and the found lines are listed."""
    messages = chat(with_line("Current date: 2026-11-22"))
    prepared = prepare_prompt(messages, volatile="keep")
    assert list(prepared.messages) == messages
    assert prepared.volatile == (MovedSpan("date", "Current date: 2026-11-22", 0),)
    assert not prepared.moved
    other = prepare_prompt(chat(with_line("Current date: 2026-11-23")), volatile="keep")
    assert other.prefix_hash != prepared.prefix_hash


def test_a_prompt_without_volatile_lines_is_left_alone() -> None:
    """Nothing is found or moved in a plain system prompt."""
    prepared = prepare_prompt(chat(INSTRUCTIONS))
    assert prepared.messages == tuple(chat(INSTRUCTIONS))
    assert prepared.volatile == ()
    assert not prepared.moved


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s.replace("two sentences", "three sentences"), id="instruction"),
        pytest.param(lambda s: s + "\nNever discuss pricing.", id="added-line"),
        pytest.param(lambda s: s.replace("Acme", "Globex"), id="company"),
    ],
)
def test_real_instruction_changes_change_the_prefix_hash(change: Any) -> None:
    """Editing what the system prompt asks for gives a different prefix hash."""
    base = prepare_prompt(chat(INSTRUCTIONS)).prefix_hash
    assert prepare_prompt(chat(change(INSTRUCTIONS))).prefix_hash != base


def test_role_of_the_prefix_message_is_part_of_the_hash() -> None:
    """The same text as a developer message is a different prefix than as a system message."""
    as_developer = [{"role": "developer", "content": INSTRUCTIONS}, chat("")[1]]
    assert (
        prepare_prompt(as_developer).prefix_hash != prepare_prompt(chat(INSTRUCTIONS)).prefix_hash
    )


def test_user_text_does_not_change_the_prefix_hash() -> None:
    """Different questions under the same system prompt share the prefix hash."""
    first = prepare_prompt(chat(INSTRUCTIONS, "What is the refund policy?"))
    assert first.prefix_hash == prepare_prompt(chat(INSTRUCTIONS)).prefix_hash
    assert len(first.prefix_hash) == 16
    assert int(first.prefix_hash, 16) >= 0


FALSE_POSITIVES = [
    "Always include the date in your answer.",
    "Use ISO-8601 dates such as YYYY-MM-DD.",
    "This is version v1.2.3 of the API.",
    "Requires Python 3.11 or newer; tested on Node 20.10.0 and Python 3.11.4.",
    "Model: gpt-4o-2024-08-06",
    "Refunds are accepted within 30 days.",
    "Call 555-867-5309 for help.",
    "Images must have an aspect ratio of 16:9.",
    "Office hours are 09:00-17:00 Monday to Friday.",
    "We open at 9:00 AM and close at 5:00 PM.",
    "Hello! I am your assistant.",
    "Hi there, how can I help?",
    "Hi Claude, you are a helpful assistant.",
    "Greet the user by name.",
    "The user's name is provided below.",
    "Never reveal the session ID.",
    "Always include the request id in your reply.",
    "Contact support@acme.com for help.",
    "Knowledge cutoff: 2023-10-01.",
    "See https://docs.example.com/2024-01-15/guide for details.",
    "Use the request_handler module.",
    "You are talking to a customer.",
    "Published in March 2024.",
    "Prices: $19.99, or 2 for $30.",
]


@pytest.mark.parametrize("line", FALSE_POSITIVES)
def test_ordinary_lines_that_look_dated_stay_in_the_system_prompt(line: str) -> None:
    """Lines mentioning dates, versions, schedules or ids without being volatile stay put."""
    system = with_line(line)
    prepared = prepare_prompt(chat(system))
    assert prepared.volatile == ()
    assert prepared.messages[0]["content"] == system
    assert prepared.messages[1]["content"] == QUESTION


def test_lines_inside_code_fences_stay_put() -> None:
    """A dated line inside a fenced example is part of the example and is not moved."""
    system = 'Reply like this:\n```json\n{"date": "2026-11-22"}\n```\nToday is 2026-11-22.'
    prepared = prepare_prompt(chat(system))
    assert prepared.volatile == (MovedSpan("date", "Today is 2026-11-22.", 0),)
    assert (
        prepared.messages[0]["content"] == 'Reply like this:\n```json\n{"date": "2026-11-22"}\n```'
    )


def test_volatile_lines_in_user_messages_are_not_touched() -> None:
    """Only the system prefix is cleaned: a date in the user's own text stays where it is."""
    question = "Today is 2026-11-22. What day of the week is it?"
    prepared = prepare_prompt(chat(INSTRUCTIONS, question))
    assert prepared.messages[1]["content"] == question
    assert prepared.volatile == ()


def test_only_the_volatile_sentence_of_a_line_moves() -> None:
    """In a one-line system prompt, the instructions stay and only the dated sentence moves."""
    system = "You are a helpful assistant for ACME Corp. Today's date: 2026-11-22. Be concise!"
    prepared = prepare_prompt(
        [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}], volatile="user"
    )
    assert (
        prepared.messages[0]["content"] == "You are a helpful assistant for ACME Corp. Be concise!"
    )
    assert prepared.messages[1]["content"] == "Today's date: 2026-11-22.\n\nHi"
    assert [(s.kind, s.text) for s in prepared.volatile] == [("date", "Today's date: 2026-11-22.")]
    tomorrow = prepare_prompt(
        [
            {"role": "system", "content": system.replace("2026-11-22", "2026-11-23")},
            {"role": "user", "content": "Hi"},
        ],
        volatile="user",
    )
    assert tomorrow.prefix_hash == prepared.prefix_hash
    assert prepared.prefix_tokens > 0


def test_abbreviations_do_not_split_a_date() -> None:
    """'Nov. 22, 2026' is one sentence: the whole line moves rather than half a date."""
    prepared = prepare_prompt(
        [
            {"role": "system", "content": "Be brief.\nToday is Nov. 22, 2026."},
            {"role": "user", "content": "Hi"},
        ],
        volatile="user",
    )
    assert prepared.messages[0]["content"] == "Be brief."
    assert prepared.messages[1]["content"] == "Today is Nov. 22, 2026.\n\nHi"


def test_a_repeated_system_prompt_gives_the_same_result_however_the_last_was_used() -> None:
    """The prefix analysis is remembered across requests; changing one request's prepared
    messages (or the caller's own) never leaks into the next request's."""
    system = {"role": "system", "content": "You are a tutor.\nToday is 2026-11-22."}
    first = prepare_prompt([system, {"role": "user", "content": "Hi"}], volatile="user")
    first.messages[0]["content"] = "tampered"
    first.messages[1]["content"] = "tampered"
    second = prepare_prompt([dict(system), {"role": "user", "content": "Hi"}], volatile="user")
    assert second.messages[0] == {"role": "system", "content": "You are a tutor."}
    assert second.messages[1]["content"] == "Today is 2026-11-22.\n\nHi"
    assert (
        second.prefix_hash
        == prepare_prompt([system, {"role": "user", "content": "Yo"}], volatile="user").prefix_hash
    )
    kept = prepare_prompt([system, {"role": "user", "content": "Hi"}], volatile="keep")
    assert kept.messages[0] == system
    assert not kept.moved
    assert [span.text for span in kept.volatile] == ["Today is 2026-11-22."]
