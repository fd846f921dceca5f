"""How a tier's failed answer becomes a TierError: kind from the status, a bounded printable
message from whatever the body holds, and the tier's Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.base import MAX_MESSAGE_CHARS, error_message, retry_after_s
from cascade.tiers.pool import ConnectionPool
from cascade.tiers.self_hosted import OpenAICompatibleClient
from tests.raw_servers import Peer, Server

ERROR_BODIES = [
    (503, b'{"error": "model is overloaded"}', "unavailable", "model is overloaded"),
    (500, b'{"error": {"message": "boom", "type": "internal"}}', "server_error", "boom"),
    (502, b'{"error": {"code": 502}}', "server_error", '{"code":502}'),
    (400, b'[{"error": {"message": "bad field"}}]', "client_error", "bad field"),
    (400, b'{"object": "error", "message": "max_tokens is too large"}', "client_error", "max_"),
    (404, b'{"detail": "Not Found"}', "client_error", "Not Found"),
    (502, b"<html><title>502 Bad Gateway</title><h1>nginx</h1></html>", "server_error", "502 Bad"),
    (503, b"", "unavailable", "no body"),
    (500, b"Internal Server Error", "server_error", "Internal Server Error"),
    (429, b'{"error": {"message": "slow do', "rate_limited", '{"error": {"message": "slow do'),
    (500, b'{"error": "' + b"x" * 200_000 + b'"}', "server_error", "xxxxxxxx"),
    (500, b"\xff\xfe\xfd not utf-8", "server_error", "not utf-8"),
    (400, b"one\x00two\x01\r\nthree\x1b[31m", "client_error", "one two three [31m"),
    (422, b"null", "client_error", "null"),
]


def tier(url: str) -> Tier:
    """A self-hosted tier whose server's root is ``url``."""
    return Tier.model_validate(
        {
            "name": "small",
            "model": "distill-1.5b",
            "kind": "self_hosted",
            "endpoint": f"{url}/v1",
            "price": {"gpu_usd_per_hour": 1, "tokens_per_second": 100},
        }
    )


async def refused(status: int, body: bytes, headers: bytes = b"") -> TierError:
    """The TierError a complete call gets from a server answering ``status`` with ``body``."""

    async def answer(peer: Peer, request: bytes) -> bool:
        peer.answer(
            b"HTTP/1.1 %d Whatever\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, len(body), headers, body)
        )
        return True

    pool = ConnectionPool()
    try:
        async with Server(answer) as server:
            client = OpenAICompatibleClient(pool)
            with pytest.raises(TierError) as caught:
                await client.complete(tier(f"http://127.0.0.1:{server.port}"), {"messages": []})
    finally:
        await pool.aclose()
    return caught.value


@pytest.mark.parametrize(
    ("status", "body", "kind", "fragment"),
    ERROR_BODIES,
    ids=[f"{i}-{row[0]}" for i, row in enumerate(ERROR_BODIES)],
)
def test_every_error_body_is_classified_by_its_status(
    status: int, body: bytes, kind: str, fragment: str
) -> None:
    """Whatever an error answer's body holds (a string or object error, a list, HTML, nothing,
    truncated or huge JSON, bytes that are not UTF-8, control characters), the call fails with
    the status's kind and one printable line of at most MAX_MESSAGE_CHARS from the body."""
    error = asyncio.run(refused(status, body))
    message = str(error).split(f": {kind}: ", 1)[1]
    assert (error.kind, error.status) == (kind, status)
    assert fragment in message
    assert message.isprintable()
    assert len(message) <= MAX_MESSAGE_CHARS


