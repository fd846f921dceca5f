"""The OpenAI-compatible proxy: ``create_app(settings)`` builds the Starlette application.

Endpoints: ``POST /v1/chat/completions`` (streamed and not), ``GET /v1/models``, ``/healthz``,
``/readyz`` and ``/metrics`` (Prometheus). Everything shared — routers, the HTTP session, the
scorer's micro-batcher — is built in the lifespan. Client mistakes get OpenAI's error body with a
4xx status; upstream failures 502/503/504 with the reason; never a traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascade.decision import Decision
from cascade.errors import RoutingError
from cascade.router import Completion, UpstreamError, describe_attempts, new_request_id
from cascade.server.metrics import Metrics
from cascade.server.openai_format import (
    BadRequestError,
    ChatRequest,
    chunks_from_completion,
    error_response,
    parse_chat_request,
    sse,
)
from cascade.server.proxy import Proxy
from cascade.server.recording import attempt_records, request_record
from cascade.server.settings import ServerSettings
from cascade.streaming import StreamRun, open_stream

log = structlog.get_logger("cascade.proxy")

# Which status an upstream failure becomes: the client can retry a 503 later, a 504 sooner.
_UPSTREAM_STATUS = {"timeout": 504, "saturated": 503, "rate_limited": 503, "unavailable": 503}


SETTINGS_ENV = "CASCADE_SERVE_SETTINGS"


def create_app_from_env() -> Starlette:
    """The app for uvicorn's worker processes: settings come as JSON in CASCADE_SERVE_SETTINGS."""
    return create_app(ServerSettings.from_json(os.environ[SETTINGS_ENV]))


