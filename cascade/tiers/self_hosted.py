"""Self-hosted tiers (vLLM, SGLang, any OpenAI-compatible server) over HTTP.

Every call, complete or streamed, goes through one :class:`cascade.tiers.pool.ConnectionPool`
(keep-alive HTTP/1.1 on httptools, about 5x less CPU per call than aiohttp's client, which itself
forwards about 8x more requests per second than ``httpx.AsyncClient`` at 16 connections, see
STACK-NOTES.md), with the tier's timeouts, to the replica the tier's ``routing`` chooses
(:mod:`cascade.tiers.replicas`). Failures become :class:`~cascade.errors.TierError`
with a kind that says whether the request may spill (and the tier's ``Retry-After`` on 429 and
503), and usage is read from the answer (estimated only when absent).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson

from cascade.core.per_object import PerObject
from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.base import JSON, TierAnswer, error_message, http_error, read_usage
from cascade.tiers.engines import EngineLoads
from cascade.tiers.pool import (
    ConnectionPool,
    Endpoint,
    HTTPConnectionError,
    Response,
    Stream,
    UnreachableError,
)
from cascade.tiers.replicas import Replicas
from cascade.tiers.sse import data_events

_MAX_ERROR_BODY = 64 * 1024  # of a streamed call's error answer, read for its message
_HEADERS = {"content-type": "application/json"}
_Sent = TypeVar("_Sent", Response, Stream)


class OpenAICompatibleClient:
    """Self-hosted tiers over HTTP, through one keep-alive connection pool
    (:mod:`cascade.tiers.pool`, connections kept per replica host) for complete and streamed
    calls alike; each call goes to the replica :class:`~cascade.tiers.replicas.Replicas` chooses
    (``engines``: the engines' own load, when the scraper reads it)."""

    def __init__(self, pool: ConnectionPool, *, engines: EngineLoads | None = None) -> None:
        self._pool = pool
        self.replicas = Replicas(engines)
        self._endpoints = PerObject(_endpoints)  # on a tier's first call (a reloaded one anew)

    def _auth(self, tier: Tier) -> bytes:
        env = tier.api_key_env
        key = os.environ.get(env) if env else None  # read per call: a rotated key takes effect
        if not key:
            return b""
        if "\r" in key or "\n" in key:
            raise TierError(tier.name, "connection", f"${env} holds a line break; fix the key")
        return f"authorization: Bearer {key}\r\n".encode()

    async def complete(
        self, tier: Tier, payload: Mapping[str, Any], *, affinity: str | None = None
    ) -> TierAnswer:
        """POST the request to a replica and parse the answer; failures become TierError.
        ``affinity``: the request's prefix hash, which ``routing: prefix`` keeps on one
        replica."""
        data = orjson.dumps({**payload, "model": tier.model, "stream": False})
        limits, headers = tier.timeouts, self._auth(tier)
        started = time.perf_counter()

        def post(endpoint: Endpoint) -> Awaitable[Response]:
            return self._pool.post(
                endpoint,
                data,
                headers=headers,
                connect_timeout=limits.connect_s,
                timeout=limits.total_s,
            )

        url, answer = await self._send(tier, affinity, post)
        self.replicas.ended(tier, url)
        if answer.status != 200:
            retry_after = answer.header("retry-after")
            error = http_error(tier.name, answer.status, answer.body, retry_after)
            raise self._refused(tier, url, error)
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            error = TierError(tier.name, "bad_response", "the answer is not JSON")
            raise self._refused(tier, url, error) from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            error = TierError(tier.name, "bad_response", "the answer has no choices")
            raise self._refused(tier, url, error)
        self.replicas.succeeded(tier, url)
        return TierAnswer(body, read_usage(body, payload), time.perf_counter() - started)

    async def stream(
        self, tier: Tier, payload: Mapping[str, Any], *, affinity: str | None = None
    ) -> AsyncIterator[JSON]:
        """POST a streamed request to a replica and yield its chunks until ``[DONE]``; failures
        (a stream that ends without ``[DONE]`` included) become TierError."""
        data = orjson.dumps({**payload, "model": tier.model, "stream": True})
        limits, headers = tier.timeouts, self._auth(tier)

        def open_stream(endpoint: Endpoint) -> Awaitable[Stream]:
            return self._pool.open(
                endpoint,
                data,
                headers=headers,
                connect_timeout=limits.connect_s,
                first_byte_timeout=limits.first_byte_s,
                idle_timeout=limits.stream_idle_s,
                timeout=limits.total_s,
            )

        url, answer = await self._send(tier, affinity, open_stream)
        try:
            if answer.status != 200:
                raise await _refusal(tier, answer)
            async for event in data_events(answer):
                if event == b"[DONE]":
                    answer.release()  # keep the connection once the body's end arrives
                    self.replicas.succeeded(tier, url)
                    return
                yield _chunk(tier, event)
            raise TierError(tier.name, "connection", "the stream ended without [DONE]")
        except TimeoutError as exc:
            error = TierError(tier.name, "timeout", f"the stream broke: {exc}")
        except HTTPConnectionError as exc:
            error = TierError(tier.name, "connection", f"the stream broke: {exc}")
        except TierError as exc:
            error = exc
        finally:
            answer.close()  # the consumer stopped early, or it broke: the connection goes
            self.replicas.ended(tier, url)
        raise self._refused(tier, url, error) from None

    async def _send(
        self, tier: Tier, affinity: str | None, send: Callable[[Endpoint], Awaitable[_Sent]]
    ) -> tuple[str, _Sent]:
        """``send`` to the replica routing chooses, and on to the next while one cannot be
        reached (the request never left); the replica that took it is returned with the call
        counted in flight there (:meth:`Replicas.ended` ends it)."""
        endpoints = self._endpoints(tier)
        unreachable: list[UnreachableError] = []
        for url in self.replicas.order(tier, affinity):
            self.replicas.started(tier, url)
            try:
                return url, await send(endpoints[url])
            except UnreachableError as exc:
                self.replicas.ended(tier, url)
                self.replicas.unreachable(tier, url)
                unreachable.append(exc)
            except (TimeoutError, HTTPConnectionError) as exc:
                self.replicas.ended(tier, url)
                kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
                raise self._refused(tier, url, TierError(tier.name, kind, str(exc))) from None
            except BaseException:
                self.replicas.ended(tier, url)
                raise
        kind = "timeout" if all(isinstance(e, TimeoutError) for e in unreachable) else "connection"
        raise TierError(tier.name, kind, "; ".join(map(str, unreachable)))

    def _refused(self, tier: Tier, url: str, error: TierError) -> TierError:
        """``error``, counted against the replica ``url``; its ``Retry-After`` keeps only that
        replica away while another one can take the tier's calls."""
        if self.replicas.failed(tier, url, error):
            error.retry_after_s = None
        return error


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


def _endpoints(tier: Tier) -> dict[str, Endpoint]:
    """Where each of ``tier``'s replicas is called, by base URL; TierError when the tier has no
    usable endpoint."""
    if not tier.endpoints:
        raise TierError(tier.name, "connection", "the tier has no endpoint")
    try:
        return {
            url: Endpoint.parse(url.rstrip("/") + "/chat/completions", _HEADERS)
            for url in tier.endpoints
        }
    except ValueError as exc:
        raise TierError(tier.name, "connection", str(exc)) from None
