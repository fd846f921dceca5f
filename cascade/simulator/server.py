"""The simulated tier's HTTP app: OpenAI's Chat Completions and Anthropic's Messages APIs over
the timing model.

Routes: ``POST /v1/chat/completions`` (streamed or not), ``POST /v1/messages`` (Anthropic's
Messages API, streamed or not, with marker-based prompt caching:
:mod:`~cascade.simulator.marker_cache`), ``GET /v1/models``, ``GET /health``,
``GET /metrics``. Beyond the APIs' fields, responses carry ``x-simulated-correct`` (whether the
data says the first choice is right), ``x-simulated-choices-correct`` (the same for every choice,
comma-separated, in index order) and, when not streamed, ``x-simulated-queue-ms``,
``x-simulated-ttft-ms`` and ``x-simulated-latency-ms`` in simulated (real-world) milliseconds.

With ``n`` > 1 the choices are ``n`` samples (:func:`~cascade.simulator.answers.compose_samples`):
they agree with the first as often as two cheap models' answers do in the data, and usage counts
every choice's completion tokens and the prompt once (the choices share one prefill, as in vLLM).

``/v1/messages`` answers from the same data and engine as one choice of a completion; only what
the request marks with ``cache_control`` is cached, as at Anthropic (the Chat Completions route
keeps vLLM's automatic prefix cache). litellm calls it for ``anthropic/...`` models when the
``api_base`` is the server's root (it appends ``/v1/messages`` itself).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascade.core.tokens import estimate_message_tokens
from cascade.simulator import anthropic_wire
from cascade.simulator.answers import Ask, compose_samples
from cascade.simulator.anthropic_stream import message_events
from cascade.simulator.engine import ApiEngine, BatchEngine, Clock, Overloaded
from cascade.simulator.engine import Request as Sequence_
from cascade.simulator.labels import LabelTable
from cascade.simulator.marker_cache import MarkerCache
from cascade.simulator.metrics import registry_for
from cascade.simulator.prefix import PrefixCache
from cascade.simulator.profiles import GpuTiming, Profile
from cascade.simulator.settings import SimulatorSettings
from cascade.simulator.streaming import merge, sse_events
from cascade.simulator.wire import (
    BadRequest,
    ChatRequest,
    Choice,
    NamedToolChoice,
    completion_body,
    error_body,
    parse_chat_request,
    usage_body,
)

__all__ = ["create_app"]

_log = structlog.get_logger("cascade.simulator")


@dataclass(frozen=True)
class _Tier:
    """Everything a request needs, built once in the lifespan."""

    settings: SimulatorSettings
    profile: Profile
    labels: LabelTable
    engine: BatchEngine | ApiEngine
    prefixes: PrefixCache
    markers: MarkerCache
    clock: Clock
    registry: CollectorRegistry


def create_app(
    settings: SimulatorSettings, *, labels: LabelTable | None = None, clock: Clock | None = None
) -> Starlette:
    """The app serving ``settings.profile``; pass ``labels`` to reuse a table already loaded,
    and ``clock`` to move simulated time from outside (a test letting cache entries expire)."""
    profile = settings.spec

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        table = labels
        if table is None:  # about half a second: off the event loop
            table = await asyncio.to_thread(LabelTable.load, settings.data_file)
        now = clock or Clock(settings.time_scale)
        engine: BatchEngine | ApiEngine
        if isinstance(profile.timing, GpuTiming):
            engine = BatchEngine(profile.timing, now, profile.max_concurrency, profile.overload)
        else:
            engine = ApiEngine(profile.timing, now, profile.max_concurrency, profile.overload)
        markers = MarkerCache()
        names = settings.metrics_names
        registry = registry_for(engine.stats, markers.stats, profile.models[0], names)
        tier = _Tier(settings, profile, table, engine, PrefixCache(), markers, now, registry)
        scheduler = asyncio.create_task(engine.run())
        _log.info("simulator.started", profile=profile.name, time_scale=settings.time_scale)
        try:
            yield {"tier": tier}
        finally:
            scheduler.cancel()
            with suppress(asyncio.CancelledError):
                await scheduler

    routes = [
        Route("/v1/chat/completions", _chat, methods=["POST"]),
        Route("/v1/messages", _messages, methods=["POST"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]
    handlers = {HTTPException: _http_error, Exception: _server_error}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)


def _tier(request: Request) -> _Tier:
    tier: _Tier = request.state.tier
    return tier


def _error(exc: BadRequest, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    path = request.url.path
    if path.endswith("/v1/messages") and path != "/v1/messages":  # litellm appends it to api_base
        wrong = BadRequest(
            f"{request.method} {path}: not served; an anthropic/... tier's endpoint is this "
            "server's root (http://host:port, without /v1)",
            status=status,
        )
        return JSONResponse(anthropic_wire.error_body(wrong), status_code=status)
    return _error(BadRequest(f"{request.method} {path}: not served", status=status))


async def _server_error(request: Request, exc: Exception) -> Response:
    _log.error("simulator.error", path=request.url.path, error=type(exc).__name__)
    return _error(BadRequest("the simulated tier failed on this request", status=500))


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _models(request: Request) -> Response:
    tier = _tier(request)
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "cascade-simulator"}
        for m in tier.profile.models
    ]
    return JSONResponse({"object": "list", "data": data})


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(_tier(request).registry), media_type=CONTENT_TYPE_LATEST)


async def _chat(request: Request) -> Response:
    tier = _tier(request)
    body = await request.body()
    try:
        if len(body) > tier.settings.max_body_bytes:
            raise BadRequest("the request body is too large", status=413)
        chat = parse_chat_request(body)
        if chat.model not in tier.profile.models:
            raise BadRequest(
                f"The model `{chat.model}` does not exist; this server serves "
                f"{', '.join(tier.profile.models)}.",
                status=404,
                param="model",
                code="model_not_found",
            )
        ask = _ask(chat)
    except BadRequest as exc:
        return _error(exc)
    replies = compose_samples(ask, tier.profile, tier.labels, chat.n)
    reply = replies[0]
    stop = [chat.stop] if isinstance(chat.stop, str) else chat.stop or []
    limit = chat.max_completion_tokens or chat.max_tokens
    choices = [Choice(r, limit, stop) for r in replies]
    messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    tools = [t.model_dump(exclude_none=True) for t in chat.tools] if chat.tools else None
    prompt_tokens = estimate_message_tokens(messages, tools)
    cached = min(tier.prefixes.cached_tokens(messages, tools), prompt_tokens)
    # n choices share one prefill, as in vLLM: the first pays for the prompt, the others reuse it.
    sequences = [
        Sequence_(ask.prompt, prompt_tokens, cached if i == 0 else prompt_tokens, len(c.tokens))
        for i, c in enumerate(choices)
    ]
    try:
        tier.engine.submit(sequences)
    except Overloaded as exc:
        refused, headers = _refusal(tier, exc, 503)
        return _error(refused, headers)
    usage = usage_body(prompt_tokens, cached, sum(len(c.tokens) for c in choices))
    headers = {
        "x-simulated-correct": str(reply.correct).lower(),
        "x-simulated-choices-correct": ",".join(str(r.correct).lower() for r in replies),
    }
    model = chat.model
    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        events = sse_events(
            merge([tier.engine.stream(s) for s in sequences]),
            model,
            choices,
            chat,
            usage if include_usage else None,
        )
        return StreamingResponse(
            _logged(events, tier, sequences, choices, reply.correct),
            media_type="text/event-stream",
            headers=headers,
        )
    await asyncio.gather(*(_finish(tier, s) for s in sequences))
    headers |= _timing_headers(sequences[0])
    _log_request(tier, sequences, choices, reply.correct)
    return JSONResponse(completion_body(model, choices, usage, chat), headers=headers)


def _refusal(tier: _Tier, exc: Overloaded, unavailable: int) -> tuple[BadRequest, dict[str, str]]:
    """The 429 (or ``unavailable`` status, in the 503 overload mode) refusing a request, and its
    Retry-After headers."""
    wait = max(exc.retry_after, 0.001)
    headers = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1e3))}
    status = unavailable if tier.profile.overload == "503" else 429
    refused = BadRequest(
        f"{tier.profile.name} is at its concurrency limit ({tier.profile.max_concurrency} "
        "sequences); retry later",
        status=status,
        code="rate_limit_exceeded",
    )
    _log.info("simulator.request", profile=tier.profile.name, status=status)
    return refused, headers


def _timing_headers(sequence: Sequence_) -> dict[str, str]:
    """Queue time, time to first token and latency of a finished sequence (simulated ms)."""
    return {
        f"x-simulated-{name}-ms": f"{((at or sequence.arrived) - sequence.arrived) * 1e3:.1f}"
        for name, at in (
            ("queue", sequence.started),
            ("ttft", sequence.first_token),
            ("latency", sequence.finished),
        )
    }


async def _messages(request: Request) -> Response:
    """``POST /v1/messages``: Anthropic's Messages API, one answer, marker-based caching."""
    tier = _tier(request)
    body = await request.body()
    try:
        if len(body) > tier.settings.max_body_bytes:
            raise BadRequest("the request body is too large", status=413)
        asked = anthropic_wire.parse_messages_request(body)
        if asked.model not in tier.profile.models:
            served = ", ".join(tier.profile.models)
            raise BadRequest(f"model: {asked.model}: not served here; served: {served}", status=404)
        ask = anthropic_wire.messages_ask(asked)
        blocks = anthropic_wire.prompt_blocks(asked)
        plan = tier.markers.plan(asked.model, blocks, tier.clock.now())
    except BadRequest as exc:  # the markers' InvalidMarkers included
        return JSONResponse(anthropic_wire.error_body(exc), status_code=exc.status)
    reply = compose_samples(ask, tier.profile, tier.labels, 1)[0]
    stops = asked.stop_sequences or []
    choice = Choice(reply, asked.max_tokens, stops)
    sequence = Sequence_(ask.prompt, plan.prompt_tokens, plan.read, len(choice.tokens))
    try:
        tier.engine.submit([sequence])
    except Overloaded as exc:
        refused, headers = _refusal(tier, exc, 529)
        error = anthropic_wire.error_body(refused)
        return JSONResponse(error, status_code=refused.status, headers=headers)
    tier.markers.commit(plan, tier.clock.now())
    headers = {
        "x-simulated-correct": str(reply.correct).lower(),
        "x-simulated-choices-correct": str(reply.correct).lower(),
    }
    if asked.stream:
        events = message_events(tier.engine.stream(sequence), asked.model, choice, plan, stops)
        return StreamingResponse(
            _logged(events, tier, [sequence], [choice], reply.correct),
            media_type="text/event-stream",
            headers=headers,
        )
    await _finish(tier, sequence)
    _log_request(tier, [sequence], [choice], reply.correct)
    answer = anthropic_wire.message_body(asked.model, choice, plan, stops)
    return JSONResponse(answer, headers=headers | _timing_headers(sequence))


