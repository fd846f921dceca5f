"""Self-hosted tiers (vLLM, SGLang, any OpenAI-compatible server) over HTTP.

Every call, complete or streamed, goes through one :class:`cascade.tiers.pool.ConnectionPool`
(keep-alive HTTP/1.1 on httptools, about 5x less CPU per call than aiohttp's client, which itself
forwards about 8x more requests per second than ``httpx.AsyncClient`` at 16 connections, see
STACK-NOTES.md), with the tier's timeouts. Failures become :class:`~cascade.errors.TierError`
with a kind that says whether the request may spill (and the tier's ``Retry-After`` on 429 and
503), and usage is read from the answer (estimated only when absent).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from cascade.core.per_object import PerObject
from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.base import JSON, TierAnswer, error_message, http_error, read_usage
from cascade.tiers.pool import ConnectionPool, Endpoint, HTTPConnectionError, Stream
from cascade.tiers.sse import data_events

_MAX_ERROR_BODY = 64 * 1024  # of a streamed call's error answer, read for its message


class OpenAICompatibleClient:
    """Self-hosted tiers over HTTP, through one keep-alive connection pool
    (:mod:`cascade.tiers.pool`) for complete and streamed calls alike."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._endpoint = PerObject(_endpoint)  # built on a tier's first call (a reloaded one anew)

    def _auth(self, tier: Tier) -> bytes:
        env = tier.api_key_env
        key = os.environ.get(env) if env else None  # read per call: a rotated key takes effect
        if not key:
            return b""
        if "\r" in key or "\n" in key:
            raise TierError(tier.name, "connection", f"${env} holds a line break; fix the key")
        return f"authorization: Bearer {key}\r\n".encode()

    async def complete(self, tier: Tier, payload: Mapping[str, Any]) -> TierAnswer:
        """POST the request and parse the answer; failures become TierError."""
        endpoint = self._endpoint(tier)
        data = orjson.dumps({**payload, "model": tier.model, "stream": False})
        limits = tier.timeouts
        started = time.perf_counter()
        try:
            answer = await self._pool.post(
                endpoint,
                data,
                headers=self._auth(tier),
                connect_timeout=limits.connect_s,
                timeout=limits.total_s,
            )
        except TimeoutError as exc:
            raise TierError(tier.name, "timeout", str(exc)) from None
        except HTTPConnectionError as exc:
            raise TierError(tier.name, "connection", str(exc)) from None
        if answer.status != 200:
            raise http_error(tier.name, answer.status, answer.body, answer.header("retry-after"))
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            raise TierError(tier.name, "bad_response", "the answer is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise TierError(tier.name, "bad_response", "the answer has no choices")
        return TierAnswer(body, read_usage(body, payload), time.perf_counter() - started)

    async def stream(self, tier: Tier, payload: Mapping[str, Any]) -> AsyncIterator[JSON]:
        """POST a streamed request and yield its chunks until ``[DONE]``; failures (a stream that
        ends without ``[DONE]`` included) become TierError."""
        endpoint = self._endpoint(tier)
        data = orjson.dumps({**payload, "model": tier.model, "stream": True})
        limits = tier.timeouts
        try:
            answer = await self._pool.open(
                endpoint,
                data,
                headers=self._auth(tier),
                connect_timeout=limits.connect_s,
                first_byte_timeout=limits.first_byte_s,
                idle_timeout=limits.stream_idle_s,
                timeout=limits.total_s,
            )
        except TimeoutError as exc:
            raise TierError(tier.name, "timeout", str(exc)) from None
        except HTTPConnectionError as exc:
            raise TierError(tier.name, "connection", str(exc)) from None
        try:
            if answer.status != 200:
                raise await _refusal(tier, answer)
            async for event in data_events(answer):
                if event == b"[DONE]":
                    answer.release()  # keep the connection once the body's end arrives
                    return
                yield _chunk(tier, event)
        except TimeoutError as exc:
            raise TierError(tier.name, "timeout", f"the stream broke: {exc}") from None
        except HTTPConnectionError as exc:
            raise TierError(tier.name, "connection", f"the stream broke: {exc}") from None
        finally:
            answer.close()  # the consumer stopped early, or it broke: the connection goes
        raise TierError(tier.name, "connection", "the stream ended without [DONE]")


async def _refusal(tier: Tier, answer: Stream) -> TierError:
    """The TierError for a streamed call answered with a status other than 200."""
    try:
        raw = await answer.read(_MAX_ERROR_BODY)
    except (TimeoutError, HTTPConnectionError):
        raw = b""  # the status says enough
    return http_error(tier.name, answer.status, raw, answer.header("retry-after"))


def _chunk(tier: Tier, event: bytes) -> JSON:
    """One streamed event as a ``chat.completion.chunk`` object; TierError when it is none."""
    try:
        chunk = orjson.loads(event)
    except orjson.JSONDecodeError:
        raise TierError(
            tier.name, "connection", f"the stream sent an event that is not JSON: {event[:80]!r}"
        ) from None
    if not isinstance(chunk, dict):
        raise TierError(tier.name, "connection", "the stream sent an event that is not an object")
    if "error" in chunk and "choices" not in chunk:  # vLLM reports a failure mid-stream so
        raise TierError(tier.name, "server_error", error_message(event))
    return chunk


def _endpoint(tier: Tier) -> Endpoint:
    """Where ``tier`` is called (its first replica, until replica routing chooses per request);
    TierError when it has no usable endpoint."""
    if not tier.endpoints:
        raise TierError(tier.name, "connection", "the tier has no endpoint")
    url = tier.endpoints[0].rstrip("/") + "/chat/completions"
    try:
        return Endpoint.parse(url, {"content-type": "application/json"})
    except ValueError as exc:
        raise TierError(tier.name, "connection", str(exc)) from None
