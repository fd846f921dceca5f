"""Server-sent events in OpenAI's streaming format, paced by the engine.

Each time the engine produces tokens for a choice, one ``chat.completion.chunk`` carries them
as ``choices[0].delta``; a choice's last chunk has an empty delta and its ``finish_reason``;
with ``stream_options.include_usage`` a final chunk with empty ``choices`` carries ``usage``;
the stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from cascade.simulator.wire import ChatRequest, Choice, logprobs_body, message_body

__all__ = ["merge", "sse_events"]


async def merge(
    streams: Sequence[AsyncGenerator[int, None]],
) -> AsyncGenerator[tuple[int, int], None]:
    """``(index, count)`` each time stream ``index`` yields; closing it closes every stream."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for count in only:
                yield 0, count
        return
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[int, None]) -> None:
        try:
            async with aclosing(stream):
                async for count in stream:
                    queue.put_nowait((index, count))
        finally:
            queue.put_nowait((index, -1))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        done = 0
        while done < len(tasks):
            index, count = await queue.get()
            if count < 0:
                done += 1
            else:
                yield index, count
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def sse_events(
    counts: AsyncGenerator[tuple[int, int], None],
    model: str,
    choices: Sequence[Choice],
    chat: ChatRequest,
    usage: Mapping[str, Any] | None,
) -> AsyncGenerator[str, None]:
    """The SSE lines of a streamed completion whose choices grow as ``counts`` says."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(chunk_choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": chunk_choices,
            **extra,
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    sent = [0] * len(choices)
    async with aclosing(counts):
        async for index, count in counts:
            choice = choices[index]
            if count > sent[index]:
                delta = message_body(choice, sent[index], count)
                if sent[index] > 0:
                    delta.pop("role")
                    if choice.reply.tool_name is not None:
                        delta.pop("content")
                part: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
                if chat.logprobs:
                    part["logprobs"] = logprobs_body(
                        choice, sent[index], count, chat.top_logprobs or 0
                    )
                sent[index] = count
                yield event([part])
            if count >= len(choice.tokens):
                yield event([{"index": index, "delta": {}, "finish_reason": choice.finish_reason}])
    if usage is not None:
        yield event([], usage=dict(usage))
    yield "data: [DONE]\n\n"
