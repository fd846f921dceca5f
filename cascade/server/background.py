"""Run an ASGI app under uvicorn in a background thread: for the demo and for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from cascade.errors import CascadeError

_START_TIMEOUT_S = 30.0


@contextmanager
def serve_in_thread(app: ASGIApp, *, name: str = "server") -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL; stop it (lifespan included)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on")
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
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(_START_TIMEOUT_S)