def create_app(settings: ServerSettings) -> Starlette:
    """The proxy as an ASGI application (serve it with uvicorn, or test it via ASGITransport)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        proxy = Proxy(settings)
        try:
            await proxy.start()
            yield {"proxy": proxy, "metrics": metrics}
        finally:
            await proxy.close()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def chat_completions(request: Request) -> Response:
    """Route, call, verify, escalate and spill one Chat Completions request."""
    proxy: Proxy = request.state.proxy
    metrics: Metrics = request.state.metrics
    request_id = new_request_id()
    started = time.perf_counter()
    try:
        _authenticate(request, proxy)
        raw = await _read_body(request, proxy.settings.max_body_bytes)
        chat, body = parse_chat_request(raw)
        router, pinned = proxy.resolve(chat.model)
        decision = await router.plan(
            body, workload=request.headers.get("x-cascade-workload"), tier=pinned
        )
        metrics.decision_seconds.observe(time.perf_counter() - started)
        if chat.stream and router.policy.escalation.streaming == "passthrough":
            run = await open_stream(router, body, decision)
            return _relay(
                run,
                proxy=proxy,
                tenant=request.headers.get("x-cascade-tenant"),
                chat=chat,
                decision=decision,
                request_id=request_id,
                metrics=metrics,
                started=started,
            )
        completion = await router.run(body, decision, request_id=request_id)
    except BadRequestError as exc:
        return error_response(
            exc.status,
            exc.message,
            param=exc.param,
            code=exc.code,
            headers={"x-cascade-request-id": request_id},
        )
    except RoutingError as exc:
        return error_response(400, str(exc), headers={"x-cascade-request-id": request_id})
    except UpstreamError as exc:
        status = (
            exc.status
            if exc.kind == "client_error" and exc.status
            else (_UPSTREAM_STATUS.get(exc.kind, 502))
        )
        tried = ", ".join(f"{a.tier} ({a.error_class})" for a in exc.attempts)
        log.warning(
            "request.failed", request_id=request_id, status=status, error=str(exc), attempts=tried
        )
        metrics.record(router.policy.name, exc.tier, "error", exc.attempts)
        proxy.record(
            request_record(
                request_id=request_id,
                decision=decision,
                attempts=exc.attempts,
                final_tier=None,
                http_status=status,
                latency_ms=(time.perf_counter() - started) * 1000,
                tenant=request.headers.get("x-cascade-tenant"),
                stream=chat.stream,
            ),
            attempt_records(exc.attempts),
        )
        return error_response(
            status,
            f"no tier could answer: {exc} (tried {tried})",
            code=exc.kind,
            headers={"x-cascade-request-id": request_id},
        )
    metrics.record(router.policy.name, completion.tier, "ok", completion.attempts)
    proxy.record(
        request_record(
            request_id=request_id,
            decision=decision,
            attempts=completion.attempts,
            final_tier=completion.tier,
            http_status=200,
            latency_ms=(time.perf_counter() - started) * 1000,
            tenant=request.headers.get("x-cascade-tenant"),
            stream=chat.stream,
        ),
        attempt_records(completion.attempts),
    )
    headers = _headers(completion)
    log.info(
        "request.completed",
        request_id=request_id,
        policy=router.policy.name,
        policy_version=decision.policy_version,
        confidence=round(decision.confidence, 4),
        reason=decision.reason,
        tier=completion.tier,
        attempts=headers["x-cascade-attempts"],
        cost_usd=str(completion.cost_usd),
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        stream=chat.stream,
    )
    if chat.stream:
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            iter(list(chunks_from_completion(completion.body, include_usage=include_usage))),
            media_type="text/event-stream",
            headers=headers,
        )
    return JSONResponse(completion.body, headers=headers)


def _relay(
    run: StreamRun,
    *,
    proxy: Proxy,
    tenant: str | None,
    chat: ChatRequest,
    decision: Decision,
    request_id: str,
    metrics: Metrics,
    started: float,
) -> StreamingResponse:
    """Relay a started stream; a break after the first chunk ends with an error event."""
    wants_usage = bool((chat.stream_options or {}).get("include_usage"))
    policy = decision.policy

    async def events() -> AsyncIterator[bytes]:
        async for chunk in run.chunks():
            if chunk.get("usage") is not None and not chunk.get("choices") and not wants_usage:
                continue
            yield sse(chunk)
        if run.error is None:
            yield sse("[DONE]")
        else:
            yield sse(
                {
                    "error": {
                        "message": f"the answer was cut: {run.error}",
                        "type": "api_error",
                        "param": None,
                        "code": "stream_interrupted",
                    }
                }
            )
        outcome = "ok" if run.error is None else "error"
        metrics.record(policy, run.tier.name, outcome, run.attempts)
        proxy.record(
            request_record(
                request_id=request_id,
                decision=decision,
                attempts=run.attempts,
                final_tier=run.tier.name,
                http_status=200 if run.error is None else 502,
                latency_ms=(time.perf_counter() - started) * 1000,
                tenant=tenant,
                stream=True,
            ),
            attempt_records(run.attempts),
        )
        for attempt in run.attempts:
            metrics.attempts.labels(attempt.tier, attempt.role, attempt.outcome).inc()
            metrics.cost.labels(policy, attempt.tier).inc(float(attempt.cost_usd))
        log.info(
            "request.completed",
            request_id=request_id,
            policy=policy,
            policy_version=decision.policy_version,
            confidence=round(decision.confidence, 4),
            reason=decision.reason,
            tier=run.tier.name,
            attempts=describe_attempts(run.attempts),
            cost_usd=str(run.cost_usd),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            stream=True,
            outcome=outcome,
        )

    headers = {
        "x-cascade-tier": run.tier.name,
        "x-cascade-model": run.tier.model,
        "x-cascade-confidence": f"{decision.confidence:.4f}",
        "x-cascade-request-id": request_id,
    }
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _authenticate(request: Request, proxy: Proxy) -> None:
    keys = proxy.settings.api_keys
    if not keys:
        return
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if token not in keys:
        raise BadRequestError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer <key>')",
            code="invalid_api_key",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequestError(413, f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequestError(413, f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(completion: Completion) -> dict[str, str]:
    attempts = describe_attempts(completion.attempts)
    extra = {}
    if completion.decision.spilled_from is not None:
        extra["x-cascade-spilled-from"] = completion.decision.spilled_from
    return {
        **extra,
        "x-cascade-tier": completion.tier,
        "x-cascade-model": completion.model,
        "x-cascade-confidence": f"{completion.decision.confidence:.4f}",
        "x-cascade-cost-usd": f"{completion.cost_usd.quantize(Decimal('1e-10')):f}",
        "x-cascade-request-id": completion.request_id,
        "x-cascade-attempts": attempts,
    }


async def feedback(request: Request) -> Response:
    """Mark a request's answer useless: ``{"request_id": "req_…", "useless": true}``.

    Its output tokens then stop counting as useful, so cost per useful token shows the waste.
    """
    proxy: Proxy = request.state.proxy
    try:
        _authenticate(request, proxy)
        body = json.loads(await _read_body(request, 64 * 1024))
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise BadRequestError(
                400,
                "request_id: a string from x-cascade-request-id is required",
                param="request_id",
            )
        if body.get("useless", True) is not True:
            raise BadRequestError(
                400, "useless: only true is accepted (answers start useful)", param="useless"
            )
        if not await proxy.mark_useless(request_id):
            raise BadRequestError(
                404, f"no request {request_id!r} in the ledger", param="request_id"
            )
    except BadRequestError as exc:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    except ValueError as exc:
        return error_response(400, f"the request body is not valid JSON: {exc}")
    return JSONResponse({"request_id": request_id, "useless": True})


async def models(request: Request) -> Response:
    """The model names clients may send: ``cascade``, ``cascade/<policy>`` and tier models."""
    proxy: Proxy = request.state.proxy
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "cascade"}
        for name in proxy.model_names()
    ]
    return JSONResponse({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Policies and the scorer are loaded: the proxy can route."""
    proxy: Proxy = request.state.proxy
    ready = bool(proxy.routers)
    body = {"status": "ready" if ready else "starting", "policies": list(proxy.routers)}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics, with calls in flight per tier."""
    metrics: Metrics = request.state.metrics
    proxy: Proxy = request.state.proxy
    text = generate_latest(metrics.registry).decode()
    for tier, count in sorted(proxy.in_flight().items()):
        text += f'cascade_in_flight{{tier="{tier}"}} {count}\n'
    return Response(text, media_type=CONTENT_TYPE_LATEST)