def test_retry_after_is_kept_on_429_and_503() -> None:
    """A 429 with ``Retry-After: 7`` fails with retry_after_s == 7; an HTTP-date counts from
    now; a 500's Retry-After is not taken as a request to back off."""
    seven = asyncio.run(refused(429, b"{}", b"Retry-After: 7\r\n"))
    assert (seven.kind, seven.retry_after_s) == ("rate_limited", 7.0)
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    dated = asyncio.run(refused(503, b"{}", f"retry-after: {later}\r\n".encode()))
    assert dated.retry_after_s is not None
    assert 25 <= dated.retry_after_s <= 30
    broken = asyncio.run(refused(500, b"{}", b"Retry-After: 7\r\n"))
    assert broken.retry_after_s is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("999999", 3600.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Fri, 01 Jan 2100 00:00:00 GMT", 3600.0),
        ("-5", None),
        ("soon", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values_are_read_bounded_or_ignored(
    value: str | None, seconds: float | None
) -> None:
    """Delta-seconds and HTTP-dates are read (a past date is 0), capped at an hour; negative
    or unreadable values are ignored."""
    assert retry_after_s(value) == seconds


def test_error_messages_never_grow_past_their_bound() -> None:
    """A message is cut with an ellipsis at MAX_MESSAGE_CHARS, whatever part of the body held it."""
    cut = error_message(b'{"error": {"message": "' + b"y" * 5000 + b'"}}')
    assert len(cut) == MAX_MESSAGE_CHARS
    assert cut.endswith("\u2026")
    assert error_message(b"[" * 5000) == "[" * (MAX_MESSAGE_CHARS - 1) + "\u2026"


def test_api_tier_errors_carry_the_providers_retry_after(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A provider's 429 with Retry-After reaches cascade at once (the SDK does not wait it out
    and retry) as rate_limited with retry_after_s from the header; litellm's own help banner is
    not printed (stdout is the CLI's output, and the proxy logs the failure itself)."""
    from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

    monkeypatch.setenv("CASCADE_TEST_FRONTIER_KEY", "sk-test")

    async def slow_down(peer: Peer, request: bytes) -> bool:
        body = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
        peer.answer(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
            b"retry-after: 7\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        return True

    async def scenario() -> TierError:
        client = LiteLLMClient()
        try:
            async with Server(slow_down) as server:
                frontier = Tier.model_validate(
                    {
                        "name": "frontier",
                        "model": "openai/gpt-4o",
                        "kind": "api",
                        "endpoint": f"http://127.0.0.1:{server.port}/v1",
                        "api_key_env": "CASCADE_TEST_FRONTIER_KEY",
                    }
                )
                with pytest.raises(TierError) as caught:
                    await client.complete(
                        frontier, {"messages": [{"role": "user", "content": "hi"}]}
                    )
                assert len(server.requests) == 1
        finally:
            await client.aclose()
        return caught.value

    error = asyncio.run(scenario())
    assert (error.kind, error.status, error.retry_after_s) == ("rate_limited", 429, 7.0)
    assert "slow down" in str(error)
    printed = capfd.readouterr()
    assert "Give Feedback" not in printed.out + printed.err


LITELLM_ERRORS = [
    ("BadRequestError", {}, "client_error", 400),
    ("ContextWindowExceededError", {}, "client_error", 400),
    ("ContentPolicyViolationError", {}, "client_error", 400),
    ("UnprocessableEntityError", {"response": "422"}, "client_error", 422),
    ("AuthenticationError", {}, "client_error", 401),
    ("NotFoundError", {}, "client_error", 404),
    ("RateLimitError", {}, "rate_limited", 429),
    ("Timeout", {}, "timeout", 408),
    ("APIConnectionError", {}, "connection", 500),
    ("ServiceUnavailableError", {}, "unavailable", 503),
    ("InternalServerError", {}, "server_error", 500),
    ("APIError", {"status_code": 502}, "server_error", 502),
    ("APIError", {"status_code": 409}, "client_error", 409),
]


@pytest.mark.parametrize(
    ("name", "extra", "kind", "status"),
    LITELLM_ERRORS,
    ids=[f"{row[0]}-{row[3]}" for row in LITELLM_ERRORS],
)
def test_litellm_errors_are_classified_by_their_type(
    name: str, extra: dict[str, object], kind: str, status: int | None
) -> None:
    """Each of litellm's exceptions becomes the TierError kind its type stands for (a client's
    mistake stays a client error with its status), whatever status code litellm attached."""
    import httpx  # noqa: PLC0415

    from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

    client = LiteLLMClient()
    litellm = client._litellm
    arguments: dict[str, object] = {"message": "m", "llm_provider": "openai", "model": "gpt-4o"}
    if "response" in extra:
        request = httpx.Request("POST", "http://provider/v1/chat/completions")
        arguments["response"] = httpx.Response(int(str(extra["response"])), request=request)
    elif extra:
        arguments.update(extra)
    exc = getattr(litellm, name)(**arguments)
    error = client._error(tier("http://127.0.0.1:9"), exc)
    assert (error.kind, error.status) == (kind, status)
    assert error.spillable == (kind != "client_error")


def test_litellm_failing_on_the_requests_own_fields_is_a_client_error() -> None:
    """What litellm raises on request fields it cannot use before calling anyone (a TypeError
    it reports as a connection error, a bare AttributeError) is the client's mistake."""
    from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

    client = LiteLLMClient()
    litellm = client._litellm
    wrapped = litellm.APIConnectionError(
        message="Unsupported response_format type - hot", llm_provider="openai", model="gpt-4o"
    )
    wrapped.__context__ = TypeError("Unsupported response_format type - hot")
    for exc in (wrapped, AttributeError("'list' object has no attribute 'get'")):
        error = client._error(tier("http://127.0.0.1:9"), exc)
        assert (error.kind, error.status) == ("client_error", 400)
    refused = litellm.APIConnectionError(message="refused", llm_provider="openai", model="x")
    refused.__context__ = ConnectionRefusedError("refused")
    assert client._error(tier("http://127.0.0.1:9"), refused).kind == "connection"
