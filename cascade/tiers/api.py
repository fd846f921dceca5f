"""API tiers through litellm: ``anthropic/...``, ``openai/...``, ``gemini/...`` model strings.

litellm is imported on first use (it costs ~1.9 s and ~160 MB), with its price map read from the
bundled copy (``LITELLM_LOCAL_MODEL_COST_MAP=True``): no network fetch, no retry thread. Keys come
from the environment, either the provider's usual variable or the tier's ``api_key_env``.

litellm's exceptions are classified by their type, not by the status code it attaches (it reports
a request field it cannot use as a 500 ``APIConnectionError``): the provider's 4xx, and whatever
litellm raises on the request's own fields before calling anyone, are the client's mistake
(``client_error``: answered with its 4xx, never spilled, never counted against the tier).

A payload's ``service_tier`` (set by :mod:`cascade.run.payloads` for a workload the tier sends
at one of its ``service_tiers``) is passed on, in the request body for Anthropic (whose
``service_tier`` litellm refuses as a parameter), with that service tier's timeouts. A flex call
the provider has no capacity for is OpenAI's 429 ``resource_unavailable``: ``rate_limited``,
so it spills like any 429. The service tier that served the call, when the provider says
another than the one asked for (priority downgraded to default), is logged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from decimal import Decimal
from typing import Any

import structlog

from cascade.core.cache_markers import write_premium
from cascade.core.pricing import Rates
from cascade.errors import TierError, missing_extra
from cascade.policy.model import Tier, Timeouts
from cascade.policy.service_tiers import provider
from cascade.tiers.base import (
    JSON,
    TierAnswer,
    error_message,
    read_usage,
    retry_after_s,
    status_kind,
)

_log = structlog.get_logger("cascade.tiers")


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm  # noqa: PLC0415 - heavy optional dependency, loaded only for API tiers
    except ModuleNotFoundError as exc:
        raise missing_extra(exc.name) or exc from None
    # litellm prints a help banner to stdout on every failed call; the proxy logs its own
    # failures (as JSON, with the tier and the reason), and stdout is the client's in the CLI.
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMClient:
    """Calls API tiers with ``litellm.acompletion``; failures become TierError."""

    def __init__(self) -> None:
        self._litellm = _litellm()
        self._kinds = _kinds(self._litellm)
        self._needs: dict[str, tuple[str, ...]] = {}  # model -> the key variables it reads

    def missing_key(self, tier: Tier) -> str | None:
        """The environment variable the tier needs for its key and that is not set (checked
        on every call, so a key set later takes effect), or None when the key is there."""
        if tier.api_key_env:
            return None if os.environ.get(tier.api_key_env) else tier.api_key_env
        if tier.model not in self._needs:
            try:
                found = self._litellm.validate_environment(model=tier.model)
                needs = tuple(found.get("missing_keys") or ())
            except Exception:  # an unknown provider: let the call say what it lacks
                needs = ()
            self._needs[tier.model] = needs  # what was missing at the first call
        return next((name for name in self._needs[tier.model] if not os.environ.get(name)), None)

    def _arguments(self, tier: Tier, payload: Mapping[str, Any]) -> JSON:
        if (missing := self.missing_key(tier)) is not None:
            # Unavailable, not a client error: the request may spill to a tier that can answer.
            raise TierError(tier.name, "unavailable", f"no API key: ${missing} is not set")
        for name in _OBJECTS:
            value = payload.get(name)
            if value is not None and not isinstance(value, dict):
                # litellm fails on these before any call (a TypeError it reports as a connection
                # error, or an AttributeError): the request's mistake, not the tier's.
                raise TierError(
                    tier.name,
                    "client_error",
                    f"{name} must be an object, not {_json_type(value)}",
                    400,
                )
        arguments: JSON = {k: v for k, v in payload.items() if k not in ("model", "stream")}
        arguments["model"] = tier.model
        arguments["timeout"] = _limits(tier, payload).total_s
        service = arguments.get("service_tier")
        if service is not None and provider(tier.model) in _IN_BODY:
            del arguments["service_tier"]
            extra = arguments.get("extra_body")
            extra = extra if isinstance(extra, dict) else {}
            arguments["extra_body"] = {**extra, "service_tier": service}
        # No retries inside the provider's SDK: on a 429 it would wait out Retry-After (twice,
        # 15 s for "Retry-After: 7") before cascade could spill the request or cool the tier.
        arguments["max_retries"] = 0
        if tier.endpoint:
            arguments["api_base"] = tier.endpoint
        if tier.api_key_env:
            arguments["api_key"] = os.environ.get(tier.api_key_env, "")
        return arguments

    async def complete(
        self, tier: Tier, payload: Mapping[str, Any], *, affinity: str | None = None
    ) -> TierAnswer:
        """One non-streamed call (``affinity`` is not used: the provider places the call)."""
        started = time.perf_counter()
        arguments = self._arguments(tier, payload)
        limit = _limits(tier, payload).total_s
        try:
            # The policy's limit holds whatever the SDK does inside (its own timeout covers one
            # socket read; a 3 MB prompt took minutes to come back as a 504 without this).
            async with asyncio.timeout(limit):
                response = await self._litellm.acompletion(**arguments)
        except TimeoutError:
            raise TierError(tier.name, "timeout", f"no complete answer within {limit}s") from None
        except Exception as exc:  # litellm raises its own tree; each is mapped to a kind below
            raise self._error(tier, exc) from None
        body: JSON = response.model_dump(exclude_none=True)
        _note_served(tier, payload.get("service_tier"), body)
        return TierAnswer(body, read_usage(body, payload), time.perf_counter() - started)

    async def stream(
        self, tier: Tier, payload: Mapping[str, Any], *, affinity: str | None = None
    ) -> AsyncIterator[JSON]:
        """One streamed call, chunk by chunk (``affinity`` is not used)."""
        arguments = self._arguments(tier, payload)
        limits = _limits(tier, payload)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.total_s
        # Until the first chunk: first_byte_s; between chunks: stream_idle_s; in all: total_s.
        # Each limit covers only an await of ours, never a yield (the consumer's time is its own).
        until = min(loop.time() + limits.first_byte_s, deadline)
        what = f"no first chunk within {limits.first_byte_s}s"
        call = self._litellm.acompletion(**arguments, stream=True)
        iterator = aiter(await self._within(tier, call, until, deadline, what))
        while True:
            try:
                chunk = await self._within(tier, anext(iterator), until, deadline, what)
            except StopAsyncIteration:
                return
            until = min(loop.time() + limits.stream_idle_s, deadline)
            what = f"the stream stalled for {limits.stream_idle_s}s"
            yield chunk.model_dump(exclude_none=True)

    async def _within(
        self, tier: Tier, step: Awaitable[Any], until: float, deadline: float, what: str
    ) -> Any:
        """Await one step of a call before ``until`` (loop time); TierError otherwise."""
        try:
            async with asyncio.timeout_at(until):
                return await step
        except TimeoutError:
            why = "no complete answer within the total limit" if until >= deadline else what
            raise TierError(tier.name, "timeout", why) from None
        except StopAsyncIteration:
            raise
        except Exception as exc:  # see complete()
            raise self._error(tier, exc) from None

    def _error(self, tier: Tier, exc: Exception) -> TierError:
        kind, status = _classify(exc, self._kinds)
        wait = retry_after_s(_retry_after(exc)) if kind in ("rate_limited", "unavailable") else None
        return TierError(
            tier.name,
            kind,
            f"{type(exc).__name__}: {error_message(str(exc).encode())}",
            status,
            retry_after_s=wait,
        )

    async def aclose(self) -> None:
        """Close litellm's cached HTTP clients, which live on the calling event loop."""
        await self._litellm.close_litellm_async_clients()

    def rates(self, tier: Tier, service_tier: str | None = None) -> Rates | None:
        """Per-token US dollars from litellm's price map (cached input at its cache-read price,
        cache writes at its cache-creation price for the tier's ttl, when the map has them;
        else the write premium of the tier's markers); None for a model the map does not know.
        At a ``service_tier`` the map prices (``input_cost_per_token_flex``, ``_priority``),
        its prices; at another (``auto``, ``default``), the standard ones."""
        try:
            entry = self._litellm.model_cost.get(tier.model) or self._litellm.model_cost.get(
                tier.model.split("/", 1)[-1]
            )
        except AttributeError:
            return None
        if not entry or "input_cost_per_token" not in entry:
            return None
        at = f"_{service_tier}" if f"input_cost_per_token_{service_tier}" in entry else ""

        def price(key: str) -> Any:
            return entry.get(key + at, entry.get(key))

        fresh = Decimal(str(price("input_cost_per_token")))
        cached = price("cache_read_input_token_cost")
        written = price(_WRITE_PRICE[tier.cache.ttl])
        return Rates(
            input=fresh,
            cached_input=fresh if cached is None else Decimal(str(cached)),
            output=Decimal(str(price("output_cost_per_token") or 0)),
            cache_write=fresh * write_premium(tier) if written is None else Decimal(str(written)),
        )


