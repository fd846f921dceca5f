"""The simulated tier speaks OpenAI's Chat Completions API to the official SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator

import httpx
import openai
import pytest

from cascade.model.final_answer import extract_final_answer
from cascade.simulator.answers import Reply
from cascade.simulator.dataset import LabeledRow, iter_rows
from cascade.simulator.streaming import sse_events
from cascade.simulator.wire import ChatRequest, Choice
from tests.servers import running_tier

SYSTEM = "You are a concise assistant for the billing team. Answer in one short paragraph."


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One fast frontier tier shared by this module's tests."""
    with running_tier("frontier", time_scale=0.01) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at the simulated tier."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk:
        yield sdk


def _gsm8k_row(weak: float, strong: float) -> LabeledRow:
    return next(
        r
        for r in iter_rows()
        if r.strong_response and r.weak_score == weak and r.strong_score == strong
    )


def test_plain_completion_has_usage(client: openai.OpenAI) -> None:
    """A non-streamed completion returns an assistant message, a stop reason and token usage."""
    completion = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Name a prime number above 10."}]
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 5


def test_stream_matches_plain_answer_and_reports_usage(client: openai.OpenAI) -> None:
    """A streamed answer's deltas add up to the plain answer, the role comes first, then usage."""
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "Which planet is largest?"}
    ]
    plain = client.chat.completions.create(model="gpt-4o", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    # How many deltas depends on how far the engine got between two reads of its progress (a
    # busy host coalesces steps): that is checked with scripted progress below, not here.
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.content]
    assert [d.role for d in deltas] == ["assistant"] + [None] * (len(deltas) - 1)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert plain.usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stream_sends_one_delta_per_engine_progress_then_finish_usage_and_done() -> None:
    """Each time the engine reports progress, the new tokens go out as one delta (the role only
    in the first); then the finish reason, the usage and ``[DONE]``."""
    tokens = ("Jupiter", " is", " the", " largest", ".")
    reply = Reply(tokens=tokens, logprobs=(-0.1,) * 5, correct=True, known=True)
    chat = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "?"}]}
    )

    async def progress() -> AsyncGenerator[tuple[int, int], None]:
        for count in (2, 4, 5):
            yield 0, count

    async def lines() -> list[str]:
        usage = {"prompt_tokens": 3, "completion_tokens": 5}
        return [
            e async for e in sse_events(progress(), "m", [Choice(reply, None, ())], chat, usage)
        ]

    *events, done = asyncio.run(lines())
    chunks = [json.loads(e.removeprefix("data: ")) for e in events]
    assert len(chunks) == 5
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert [c["choices"][0]["delta"] for c in chunks[:4]] == [
        {"role": "assistant", "content": "Jupiter is"},
        {"content": " the largest"},
        {"content": "."},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "stop"]
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}
    assert len({c["id"] for c in chunks}) == 1
    assert done == "data: [DONE]\n\n"


def test_known_prompt_is_right_on_frontier_and_wrong_where_the_data_says() -> None:
    """A GSM8K prompt the data marks right for the strong model only is answered that way: the
    frontier gives the strong model's answer, the 7b a different final number."""
    row = _gsm8k_row(weak=0.0, strong=1.0)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "  " + row.prompt.replace(" ", "\n ", 3)}  # whitespace differs
    ]
    answers = {}
    for profile, model in (("frontier", "gpt-4o"), ("7b", "distill-7b")):
        with (
            running_tier(profile, time_scale=0.001) as base,
            openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as sdk,
        ):
            raw = sdk.chat.completions.with_raw_response.create(model=model, messages=messages)
            answers[profile] = (raw.headers["x-simulated-correct"], raw.parse())
    assert answers["frontier"][0] == "true"
    assert answers["frontier"][1].choices[0].message.content == (row.strong_response or "").strip()
    assert answers["7b"][0] == "false"
    wrong = extract_final_answer(answers["7b"][1].choices[0].message.content or "")
    right = extract_final_answer(row.strong_response or "")
    assert wrong is not None
    assert right is not None
    assert wrong.key != right.key


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client: openai.OpenAI) -> None:
    """An answer longer than max_tokens stops there with finish_reason "length"."""
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Explain photosynthesis."}],
        max_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_tools_give_a_parseable_tool_call(client: openai.OpenAI) -> None:
    """With tools, the answer is a call of the first tool whose arguments fit its schema."""
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["location", "unit"],
    }
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": schema}}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    arguments = json.loads(calls[0].function.arguments)
    assert set(arguments) == {"location", "unit"}
    assert arguments["unit"] in ("c", "f")


def test_json_mode_gives_json(client: openai.OpenAI) -> None:
    """With response_format json_object, the content parses as a JSON object."""
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Give the capital of Italy as JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_repeated_system_prompt_counts_as_cached(client: openai.OpenAI) -> None:
    """A system prompt seen before is reported in usage.prompt_tokens_details.cached_tokens."""
    system = SYSTEM + " Always cite the invoice number when one is given. " * 3
    cached = []
    for question in ("Why was I charged twice?", "How do I get a refund?"):
        completion = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )
        assert completion.usage is not None
        assert completion.usage.prompt_tokens_details is not None
        cached.append(completion.usage.prompt_tokens_details.cached_tokens)
    assert cached[0] == 0
    assert cached[1] is not None
    assert cached[1] >= 16


def test_n_gives_several_choices(client: openai.OpenAI) -> None:
    """``n`` returns that many samples; usage counts every choice's tokens and the prompt once."""
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "A crate holds 14 jars and a van 37 crates. How many jars?"}
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, n=3, logprobs=True
    )
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len(raw.headers["x-simulated-choices-correct"].split(",")) == 3
    one = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert completion.choices[0].message.content == one.choices[0].message.content
    tokens = sum(len(c.logprobs.content or []) for c in completion.choices if c.logprobs)
    assert completion.usage is not None
    assert one.usage is not None
    assert completion.usage.completion_tokens == tokens
    assert completion.usage.prompt_tokens == one.usage.prompt_tokens


def test_streamed_samples_arrive_by_index_and_match_the_plain_ones(client: openai.OpenAI) -> None:
    """With ``n`` and ``stream``, each choice's deltas (by index) add up to that plain choice."""
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "A crate holds 14 jars and a van 37 crates. How many jars?"}
    ]
    plain = client.chat.completions.create(model="gpt-4o", messages=messages, n=3)
    texts = ["", "", ""]
    finished = set()
    for chunk in client.chat.completions.create(
        model="gpt-4o", messages=messages, n=3, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert texts == [c.message.content for c in plain.choices]
    assert finished == {0, 1, 2}


def test_bad_json_gets_400_in_openai_error_format(url: str) -> None:
    """A body that is not JSON gets 400 with OpenAI's error object, not a traceback."""
    response = httpx.post(f"{url}/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text


def test_invalid_field_names_the_param(url: str) -> None:
    """A well-formed body with a wrong value gets 400 naming the offending parameter."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"


def test_unknown_model_gets_404(client: openai.OpenAI) -> None:
    """A model name the tier does not serve gets 404 model_not_found."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"


def test_models_and_health(url: str, client: openai.OpenAI) -> None:
    """/v1/models lists the served model names and /health answers 200."""
    assert [m.id for m in client.models.list()] == [
        "gpt-4o",
        "openai/gpt-4o",
        "claude-sonnet-4-5",
        "anthropic/claude-sonnet-4-5",
    ]
    assert httpx.get(f"{url}/health").status_code == 200
