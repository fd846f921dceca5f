"""The reference point for the proxy benchmark: a bare Starlette pass-through, no routing.

What STACK-NOTES.md measured the targets against: uvicorn with uvloop and httptools, one route
that reads the JSON body and forwards it to the upstream with one pooled aiohttp session, and
returns the upstream's bytes. Comparing the proxy with this on the same machine in the same run
takes the machine's speed out of the comparison.

    .venv/bin/python -m benchmarks.bare_passthrough --port 9103 --upstream http://127.0.0.1:9101
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cascade.server.background import uvicorn_options
from cascade.server.workers import serve_workers


def create_app(upstream: str) -> Starlette:
    """Forward POST /v1/chat/completions to ``upstream`` unchanged."""
    target = upstream.rstrip("/") + "/v1/chat/completions"
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            sessions.append(session)
            yield

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        async with sessions[0].post(target, json=body) as answer:
            raw = await answer.read()
            return Response(raw, status_code=answer.status, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response("ok")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/", ready)]
    return Starlette(routes=routes, lifespan=lifespan)


_UPSTREAM_ENV = "BARE_PASSTHROUGH_UPSTREAM"


def create_app_from_env() -> Starlette:
    """The app for worker processes (the upstream comes in the environment)."""
    return create_app(os.environ[_UPSTREAM_ENV])


def main() -> None:
    """Serve the pass-through."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=9103)
    parser.add_argument("--upstream", default="http://127.0.0.1:9101")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ[_UPSTREAM_ENV] = args.upstream
    app = "benchmarks.bare_passthrough:create_app_from_env"
    if args.workers > 1:  # the way cascade serve runs its workers, for a like-for-like reference
        serve_workers(
            app, host="127.0.0.1", port=args.port, log_level="warning", workers=args.workers
        )
        return
    options = uvicorn_options("warning")
    uvicorn.run(app, factory=True, host="127.0.0.1", port=args.port, **options)


if __name__ == "__main__":
    main()