_WRITE_PRICE = {
    "5m": "cache_creation_input_token_cost",
    "1h": "cache_creation_input_token_cost_above_1hr",
}
"""litellm's price-map entry for a cache write, by the tier's ``cache.ttl``."""

_IN_BODY = frozenset({"anthropic"})
"""Providers whose API takes ``service_tier`` but for which litellm refuses the parameter."""


def _limits(tier: Tier, payload: Mapping[str, Any]) -> Timeouts:
    """The call's timeouts: its service tier's, when it has its own, else the tier's."""
    service = tier.service_tiers.get(payload.get("service_tier") or "")
    return tier.timeouts if service is None or service.timeouts is None else service.timeouts


def _note_served(tier: Tier, asked: object, body: Mapping[str, Any]) -> None:
    """Log a call served at another service tier than the one asked for (the charge is the
    asked one's; the provider's bill follows the served one)."""
    served = body.get("service_tier")
    if isinstance(asked, str) and asked != "auto" and isinstance(served, str) and served != asked:
        _log.warning("tier.service_tier_differs", tier=tier.name, asked=asked, served=served)


_OBJECTS = ("response_format", "metadata")
"""Request fields litellm reads as objects before it calls the provider."""

_INPUT_ERRORS = (TypeError, ValueError, AttributeError, KeyError)
"""What litellm's own code raises on arguments it cannot use, before any network call."""

