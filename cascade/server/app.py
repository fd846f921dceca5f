"""The OpenAI-compatible proxy: ``create_app(settings)`` builds its ASGI application.

Endpoints: ``POST /v1/chat/completions`` (streamed and not; the hot path, in
:mod:`cascade.server.chat`), ``POST /v1/feedback``, ``GET /v1/models``, the Batch API's
``/v1/files`` and ``/v1/batches`` (:mod:`cascade.server.batches`, run in the background by
:mod:`cascade.server.batch_runner`), ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus).
Everything shared — routers, the HTTP session, the scorer's
micro-batcher, the ledger writer, the key cache — is built in the lifespan. Who may call what is
:mod:`cascade.server.auth`'s: ``/v1`` routes take the caller's key, ``/metrics`` an admin key
once virtual keys exist; ``/healthz`` and ``/readyz`` stay open for load balancers. Client
mistakes get OpenAI's error body with a 4xx status; upstream failures 502/503/504 with the
reason; never a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cascade.core.request import parse_json_object
from cascade.errors import InvalidRequestError
from cascade.ledger.store import ANY_TENANT, Owner
from cascade.server.auth import Caller, KeyCache
from cascade.server.batch_files import FILE_ROUTES
from cascade.server.batch_runner import running_batches
from cascade.server.batches import BATCH_ROUTES
from cascade.server.chat import CHAT_PATH, chat_completions
from cascade.server.drain import closing_connection, drain_of
from cascade.server.engine_report import engine_readiness, engine_series
from cascade.server.metrics import Metrics, ledger_series
from cascade.server.openai_format import (
    BadRequestError,
    ClientGoneError,
    error_body,
    error_response,
    read_body,
    require_json,
)
from cascade.server.proxy import Proxy
from cascade.server.replies import JSONReply
from cascade.server.settings import ServerSettings


class ProxyApp:
    """The proxy's ASGI application: chat completions go straight to their handler, everything
    else (and the lifespan) through a Starlette app, available as :attr:`starlette`."""

    def __init__(self, starlette: Starlette) -> None:
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and drain_of(scope).draining:
            send = closing_connection(send)  # the client should reconnect elsewhere
        if scope["type"] == "http" and _route_path(scope) == CHAT_PATH:
            if scope["method"] == "POST":
                await chat_completions(scope, receive, send)
            else:
                body = error_body(405, f"{CHAT_PATH} takes POST, not {scope['method']}")
                await JSONReply(405, orjson.dumps(body), {"allow": "POST"})(scope, receive, send)
            return
        await self.starlette(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def create_worker_app(settings: ServerSettings, index: int, count: int) -> ProxyApp:
    """The app of worker ``index`` of ``count`` (``cascade serve --workers``): a spool of its own.

    :func:`cascade.server.workers.serve_workers` calls it in each worker process, with the
    settings it received pickled from the parent.
    """
    return create_app(settings.for_worker(index, count))


def create_app(settings: ServerSettings) -> ProxyApp:
    """The proxy as an ASGI application (serve it with uvicorn)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        proxy = Proxy(settings)
        keys = KeyCache(settings)
        try:
            await proxy.start()  # migrates the ledger: the key table exists after it
            await keys.start()
            async with running_batches(proxy, metrics) as batches:
                yield {"proxy": proxy, "metrics": metrics, "keys": keys, "batches": batches}
        finally:
            await keys.aclose()
            await proxy.close()

    return ProxyApp(
        Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/feedback", feedback, methods=["POST"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics_endpoint, methods=["GET"]),
                *FILE_ROUTES,
                *BATCH_ROUTES,
            ],
            lifespan=lifespan,
            exception_handlers={HTTPException: refused, 500: crashed},
        )
    )


async def feedback(request: Request) -> Response:
    """Mark a request's answer useless: ``{"request_id": "req_…", "useless": true}``.

    Its output tokens then stop counting as useful, so cost per useful token shows the waste.
    """
    proxy: Proxy = request.state.proxy
    keys: KeyCache = request.state.keys
    try:
        caller = keys.authorize(*_credentials(request))
        require_json(request.headers.get("content-type"))
        raw = await read_body(request.receive, request.headers.get("content-length"), 64 * 1024)
        body = parse_json_object(raw)
        request_id = body.get("request_id")
        if not (isinstance(request_id, str) and 0 < len(request_id) <= 100):
            raise BadRequestError(
                400,
                "request_id: an answer's x-cascade-request-id is required (1 to 100 characters)",
                param="request_id",
            )
        if not request_id.isprintable():  # a NUL byte would reach the database's query
            raise BadRequestError(
                400, "request_id: no request id holds control characters", param="request_id"
            )
        if body.get("useless", True) is not True:
            raise BadRequestError(
                400, "useless: only true is accepted (answers start useful)", param="useless"
            )
        # With virtual keys, a caller marks only its own tenant's requests; another tenant's
        # request id is answered exactly like one that does not exist.
        owner: Owner = caller.tenant if keys.required else ANY_TENANT
        if not await proxy.mark_useless(request_id, tenant=owner):
            raise BadRequestError(
                404, f"no request {request_id!r} in the ledger", param="request_id"
            )
    except BadRequestError as exc:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    except InvalidRequestError as exc:
        return error_response(400, str(exc), param=exc.param)
    except ClientGoneError:
        return Response(status_code=400)  # nobody is left to read it
    return JSONResponse({"request_id": request_id, "useless": True})


