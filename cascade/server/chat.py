"""``POST /v1/chat/completions`` as a plain ASGI handler: the proxy's hot path.

Every routed request passes through here, so it skips Starlette's request and response objects
and its middleware (about a quarter of a bare pass-through's CPU on 2 cores, measured with
``benchmarks/bench_proxy.py``): headers are read once from the scope, the body straight from
``receive``, the request parsed once into a :class:`~cascade.core.request.ChatRequest`, and
answers go out as pre-encoded bytes (:mod:`cascade.server.replies`). Client mistakes get OpenAI's
error body with a 4xx status; upstream failures 502/503/504 with the reason; anything unexpected
a 500 in the same shape, logged with its traceback. Never a traceback to the client.

Every request that reached a tier is counted and recorded exactly once — answered, failed, or
abandoned by its client, before the answer or half-way through a stream (recorded with status
499, as nginx names it; the tier's call is cancelled and its slot freed), or cut by a shutdown
(503, the cut call's error class ``shutdown``, the client told why: :mod:`cascade.server.drain`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog
from starlette.types import Receive, Scope, Send

from cascade.core.decision import Decision
from cascade.core.request import ChatRequest, parse_chat_request
from cascade.errors import InvalidRequestError, RoutingError
from cascade.run.attempts import Attempt, Completion, UpstreamError, describe_attempts
from cascade.run.ids import new_request_id
from cascade.run.router import Router
from cascade.run.streaming import StreamRun
from cascade.server.answer_headers import answer_headers, completion_headers, request_headers
from cascade.server.auth import Caller, KeyCache
from cascade.server.disconnects import CancelOnDisconnect
from cascade.server.drain import (
    SHUTDOWN_STATUS,
    Drain,
    drain_of,
    farewell,
    shutdown_attempts,
    shutdown_reply,
)
from cascade.server.metrics import Metrics
from cascade.server.openai_format import (
    BadRequestError,
    ClientGoneError,
    chunks_from_completion,
    read_body,
    require_json,
    sse,
)
from cascade.server.proxy import Proxy
from cascade.server.quota import Allowance, plan_within_budget, spent
from cascade.server.ratelimit import admit
from cascade.server.recording import attempt_records, request_record
from cascade.server.replies import JSONReply, StreamReply, error_reply
from cascade.server.shadow import ShadowDecision

log = structlog.get_logger("cascade.proxy")

CHAT_PATH = "/v1/chat/completions"
CLIENT_CLOSED = 499
"""The status recorded for a request whose client went away before its answer ended (nginx's
code)."""
PROMPT_LOG_CHARS = 16_384
"""With ``prompt.log_prompts``, the longest prompt text a log line carries."""

# Which status an upstream failure becomes: the client can retry a 503 later, a 504 sooner.
_UPSTREAM_STATUS = {"timeout": 504, "saturated": 503, "rate_limited": 503, "unavailable": 503}

Reply = JSONReply | StreamReply


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    """Route, call, verify, escalate and spill one Chat Completions request."""
    request_id = new_request_id()
    try:
        reply = await _handle(scope, receive, request_id)
    except ClientGoneError:
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or not drain_of(scope).cutting:
            raise
        task.uncancel()  # the shutdown cut it: say so, rather than drop the connection
        reply = shutdown_reply(request_id)
    except Exception:  # a bug of ours: the client gets a 500 in OpenAI's shape, the log the trace
        log.exception("request.crashed", request_id=request_id)
        reply = error_reply(
            500,
            f"the proxy failed on this request (request id {request_id}); see its log",
            request_id=request_id,
            code="internal_error",
        )
    await reply(scope, receive, send)


@dataclass
class _Exchange:
    """One request's context while the handler works on it."""

    proxy: Proxy
    metrics: Metrics
    request_id: str
    caller: Caller
    """Who sent the request (its key's tenant and limits)."""
    started: float
    drain: Drain
    """The server's shutdown state (whether it is cutting the requests still running)."""
    allowance: Allowance | None = None
    """What the request may spend (its budget's reservation, settled in :meth:`finish`)."""
    rate_headers: dict[str, str] = field(default_factory=dict)
    """The key's ``x-ratelimit-*`` headers, for every answer."""
    arm: str | None = None
    """The policy's canary arm the request took (None: its policy runs no canary)."""
    shadow: ShadowDecision | None = None
    """What the live policy's shadow decided for the request (recorded, never acted on)."""

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def finish(
        self,
        chat: ChatRequest,
        decision: Decision,
        attempts: Sequence[Attempt],
        *,
        final_tier: str | None,
        http_status: int,
        **log_fields: object,
    ) -> None:
        """Count the request in the metrics, hand its rows to the ledger, and log it."""
        if http_status == CLIENT_CLOSED and self.drain.cutting:  # ended by the shutdown's cut
            http_status, attempts = SHUTDOWN_STATUS, shutdown_attempts(attempts)
        if self.allowance is not None:
            spent(self.proxy.budgets, self.allowance, attempts)
        outcome = "ok" if http_status == 200 else "error"
        last = final_tier or (attempts[-1].tier if attempts else decision.tier)
        self.metrics.record(decision.policy, last, outcome, attempts)
        if self.proxy.keeps_ledger:  # else: no rows to build
            self.proxy.record(
                request_record(
                    request_id=self.request_id,
                    decision=decision,
                    attempts=attempts,
                    final_tier=final_tier,
                    http_status=http_status,
                    latency_ms=self.elapsed_ms(),
                    tenant=self.caller.tenant,
                    stream=chat.stream,
                    key_id=self.caller.key_id,
                    arm=self.arm,
                    shadow=self.shadow,
                ),
                attempt_records(attempts),
            )
        if http_status == 200 and not _logs_info():
            return
        fields = {
            "request_id": self.request_id,
            "policy": decision.policy,
            "policy_version": decision.policy_version,
            "confidence": round(decision.confidence, 4),
            "reason": decision.reason,
            "tier": final_tier,
            "attempts": describe_attempts(attempts),
            "status": http_status,
            "latency_ms": round(self.elapsed_ms(), 2),
            "stream": chat.stream,
            **decision.trimmed_fields(),
            **log_fields,
        }
        if self.arm is not None:
            fields["arm"] = self.arm
        if self.caller.key_id is not None:  # the key's public id, never the key
            fields |= {"tenant": self.caller.tenant, "key_id": self.caller.key_id}
        if self.proxy.routers[decision.policy].policy.prompt.log_prompts:
            fields["prompt"] = _prompt_text(chat)
        if http_status == 200:
            log.info("request.completed", **fields)
        else:
            log.warning("request.failed", **fields)