_Kinds = tuple[tuple[type[BaseException], str, int | None], ...]


def _kinds(litellm: Any) -> _Kinds:
    """litellm's exceptions, subclasses before their bases, with the TierError kind each is and
    the status it stands for (None: the exception's own ``status_code``)."""
    return (
        (litellm.Timeout, "timeout", None),  # a subclass of APIConnectionError
        (litellm.BadRequestError, "client_error", 400),  # context window, content policy, …
        (litellm.UnprocessableEntityError, "client_error", 422),
        (litellm.AuthenticationError, "client_error", 401),
        (litellm.PermissionDeniedError, "client_error", 403),
        (litellm.NotFoundError, "client_error", 404),
        (litellm.RateLimitError, "rate_limited", 429),
        (litellm.ServiceUnavailableError, "unavailable", 503),
        (litellm.APIConnectionError, "connection", None),
        (litellm.InternalServerError, "server_error", None),
        (litellm.BadGatewayError, "server_error", 502),
    )


def _classify(exc: Exception, kinds: _Kinds) -> tuple[str, int | None]:
    """The TierError kind and status of an exception from ``litellm.acompletion``: by its type
    first; a status code only for the types not listed (``APIError`` and the like)."""
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) and 100 <= status <= 599 else None
    for kind_of, kind, fixed in kinds:
        if isinstance(exc, kind_of):
            if kind == "connection" and isinstance(exc.__cause__ or exc.__context__, _INPUT_ERRORS):
                return "client_error", 400  # litellm failed on the request before sending it
            if kind == "client_error":
                return kind, status if status is not None and 400 <= status < 500 else fixed
            return kind, fixed if fixed is not None else status
    if status is not None:
        return status_kind(status), status  # an APIError (or openai's) with the provider's status
    if isinstance(exc, _INPUT_ERRORS):
        return "client_error", 400  # raised by litellm's argument handling, outside its tree
    return "server_error", None


def _json_type(value: object) -> str:
    names = {str: "a string", list: "an array", bool: "a boolean", int: "a number"}
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


def _retry_after(exc: Exception) -> str | None:
    """The provider's Retry-After, wherever litellm kept it: the exception's ``response`` (an
    httpx.Response; litellm often builds one without headers) or its
    ``litellm_response_headers``."""
    response = getattr(exc, "response", None)
    for headers in (
        getattr(response, "headers", None),
        getattr(exc, "litellm_response_headers", None),
    ):
        if isinstance(headers, Mapping):
            value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
            if isinstance(value, str):
                return value
    return None
