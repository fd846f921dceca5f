"""API tiers through litellm: ``anthropic/...``, ``openai/...``, ``gemini/...`` model strings.

litellm is imported on first use (it costs ~1.9 s and ~160 MB), with its price map read from the
bundled copy (``LITELLM_LOCAL_MODEL_COST_MAP=True``): no network fetch, no retry thread. Keys come
from the environment, either the provider's usual variable or the tier's ``api_key_env``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any

from cascade.core.pricing import Rates
from cascade.errors import TierError, missing_extra
from cascade.policy.model import Tier
from cascade.tiers.base import JSON, TierAnswer, error_message, read_usage, retry_after_s


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm  # noqa: PLC0415 - heavy optional dependency, loaded only for API tiers
    except ModuleNotFoundError as exc:
        raise missing_extra(exc.name) or exc from None
    return litellm


class LiteLLMClient:
    """Calls API tiers with ``litellm.acompletion``; failures become TierError."""

    def __init__(self) -> None:
        self._litellm = _litellm()

    def _arguments(self, tier: Tier, payload: Mapping[str, Any]) -> JSON:
        arguments: JSON = {k: v for k, v in payload.items() if k not in ("model", "stream")}
        arguments["model"] = tier.model
        arguments["timeout"] = tier.timeouts.total_s
        # No retries inside the provider's SDK: on a 429 it would wait out Retry-After (twice,
        # 15 s for "Retry-After: 7") before cascade could spill the request or cool the tier.
        arguments["max_retries"] = 0
        if tier.endpoint:
            arguments["api_base"] = tier.endpoint
        if tier.api_key_env:
            arguments["api_key"] = os.environ.get(tier.api_key_env, "")
        return arguments

    async def complete(self, tier: Tier, payload: Mapping[str, Any]) -> TierAnswer:
        """One non-streamed call."""
        started = time.perf_counter()
        try:
            response = await self._litellm.acompletion(**self._arguments(tier, payload))
        except Exception as exc:  # litellm raises its own tree; each is mapped to a kind below
            raise _tier_error(tier, exc) from None
        body: JSON = response.model_dump(exclude_none=True)
        return TierAnswer(body, read_usage(body, payload), time.perf_counter() - started)

    async def stream(self, tier: Tier, payload: Mapping[str, Any]) -> AsyncIterator[JSON]:
        """One streamed call, chunk by chunk."""
        try:
            chunks = await self._litellm.acompletion(**self._arguments(tier, payload), stream=True)
            async for chunk in chunks:
                yield chunk.model_dump(exclude_none=True)
        except Exception as exc:  # see complete()
            raise _tier_error(tier, exc) from None

    async def aclose(self) -> None:
        """Close litellm's cached HTTP clients, which live on the calling event loop."""
        await self._litellm.close_litellm_async_clients()

    def rates(self, tier: Tier) -> Rates | None:
        """Per-token US dollars from litellm's price map (cached input at its cache-read price
        when the map has one); None for a model the map does not know."""
        try:
            entry = self._litellm.model_cost.get(tier.model) or self._litellm.model_cost.get(
                tier.model.split("/", 1)[-1]
            )
        except AttributeError:
            return None
        if not entry or "input_cost_per_token" not in entry:
            return None
        fresh = Decimal(str(entry["input_cost_per_token"]))
        cached = entry.get("cache_read_input_token_cost")
        return Rates(
            input=fresh,
            cached_input=fresh if cached is None else Decimal(str(cached)),
            output=Decimal(str(entry.get("output_cost_per_token", 0))),
        )


def _tier_error(tier: Tier, exc: Exception) -> TierError:
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if "Timeout" in name:
        kind = "timeout"
    elif "Connection" in name:
        kind = "connection"
    elif status == 429 or "RateLimit" in name:
        kind = "rate_limited"
    elif status == 503 or "ServiceUnavailable" in name:
        kind = "unavailable"
    elif isinstance(status, int) and status >= 500:
        kind = "server_error"
    elif isinstance(status, int):
        kind = "client_error"
    else:
        kind = "server_error"
    wait = retry_after_s(_retry_after(exc)) if kind in ("rate_limited", "unavailable") else None
    return TierError(
        tier.name,
        kind,
        f"{name}: {error_message(str(exc).encode())}",
        status if isinstance(status, int) else None,
        retry_after_s=wait,
    )


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
