"""Server-sent events in Anthropic's Messages streaming format, paced by the engine.

When the engine produces the first tokens: ``message_start`` (the message with empty content and
the usage so far: input, cache read and cache creation tokens, one output token),
``content_block_start`` (a text block, or a tool_use block with its id, name and empty input)
and a ``ping``; then one ``content_block_delta`` each time the engine makes progress
(``text_delta``, or ``input_json_delta`` carrying the arguments' raw JSON text); then
``content_block_stop``, ``message_delta`` (``stop_reason``, ``stop_sequence`` and the final,
cumulative usage) and ``message_stop``. Each event is ``event: <type>`` and ``data: <json>``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

from cascade.simulator.anthropic_wire import content_block, stop_of, usage_body
from cascade.simulator.marker_cache import CachePlan
from cascade.simulator.wire import Choice

__all__ = ["message_events"]


def _event(kind: str, **data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


def _start(model: str, choice: Choice, plan: CachePlan) -> list[str]:
    """The events that open the message and its one content block."""
    message: dict[str, Any] = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_body(plan, 1),
    }
    return [
        _event("message_start", message=message),
        _event("content_block_start", index=0, content_block=content_block(choice, opening=True)),
        _event("ping"),
    ]


async def message_events(
    counts: AsyncGenerator[int, None],
    model: str,
    choice: Choice,
    plan: CachePlan,
    stops: Sequence[str],
) -> AsyncGenerator[str, None]:
    """The SSE events of a streamed message whose tokens grow as ``counts`` says."""
    sent = 0
    is_text = choice.reply.tool_name is None
    async with aclosing(counts):
        async for count in counts:
            if count <= sent:
                continue
            if sent == 0:
                for event in _start(model, choice, plan):
                    yield event
            piece = "".join(choice.tokens[sent:count])
            delta = (
                {"type": "text_delta", "text": piece}
                if is_text
                else {"type": "input_json_delta", "partial_json": piece}
            )
            sent = count
            yield _event("content_block_delta", index=0, delta=delta)
    reason, sequence = stop_of(choice, stops)
    yield _event("content_block_stop", index=0)
    yield _event(
        "message_delta",
        delta={"stop_reason": reason, "stop_sequence": sequence},
        usage=usage_body(plan, len(choice.tokens)),
    )
    yield _event("message_stop")
