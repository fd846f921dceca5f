"""The proxy's stream reply: whatever the client does, the stream's source is ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from starlette.types import Message

from cascade.server.replies import StreamReply


def _reply(
    events: AsyncGenerator[bytes, None], closed: list[str]
) -> tuple[StreamReply, list[Message]]:
    async def closing() -> None:
        closed.append("closed")

    return StreamReply(events, {"x-cascade-tier": "small"}, closing=closing), []


def test_a_client_gone_before_the_first_byte_still_ends_the_source() -> None:
    """A disconnect that arrives before the relay's first step leaves no stream open: the
    reply's closing hook runs though the events generator never started."""
    started: list[bool] = []
    closed: list[str] = []

    async def events() -> AsyncGenerator[bytes, None]:
        started.append(True)
        yield b"data: 1\n\n"

    reply, sent = _reply(events(), closed)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        await asyncio.sleep(0)  # a real socket write may yield to the loop here

    asyncio.run(reply({"type": "http"}, receive, send))
    assert closed == ["closed"]
    assert started == []
    assert [m["type"] for m in sent] == ["http.response.start"]


def test_a_stream_read_to_its_end_closes_once_and_sends_every_event() -> None:
    """A client that stays gets every event and the end of the body; the hook runs once."""
    closed: list[str] = []

    async def events() -> AsyncGenerator[bytes, None]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    reply, sent = _reply(events(), closed)
    never = asyncio.Event()

    async def receive() -> Message:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(reply({"type": "http"}, receive, send))
    bodies = [m.get("body") for m in sent if m["type"] == "http.response.body"]
    assert bodies == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert closed == ["closed"]
