"""Running ASGI apps under uvicorn: in the foreground (CLI) or in a thread (demo, tests).

Both use the settings measured fastest here: uvloop, httptools, no access log (the proxy logs one
line per request itself), no ``server`` header and no X-Forwarded-For rewriting (a sidecar logs
no client addresses).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from cascade.errors import CascadeError

_START_TIMEOUT_S = 30.0


def uvicorn_options(log_level: str) -> dict[str, Any]:
    """The uvicorn settings of every server cascade runs for clients (measured fastest here)."""
    return {
        "log_level": log_level,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
    }


def serve_forever(app: ASGIApp, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` in this process until interrupted (``cascade.server.workers`` runs more)."""
    uvicorn.run(app, host=host, port=port, **uvicorn_options(log_level))


@contextmanager
def serve_in_thread(app: ASGIApp, *, name: str = "server", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on a loopback port (default: a free one); yield its base URL; stop it
    (lifespan included)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        # Poll uvicorn's own flag: set once the socket is bound and the lifespan has run.
        for _ in range(int(_START_TIMEOUT_S / 0.01)):
            if server.started or not thread.is_alive():
                break
            thread.join(0.01)
        if not server.started:
            raise CascadeError(f"{name} did not start on 127.0.0.1")
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        thread.join(_START_TIMEOUT_S)
