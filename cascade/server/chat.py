"""``POST /v1/chat/completions`` as a plain ASGI handler: the proxy's hot path.

Every routed request passes through here, so it skips Starlette's request and response objects
and its middleware (about a quarter of a bare pass-through's CPU on 2 cores, measured with
``benchmarks/bench_proxy.py``): headers are read once from the scope, the body straight from
``receive``, and answers go out as pre-encoded bytes. Streams still use Starlette's
``StreamingResponse``, which watches for the client going away. Client mistakes get OpenAI's
error body with a 4xx status; upstream failures 502/503/504 with the reason; anything unexpected
a 500 in the same shape, logged with its traceback. Never a traceback to the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import orjson
import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cascade.core.decision import Decision
from cascade.errors import RoutingError
from cascade.run.router import (
    Attempt,
    Completion,
    UpstreamError,
    describe_attempts,
    new_request_id,
)
from cascade.run.streaming import StreamRun, open_stream
from cascade.server.metrics import Metrics
from cascade.server.openai_format import (
    BadRequestError,
    ChatRequest,
    ClientGoneError,
    authenticate,
    chunks_from_completion,
    error_body,
    parse_chat_request,
    read_body,
    sse,
)
from cascade.server.proxy import Proxy
from cascade.server.recording import attempt_records, request_record

log = structlog.get_logger("cascade.proxy")

CHAT_PATH = "/v1/chat/completions"

# Which status an upstream failure becomes: the client can retry a 503 later, a 504 sooner.
_UPSTREAM_STATUS = {"timeout": 504, "saturated": 503, "rate_limited": 503, "unavailable": 503}
_WANTED = frozenset(
    {b"authorization", b"content-length", b"x-cascade-tenant", b"x-cascade-workload"}
)
_JSON = (b"content-type", b"application/json")
_CENT_FRACTION = Decimal("1e-10")


@dataclass(frozen=True)
class JSONReply:
    """A complete JSON answer, encoded once, sent as one ASGI response."""

    status: int
    body: bytes
    headers: dict[str, str]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            _JSON,
            (b"content-length", str(len(self.body)).encode()),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def error_reply(
    status: int,
    message: str,
    *,
    request_id: str,
    param: str | None = None,
    code: str | None = None,
) -> JSONReply:
    """An error in OpenAI's shape, with the request id to quote when asking about it."""
    body = orjson.dumps(error_body(status, message, param=param, code=code))
    return JSONReply(status, body, {"x-cascade-request-id": request_id})


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    """Route, call, verify, escalate and spill one Chat Completions request."""
    request_id = new_request_id()
    try:
        reply = await _handle(scope, receive, request_id)
    except ClientGoneError:
        return
    except Exception:  # a bug of ours: the client gets a 500 in OpenAI's shape, the log the trace
        log.exception("request.crashed", request_id=request_id)
        reply = error_reply(
            500,
            f"the proxy failed on this request (request id {request_id}); see its log",
            request_id=request_id,
            code="internal_error",
        )
    await reply(scope, receive, send)


@dataclass(frozen=True)
class _Exchange:
    """One request's context while the handler works on it."""

    proxy: Proxy
    metrics: Metrics
    request_id: str
    tenant: str | None
    started: float

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def finish(
        self,
        decision: Decision,
        attempts: Sequence[Attempt],
        *,
        final_tier: str | None,
        http_status: int,
        stream: bool,
    ) -> None:
        """Count the request in the metrics and hand its rows to the ledger."""
        outcome = "ok" if http_status == 200 else "error"
        last = final_tier or (attempts[-1].tier if attempts else decision.tier)
        self.metrics.record(decision.policy, last, outcome, attempts)
        if not self.proxy.keeps_ledger:  # no rows to build
            return
        self.proxy.record(
            request_record(
                request_id=self.request_id,
                decision=decision,
                attempts=attempts,
                final_tier=final_tier,
                http_status=http_status,
                latency_ms=self.elapsed_ms(),
                tenant=self.tenant,
                stream=stream,
            ),
            attempt_records(attempts),
        )

    def log_completed(self, decision: Decision, **fields: object) -> None:
        """Log the finished request (callers check :func:`_logs_info` before building fields)."""
        log.info(
            "request.completed",
            request_id=self.request_id,
            policy=decision.policy,
            policy_version=decision.policy_version,
            confidence=round(decision.confidence, 4),
            reason=decision.reason,
            latency_ms=round(self.elapsed_ms(), 2),
            **fields,
        )