async def _finish(tier: _Tier, sequence: Sequence_) -> None:
    async with aclosing(tier.engine.stream(sequence)) as counts:
        async for _ in counts:
            pass


async def _logged(
    events: AsyncGenerator[str, None],
    tier: _Tier,
    sequences: Sequence[Sequence_],
    choices: Sequence[Choice],
    correct: bool,
) -> AsyncIterator[str]:
    async with aclosing(events):
        async for event in events:
            yield event
    _log_request(tier, sequences, choices, correct)


def _log_request(
    tier: _Tier, sequences: Sequence[Sequence_], choices: Sequence[Choice], correct: bool
) -> None:
    first = sequences[0]
    _log.info(
        "simulator.request",
        profile=tier.profile.name,
        status=200,
        prompt_tokens=first.prompt_tokens,
        cached_tokens=first.cached_tokens,
        completion_tokens=sum(len(c.tokens) for c in choices),
        finish_reason=choices[0].finish_reason,
        correct=correct,
        latency_ms=round(((first.finished or first.arrived) - first.arrived) * 1e3, 1),
    )


def _ask(chat: ChatRequest) -> Ask:
    """What the answer depends on: the last user message, the tool to call, the JSON asked."""
    users = [m for m in chat.messages if m.role == "user"] or chat.messages
    content = users[-1].content
    if isinstance(content, list):
        content = "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    prompt = content or ""
    tool = None
    if chat.tools and chat.tool_choice != "none":
        functions = [t.function for t in chat.tools]
        if isinstance(chat.tool_choice, NamedToolChoice):
            name = chat.tool_choice.function.get("name")
            named = [f for f in functions if f.name == name]
            if not named:
                raise BadRequest(
                    f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
                )
            functions = named
        tool = functions[0].model_dump(exclude_none=True)
    schema = None
    form = chat.response_format
    if form is not None and form.type == "json_schema":
        schema = (form.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest(
                "response_format.json_schema.schema: a JSON Schema object is required",
                param="response_format.json_schema.schema",
            )
    json_mode = form is not None and form.type == "json_object"
    return Ask(prompt=prompt, tool=tool, json_schema=schema, json_mode=json_mode)