async def _handle(scope: Scope, receive: Receive, request_id: str) -> Reply:
    state = scope.get("state") or {}
    proxy: Proxy | None = state.get("proxy")
    metrics: Metrics | None = state.get("metrics")
    keys: KeyCache | None = state.get("keys")
    if proxy is None or metrics is None or keys is None:
        return error_reply(503, "the proxy is starting; retry shortly", request_id=request_id)
    started = time.perf_counter()
    try:
        headers = request_headers(scope)
        caller = keys.authorize(headers.get("authorization"), headers.get("x-cascade-tenant"))
        exchange = _Exchange(proxy, metrics, request_id, caller, started, drain_of(scope))
        require_json(headers.get("content-type"))
        limit = proxy.settings.max_body_bytes
        chat = parse_chat_request(await read_body(receive, headers.get("content-length"), limit))
        router, pinned = proxy.resolve(chat.model)
        router, exchange.arm = proxy.arm(router, pinned, request_id, caller.tenant)
        workload = headers.get("x-cascade-workload")
        _permit(caller, router, pinned, chat.model, workload)
        exchange.rate_headers = await admit(proxy.rate_limits, caller, chat, router, workload)
        exchange.allowance, decision = await plan_within_budget(
            proxy.budgets, caller, router, chat, workload=workload, pinned=pinned
        )
        chat = exchange.allowance.request  # its output capped, when its budget needed a cap
        metrics.observe_decision(time.perf_counter() - exchange.started)
        attempts: list[Attempt] = []
        try:
            if proxy.shadows and pinned is None:  # decided beside the live policy, not acted on
                exchange.shadow = await proxy.shadows.decide(
                    router.policy,
                    chat,
                    decision,
                    workload=workload,
                    only_tiers=exchange.allowance.only_tiers,
                    counter=metrics,
                    request_id=request_id,
                )
            with CancelOnDisconnect(receive):  # nobody waits for the answer: stop the tier call
                if chat.stream and router.policy.escalation.streaming == "passthrough":
                    run = await router.stream(chat, decision, attempts=attempts)
                    return _relay(run, chat, decision, exchange)
                completion = await router.run(
                    chat, decision, request_id=request_id, attempts=attempts
                )
        except ClientGoneError:
            exchange.finish(chat, decision, attempts, final_tier=None, http_status=CLIENT_CLOSED)
            raise
        except asyncio.CancelledError:
            if exchange.drain.cutting:  # recorded as cut; chat_completions answers the 503
                exchange.finish(
                    chat, decision, attempts, final_tier=None, http_status=CLIENT_CLOSED
                )
            raise
    except BadRequestError as exc:
        return error_reply(
            exc.status,
            exc.message,
            param=exc.param,
            code=exc.code,
            kind=exc.kind,
            headers=exc.headers,
            request_id=request_id,
        )
    except RoutingError as exc:
        param = exc.param if isinstance(exc, InvalidRequestError) else None
        return error_reply(400, str(exc), param=param, request_id=request_id)
    except UpstreamError as exc:
        return _failed(exc, chat, decision, exchange)
    return _delivered(completion, chat, exchange)