async def _handle(scope: Scope, receive: Receive, request_id: str) -> JSONReply | StreamingResponse:
    state = scope.get("state") or {}
    proxy: Proxy | None = state.get("proxy")
    metrics: Metrics | None = state.get("metrics")
    if proxy is None or metrics is None:
        return error_reply(503, "the proxy is starting; retry shortly", request_id=request_id)
    headers = _headers_of(scope)
    exchange = _Exchange(
        proxy, metrics, request_id, headers.get("x-cascade-tenant"), time.perf_counter()
    )
    try:
        authenticate(headers.get("authorization"), proxy.settings.api_keys)
        limit = proxy.settings.max_body_bytes
        raw = await read_body(receive, headers.get("content-length"), limit)
        chat, body = parse_chat_request(raw)
        router, pinned = proxy.resolve(chat.model)
        decision = await router.plan(body, workload=headers.get("x-cascade-workload"), tier=pinned)
        metrics.observe_decision(time.perf_counter() - exchange.started)
        if chat.stream and router.policy.escalation.streaming == "passthrough":
            run = await open_stream(router, body, decision)
            return _relay(run, chat, decision, exchange)
        completion = await router.run(body, decision, request_id=request_id)
    except BadRequestError as exc:
        return error_reply(
            exc.status, exc.message, param=exc.param, code=exc.code, request_id=request_id
        )
    except RoutingError as exc:
        return error_reply(400, str(exc), request_id=request_id)
    except UpstreamError as exc:
        return _failed(exc, chat, decision, exchange)
    return _delivered(completion, chat, exchange)


def _failed(
    exc: UpstreamError, chat: ChatRequest, decision: Decision, exchange: _Exchange
) -> JSONReply:
    """No tier answered: log, count and record it; the client gets 502/503/504 and why."""
    status = (
        exc.status
        if exc.kind == "client_error" and exc.status
        else (_UPSTREAM_STATUS.get(exc.kind, 502))
    )
    tried = ", ".join(f"{a.tier} ({a.error_class})" for a in exc.attempts)
    log.warning(
        "request.failed",
        request_id=exchange.request_id,
        status=status,
        error=str(exc),
        attempts=tried,
    )
    exchange.finish(decision, exc.attempts, final_tier=None, http_status=status, stream=chat.stream)
    return error_reply(
        status,
        f"no tier could answer: {exc} (tried {tried})",
        code=exc.kind,
        request_id=exchange.request_id,
    )


def _delivered(
    completion: Completion, chat: ChatRequest, exchange: _Exchange
) -> JSONReply | StreamingResponse:
    """An accepted answer: count, record and log it, and send it as JSON or as a stream."""
    decision = completion.decision
    exchange.finish(
        decision,
        completion.attempts,
        final_tier=completion.tier,
        http_status=200,
        stream=chat.stream,
    )
    reply_headers = _completion_headers(completion)
    if _logs_info():
        exchange.log_completed(
            decision,
            tier=completion.tier,
            attempts=reply_headers["x-cascade-attempts"],
            cost_usd=str(completion.cost_usd),
            stream=chat.stream,
        )
    if chat.stream:
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            iter(list(chunks_from_completion(completion.body, include_usage=include_usage))),
            media_type="text/event-stream",
            headers=reply_headers,
        )
    return JSONReply(200, orjson.dumps(completion.body), reply_headers)


def _logs_info() -> bool:
    """Whether info lines are logged (the per-request line is skipped, fields and all, if not)."""
    check = getattr(log, "is_enabled_for", None)  # structlog's filtering loggers have it
    return check is None or bool(check(logging.INFO))


def _headers_of(scope: Scope) -> dict[str, str]:
    """The few request headers the proxy reads (ASGI servers send names in lower case)."""
    raw: Iterable[tuple[bytes, bytes]] = scope["headers"]
    return {name.decode(): value.decode("latin-1") for name, value in raw if name in _WANTED}


def _answer_headers(tier: str, model: str, decision: Decision, request_id: str) -> dict[str, str]:
    """What every answer says about its routing (a stream can say no more before it starts)."""
    return {
        "x-cascade-tier": tier,
        "x-cascade-model": model,
        "x-cascade-confidence": f"{decision.confidence:.4f}",
        "x-cascade-request-id": request_id,
    }


def _completion_headers(completion: Completion) -> dict[str, str]:
    headers = _answer_headers(
        completion.tier, completion.model, completion.decision, completion.request_id
    )
    headers["x-cascade-cost-usd"] = f"{completion.cost_usd.quantize(_CENT_FRACTION):f}"
    headers["x-cascade-attempts"] = describe_attempts(completion.attempts)
    if completion.decision.spilled_from is not None:
        headers["x-cascade-spilled-from"] = completion.decision.spilled_from
    return headers


def _relay(
    run: StreamRun, chat: ChatRequest, decision: Decision, exchange: _Exchange
) -> StreamingResponse:
    """Relay a started stream; a break after the first chunk ends with an error event."""
    wants_usage = bool((chat.stream_options or {}).get("include_usage"))

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
        exchange.finish(
            decision,
            run.attempts,
            final_tier=run.tier.name,
            http_status=200 if run.error is None else 502,
            stream=True,
        )
        if _logs_info():
            exchange.log_completed(
                decision,
                tier=run.tier.name,
                attempts=describe_attempts(run.attempts),
                cost_usd=str(run.cost_usd),
                stream=True,
                outcome="ok" if run.error is None else "error",
            )

    headers = _answer_headers(run.tier.name, run.tier.model, decision, exchange.request_id)
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
