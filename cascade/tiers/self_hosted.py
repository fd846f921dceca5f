"""Self-hosted tiers (vLLM, SGLang, any OpenAI-compatible server) over HTTP.

Complete answers go through :class:`cascade.tiers.pool.ConnectionPool` (keep-alive HTTP/1.1 on
httptools, about 5x less CPU per call than aiohttp's client, which itself forwards about 8x more
requests per second than ``httpx.AsyncClient`` at 16 connections, see STACK-NOTES.md); streams
through one shared aiohttp session. Failures become :class:`~cascade.errors.TierError` with a kind
that says whether the request may spill, and usage is read from the answer (estimated only when
absent).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from cascade.core.per_object import PerObject
from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.base import JSON, TierAnswer, error_message, read_usage, status_kind
from cascade.tiers.pool import ConnectionPool, Endpoint, HTTPConnectionError


@dataclass(frozen=True)
class _Target:
    """What every call to one tier reuses: its URL, base headers and timeouts."""

    url: str
    endpoint: Endpoint
    headers: dict[str, str]
    stream_timeout: aiohttp.ClientTimeout


class OpenAICompatibleClient:
    """Self-hosted tiers over HTTP: complete answers through a lean keep-alive connection pool
    (:mod:`cascade.tiers.pool`), streams through a shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, pool: ConnectionPool) -> None:
        self._session = session
        self._pool = pool
        self._target = PerObject(_target)  # built on a tier's first call (a reloaded one anew)

    def _key(self, tier: Tier) -> str | None:
        env = tier.api_key_env
        key = os.environ.get(env) if env else None  # read per call: a rotated key takes effect
        if key and ("\r" in key or "\n" in key):
            raise TierError(tier.name, "connection", f"${env} holds a line break; fix the key")
        return key or None

    async def complete(self, tier: Tier, payload: Mapping[str, Any]) -> TierAnswer:
        """POST the request and parse the answer; failures become TierError."""
        target = self._target(tier)
        data = orjson.dumps({**payload, "model": tier.model, "stream": False})
        key = self._key(tier)
        auth = f"authorization: Bearer {key}\r\n".encode() if key else b""
        limits = tier.timeouts
        started = time.perf_counter()
        try:
            answer = await self._pool.post(
                target.endpoint,
                data,
                headers=auth,
                connect_timeout=limits.connect_s,
                timeout=limits.total_s,
            )
        except TimeoutError:
            raise TierError(tier.name, "timeout", f"no answer within {limits.total_s}s") from None
        except HTTPConnectionError as exc:
            raise TierError(tier.name, "connection", str(exc)) from None
        status, raw = answer.status, answer.body
        if status != 200:
            raise TierError(tier.name, status_kind(status), error_message(raw), status)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TierError(tier.name, "bad_response", "the answer is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise TierError(tier.name, "bad_response", "the answer has no choices")
        return TierAnswer(answer, read_usage(answer, payload), time.perf_counter() - started)

    async def stream(self, tier: Tier, payload: Mapping[str, Any]) -> AsyncIterator[JSON]:
        """POST a streamed request and yield its chunks; failures become TierError."""
        target = self._target(tier)
        data = orjson.dumps({**payload, "model": tier.model, "stream": True})
        key = self._key(tier)
        headers = {**target.headers, "authorization": f"Bearer {key}"} if key else target.headers
        limits = tier.timeouts
        try:
            async with asyncio.timeout(limits.first_byte_s):
                response = await self._session.post(
                    target.url, data=data, headers=headers, timeout=target.stream_timeout
                )
        except TimeoutError:
            raise TierError(
                tier.name, "timeout", f"no answer within {limits.first_byte_s}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise TierError(tier.name, "connection", str(exc) or type(exc).__name__) from None
        async with response:
            if response.status != 200:
                raw = await response.read()
                raise TierError(
                    tier.name, status_kind(response.status), error_message(raw), response.status
                )
            try:
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    yield orjson.loads(data)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise TierError(tier.name, "connection", f"stream broken: {exc!r}") from None
        raise TierError(tier.name, "connection", "stream ended without [DONE]")


def _target(tier: Tier) -> _Target:
    """How to call ``tier``; TierError when it has no usable endpoint."""
    if tier.endpoint is None:
        raise TierError(tier.name, "connection", "the tier has no endpoint")
    limits = tier.timeouts
    url = tier.endpoint.rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json"}
    try:
        endpoint = Endpoint.parse(url, headers)
    except ValueError as exc:
        raise TierError(tier.name, "connection", str(exc)) from None
    return _Target(
        url=url,
        endpoint=endpoint,
        headers=headers,
        stream_timeout=aiohttp.ClientTimeout(
            total=limits.total_s, sock_connect=limits.connect_s, sock_read=limits.stream_idle_s
        ),
    )