def _permit(
    caller: Caller, router: Router, tier: str | None, model: str, workload: str | None
) -> None:
    """Refuse (403) what the caller's key may not use: the policy, a tier asked for by name, or
    a workload none of whose tiers it may use (routing then stays within its tiers)."""
    caller.permit(router.policy.name, tier, model if tier is not None else None)
    name = workload or router.policy.default_workload
    narrowed = tier is None and caller.tiers is not None and name in router.policy.workloads
    if narrowed and not router.allowed(name, caller.tiers):
        workload_tiers = ", ".join(t.name for t in router.allowed(name))
        raise BadRequestError(
            403,
            f"this key may use the tiers {', '.join(sorted(caller.tiers or ()))}; workload "
            f"{name!r} of policy {router.policy.name!r} uses {workload_tiers}",
            param="model",
            code="model_not_allowed",
        )


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
    exchange.finish(
        chat, decision, exc.attempts, final_tier=None, http_status=status, error=str(exc)
    )
    reply = error_reply(
        status,
        f"no tier could answer: {exc} (tried {tried})",
        code=exc.kind,
        request_id=exchange.request_id,
    )
    if exc.retry_after_s is not None and status in (429, 503):
        reply.headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return reply


def _delivered(completion: Completion, chat: ChatRequest, exchange: _Exchange) -> Reply:
    """An accepted answer: count, record and log it, and send it as JSON or as a stream."""
    reply_headers = completion_headers(completion) | exchange.rate_headers
    exchange.finish(
        chat,
        completion.decision,
        completion.attempts,
        final_tier=completion.tier,
        http_status=200,
        cost_usd=str(completion.cost_usd),
    )
    if chat.stream:
        return StreamReply(
            _replayed(chunks_from_completion(completion.body, include_usage=chat.include_usage)),
            reply_headers,
        )
    return JSONReply(200, orjson.dumps(completion.body), reply_headers)


async def _replayed(events: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    for event in events:
        yield event


def _logs_info() -> bool:
    """Whether info lines are logged (the per-request line is skipped, fields and all, if not)."""
    check = getattr(log, "is_enabled_for", None)  # structlog's filtering loggers have it
    return check is None or bool(check(logging.INFO))


def _prompt_text(chat: ChatRequest) -> str:
    """The request's messages for a log line that asked for them, bounded in length."""
    text = orjson.dumps(chat.messages, default=str).decode()
    if len(text) > PROMPT_LOG_CHARS:
        return text[:PROMPT_LOG_CHARS] + f"... ({len(text) - PROMPT_LOG_CHARS} more characters)"
    return text


def _relay(run: StreamRun, chat: ChatRequest, decision: Decision, exchange: _Exchange) -> Reply:
    """Relay a started stream; a break after the first chunk ends with an error event, and a
    client that leaves mid-stream — even before the first byte went out — is recorded all the
    same, with the tier's call closed."""
    recorded = False

    async def end() -> None:
        nonlocal recorded
        if recorded:
            return
        recorded = True
        await run.aclose()  # the tier's call, its in-flight place and its attempt, if still open
        status = 200 if run.finished else (502 if run.error is not None else CLIENT_CLOSED)
        exchange.finish(
            chat,
            decision,
            run.attempts,
            final_tier=run.tier.name,
            http_status=status,
            cost_usd=str(run.cost_usd),
        )

    async def events() -> AsyncGenerator[bytes, None]:
        chunks = run.chunks()
        try:
            async for chunk in chunks:
                usage_only = chunk.get("usage") is not None and not chunk.get("choices")
                if usage_only and not chat.include_usage:
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
        finally:
            await chunks.aclose()  # left at a yield if the client went
            await end()

    headers = answer_headers(run.tier.name, run.tier.model, decision, exchange.request_id)
    headers |= exchange.rate_headers
    last = functools.partial(farewell, exchange.drain, exchange.request_id)
    return StreamReply(events(), headers, closing=end, farewell=last)
