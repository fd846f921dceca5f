"""What a simulated replica finished, read from its answers' headers: each sequence's time per
output token and how long it held a slot (:mod:`benchmarks.day_replay` wraps every replica)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SequenceLog", "SequenceTiming"]


@dataclass(frozen=True, slots=True, order=True)
class SequenceTiming:
    """One sequence a simulated replica finished."""

    at: float
    """Wall seconds from the day's start when it finished."""
    tpot_ms: float
    """Time per output token after the first (simulated ms)."""
    busy_s: float
    """Simulated seconds it held a slot of the batch (joined to finished)."""


class SequenceLog:
    """Wraps a simulated replica's app: notes each finished completion's time per token."""

    def __init__(self, app: ASGIApp, started: list[float]) -> None:
        self.app = app
        self.started = started  # the day's start (perf_counter), set when sending begins
        self.records: list[SequenceTiming] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        body = bytearray()

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers.update((k.decode(), v.decode()) for k, v in message["headers"])
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, noting)
        self._note(headers, bytes(body))

    def _note(self, headers: dict[str, str], body: bytes) -> None:
        if "x-simulated-latency-ms" not in headers:
            return  # refused, or streamed (the replay does not stream)
        tokens = json.loads(body)["usage"]["completion_tokens"]
        if tokens < 2:
            return
        latency, ttft, queued = (
            float(headers[f"x-simulated-{name}-ms"]) for name in ("latency", "ttft", "queue")
        )
        at = time.perf_counter() - self.started[0]
        self.records.append(
            SequenceTiming(at, (latency - ttft) / (tokens - 1), (latency - queued) / 1e3)
        )