async def refused(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route: 404, a route's wrong method: 405) in OpenAI's
    error shape, like every other error."""
    assert isinstance(exc, HTTPException)
    path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
    allow = {name.lower(): value for name, value in (exc.headers or {}).items()}.get("allow")
    if exc.status_code == 404:
        message = f"no route {request.method} {path}; the proxy serves {_ROUTES}"
    elif exc.status_code == 405 and allow:
        message = f"{path} takes {allow}, not {request.method}"
    else:
        message = exc.detail
    return error_response(exc.status_code, message, headers=exc.headers)


_ROUTES = (
    "POST /v1/chat/completions, POST /v1/feedback, GET /v1/models, /v1/files, /v1/batches, "
    "GET /healthz, GET /readyz and GET /metrics"
)


async def crashed(request: Request, exc: Exception) -> Response:
    """A bug of ours outside the hot path: a 500 in OpenAI's shape, never a traceback (Starlette
    raises the exception again after this answer, and uvicorn logs it with its trace)."""
    return error_response(
        500, "the proxy failed on this request; see its log", code="internal_error"
    )


async def models(request: Request) -> Response:
    """The model names the caller may send: ``cascade``, ``cascade/<policy>`` and tier models
    (with a virtual key, those its policies and tiers allow)."""
    proxy: Proxy = request.state.proxy
    keys: KeyCache = request.state.keys
    try:
        caller = keys.authorize(*_credentials(request))
    except BadRequestError as exc:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "cascade"}
        for name in proxy.model_names()
        if _may_name(caller, proxy, name)
    ]
    return JSONResponse({"object": "list", "data": data})


def _credentials(request: Request) -> tuple[str | None, str | None]:
    """``Authorization`` and ``x-cascade-tenant``, each sent at most once (else 400)."""
    found: list[str | None] = []
    for name in ("authorization", "x-cascade-tenant"):
        values = request.headers.getlist(name)
        if len(values) > 1:
            raise BadRequestError(
                400, f"{name}: sent more than once; send it once", code="duplicate_header"
            )
        found.append(values[0] if values else None)
    return found[0], found[1]


def _may_name(caller: Caller, proxy: Proxy, model: str) -> bool:
    router, tier = proxy.resolve(model)
    try:
        caller.permit(router.policy.name, tier)
    except BadRequestError:
        return False
    return True


async def healthz(request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Policies and the scorer are loaded: the proxy can route.

    While the ledger's database is unreachable the answer stays 200, with ``"status":
    "degraded"`` and what is wrong under ``"ledger"``: the proxy still answers and its rows wait
    in the spool, so a load balancer should keep sending it traffic (every replica shares the
    database: a 503 would take them all out of service at once). API tiers whose key is not set
    are named under ``"tiers"`` the same way, and so are engine replicas whose metrics cannot be
    read, under ``"engines"`` (each watched replica's state: :mod:`cascade.server.engine_report`).

    Once the server is stopping (SIGTERM), 503 with ``"status": "draining"``: a load balancer
    stops sending while the requests in flight finish (:mod:`cascade.server.drain`).
    """
    proxy: Proxy = request.state.proxy
    if drain_of(request.scope).draining:
        return JSONResponse({"status": "draining", "policies": list(proxy.routers)}, 503)
    ready = bool(proxy.routers)
    body: dict[str, object] = {
        "status": "ready" if ready else "starting",
        "policies": list(proxy.routers),
    }
    if ready and proxy.ledger is not None and (problem := proxy.ledger.degraded()):
        body |= {"status": "degraded", "ledger": problem}
    if ready and (missing := proxy.missing_keys()):
        # The other tiers still answer; the named ones spill until their key is set.
        body |= {
            "status": "degraded",
            "tiers": {tier: f"${variable} is not set" for tier, variable in missing.items()},
        }
    engines, unreachable = engine_readiness(proxy.engines)
    if engines:  # an engine's trouble is not this proxy's: it routes around it, still ready
        body |= {"engines": engines} | ({"status": "degraded"} if ready and unreachable else {})
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics, with calls in flight per tier (an admin key once keys exist)."""
    metrics: Metrics = request.state.metrics
    proxy: Proxy = request.state.proxy
    keys: KeyCache = request.state.keys
    try:
        keys.authorize_admin(_credentials(request)[0])
    except BadRequestError as exc:
        return error_response(exc.status, exc.message, code=exc.code)
    text = generate_latest(metrics.registry).decode()
    for tier, count in sorted(proxy.in_flight().items()):
        text += f'cascade_in_flight{{tier="{tier}"}} {count}\n'
    if proxy.ledger is not None:
        text += ledger_series(proxy.ledger.stats)
    text += engine_series(proxy.engines)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
