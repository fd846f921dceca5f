"""The offline token estimate: close to real BPE counts, and sensible in shape."""

from __future__ import annotations

import json

import pytest

from cascade.core.tokens import estimate_message_tokens, estimate_tokens

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

PYTHON = '''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    result: list[int] = []
    a, b = 0, 1
    for _ in range(n):
        result.append(a)
        a, b = b, a + b
    return result


class UserRepository:
    def __init__(self, session_factory):
        self._session_factory = session_factory

    def get_user_by_email(self, email: str) -> "User | None":
        with self._session_factory() as session:
            return session.query(User).filter_by(email=email).one_or_none()
'''

# Each text with its token count under tiktoken's cl100k_base, counted offline with the real
# tokenizer when these samples were written.
KNOWN_COUNTS = [
    pytest.param(
        "The quick brown fox jumps over the lazy dog. In the beginning, the internet was a small "
        "network of research institutions, connected by slow telephone lines and a shared belief "
        "that information should flow freely. Today, billions of people carry supercomputers in "
        "their pockets, and the questions we ask of them have become far more demanding: "
        "summarize this contract, explain this error, translate this letter into Portuguese, "
        "write a poem about my cat.",
        86,
        id="english-prose",
    ),
    pytest.param(
        "Hi there! I ordered a pair of running shoes last Tuesday (order #48213-77) and they "
        "still haven't arrived. The tracking page says \"in transit\" but it hasn't updated since "
        "Friday. Could you please check what's going on? If it's lost, I'd prefer a refund rather "
        "than a replacement. Thanks so much for your help!",
        74,
        id="english-support-request",
    ),
    pytest.param(PYTHON, 130, id="python"),
    pytest.param(json.dumps(WEATHER_TOOL, indent=2), 127, id="json-tool"),
    pytest.param(
        "2026-11-22T14:03:22.481Z INFO request_id=8f3a2c1e-7b4d-4e2a-9c1f-0a1b2c3d4e5f "
        "path=/v1/chat/completions status=200 latency_ms=412\n"
        "2026-11-22T14:03:23.017Z WARN upstream=tier-7b retry=1 "
        'error="connection reset by peer" trace=4bf92f3577b34da6a3ce929d0e0e4736',
        126,
        id="log-lines",
    ),
    pytest.param(
        # Fullwidth commas are what Chinese text really uses, and they are counted as such.
        "人工智能正在改变我们的生活方式。从智能手机上的语音助手到自动驾驶汽车，机器学习技术已经渗透"  # noqa: RUF001
        "到日常生活的方方面面。然而，随着这些技术的发展，隐私保护和算法公平性等问题也日益受到关注。",  # noqa: RUF001
        101,
        id="chinese",
    ),
    pytest.param(
        "東京は日本の首都であり、世界有数の大都市です。毎年多くの観光客が訪れ、伝統的な寺院や最新の"
        "テクノロジーを楽しんでいます。",
        67,
        id="japanese",
    ),
]


@pytest.mark.parametrize(("text", "cl100k"), KNOWN_COUNTS)
def test_estimate_is_within_a_quarter_of_the_real_count(text: str, cl100k: int) -> None:
    """English, code, JSON, logs and CJK land within ±25% of their real cl100k token count."""
    assert 0.75 * cl100k <= estimate_tokens(text) <= 1.25 * cl100k


def test_empty_text_is_zero_and_any_text_at_least_one() -> None:
    """No text costs nothing; a single character or space costs a token."""
    assert estimate_tokens("") == 0
    assert estimate_tokens(" ") == 1
    assert estimate_tokens("a") == 1


def test_common_words_are_one_token_each() -> None:
    """Short English words separated by spaces count one token apiece."""
    assert estimate_tokens("the cat sat on the mat") == 6


def test_numbers_split_into_groups_of_three_digits() -> None:
    """A ten-digit number costs four tokens, like a BPE tokenizer's digit groups."""
    assert estimate_tokens("1234567890") == 4
    assert estimate_tokens("7") == 1


def test_each_cjk_character_is_about_one_token() -> None:
    """Chinese text costs about one token per character."""
    assert estimate_tokens("人工智能") == 4


def test_long_rare_words_cost_more_than_short_ones() -> None:
    """A long compound word costs several tokens, a short word one."""
    assert estimate_tokens("pseudopseudohypoparathyroidism") >= 4
    assert estimate_tokens("cat") == 1


def test_identifiers_split_at_case_changes_and_underscores() -> None:
    """camelCase and snake_case identifiers cost one token per part."""
    assert estimate_tokens("getUserName") == 3
    assert estimate_tokens("get_user_name") == 3


def test_estimate_grows_linearly_with_text() -> None:
    """Repeating a text ten times multiplies its estimate by about ten."""
    text = KNOWN_COUNTS[0].values[0]
    assert isinstance(text, str)
    one = estimate_tokens(text)
    assert 9.5 * one <= estimate_tokens(" ".join([text] * 10)) <= 10.5 * one


def test_unpaired_surrogates_do_not_crash() -> None:
    """Text decoded from JSON may hold a lone surrogate; it is counted, not rejected."""
    assert estimate_tokens("x\ud800y") >= 2


def test_each_message_adds_a_fixed_overhead() -> None:
    """An empty message still costs its role and separators: four tokens."""
    assert estimate_message_tokens([{"role": "user", "content": ""}]) == 4
    two = [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
    assert estimate_message_tokens(two) == 8


def test_message_text_counts_from_strings_and_text_parts() -> None:
    """List content counts its text parts and skips images, like the same text as a string."""
    text = "What is in this picture of a cat?"
    as_string = estimate_message_tokens([{"role": "user", "content": text}])
    as_parts = estimate_message_tokens(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ]
    )
    assert as_parts == as_string == 4 + estimate_tokens(text)


def test_names_and_tool_calls_are_counted() -> None:
    """A message's name and its tool calls add to its estimate."""
    bare = estimate_message_tokens([{"role": "assistant", "content": None}])
    called = estimate_message_tokens(
        [
            {
                "role": "assistant",
                "name": "planner",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
        ]
    )
    assert bare == 4
    assert called > bare + 10


def test_tools_count_as_canonical_json_whatever_their_key_order() -> None:
    """Tool definitions add their canonical JSON's tokens; key order does not change the count."""
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    reordered = json.loads(json.dumps(WEATHER_TOOL, sort_keys=True))
    with_tool = estimate_message_tokens(messages, [WEATHER_TOOL])
    assert with_tool == estimate_message_tokens(messages, [reordered])
    assert with_tool - estimate_message_tokens(messages) > 40
