"""Several uvicorn worker processes on one port, supervised by the process that started them.

uvicorn's own ``--workers`` shares one listening socket among the workers, and whichever worker
wakes first accepts every connection waiting: with 16 client connections the split was 12/4 or
2/14, so one worker queued while the other idled. Here every worker binds the port itself with
``SO_REUSEPORT`` and the kernel spreads new connections across them (9/7 and 7/9 in the same
test): at concurrency 16 on 2 cores that took the proxy from 3,000-3,400 to 4,200-4,400
requests/s and its p99 from 9.4-10.4 to 6.8-7.4 ms. Where the platform has no ``SO_REUSEPORT``,
the parent binds the port once and every worker serves that one socket (uvicorn's way, with its
uneven split), under the same supervisor.

Each worker is told its index and the number of workers, and builds its app from them: the
cascade proxy gives every worker a ledger spool of its own. What a worker is handed (the app
factory and its settings, API keys included) travels pickled in multiprocessing's spawn
arguments, over a pipe: never in environment variables, which any process of the same user can
read in ``/proc/<pid>/environ`` and which anything that dumps its environment prints.

The parent only supervises: it starts the workers, restarts one that dies after it was serving,
gives up if one dies before it was (a bad policy, a port held by another program), and on
SIGINT or SIGTERM stops them all and returns.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as EventType
from types import FrameType

import structlog
import uvicorn
from starlette.types import ASGIApp

from cascade.errors import CascadeError
from cascade.server.background import uvicorn_options

log = structlog.get_logger("cascade.workers")

_STOP_TIMEOUT_S = 30.0
_POLL_S = 0.2
_BACKLOG = 2048  # uvicorn's default

WorkerApp = Callable[[int, int], ASGIApp]
"""Builds the app of worker ``index`` of ``count``; must pickle (a module-level function, or a
``functools.partial`` of one), because each worker process receives it pickled."""


def reuse_port_available() -> bool:
    """Whether this platform lets several sockets listen on one port (Linux, the BSDs, macOS)."""
    return hasattr(socket, "SO_REUSEPORT")


def serve_workers(
    app: WorkerApp | str,
    *,
    host: str,
    port: int,
    log_level: str,
    workers: int,
    reuse_port: bool | None = None,
) -> None:
    """Serve ``app`` from ``workers`` processes until SIGINT or SIGTERM; raises CascadeError when
    a worker cannot start.

    ``app``: a :data:`WorkerApp`, or the import string (``module:function``) of a factory that
    takes no arguments. ``reuse_port``: whether every worker binds the port itself
    (``SO_REUSEPORT``) or all serve one socket the parent binds; None: the former where the
    platform has it.
    """
    reuse = reuse_port_available() if reuse_port is None else reuse_port
    shared = None if reuse else _listening_socket(host, port, reuse_port=False)
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    spec = _Spec(app, host, port, log_level, workers)
    running: list[_Worker] = []
    try:
        for index in range(workers):
            running.append(_Worker.start(context, spec, index, shared))
        while not stopping:
            time.sleep(_POLL_S)
            for number, worker in enumerate(running):
                if worker.process.is_alive() or stopping:
                    continue
                code = worker.process.exitcode
                if not worker.ready.is_set():
                    raise CascadeError(
                        f"a worker exited before it was serving (exit code {code}); "
                        "its log above says why"
                    )
                log.warning("worker.restarted", pid=worker.process.pid, exit_code=code)
                running[number] = _Worker.start(context, spec, number, shared)
    finally:
        _stop([worker.process for worker in running])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if shared is not None:
            shared.close()


@dataclass(frozen=True)
class _Spec:
    """What every worker process is handed (pickled, with its index)."""

    app: WorkerApp | str
    host: str
    port: int
    log_level: str
    count: int


@dataclass(frozen=True)
class _Worker:
    process: SpawnProcess
    ready: EventType
    """Set by the worker once its server accepts connections."""

    @classmethod
    def start(
        cls,
        context: multiprocessing.context.SpawnContext,
        spec: _Spec,
        index: int,
        shared: socket.socket | None,
    ) -> _Worker:
        ready = context.Event()
        process = context.Process(
            target=_worker, args=(spec, index, ready, shared), name=f"cascade-worker-{index}"
        )
        process.start()
        return cls(process, ready)


def _stop(processes: list[SpawnProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: uvicorn finishes requests in flight, runs the lifespan
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if not reuse_port:
            # Shared by every worker: connections wait in its queue while one restarts. A socket
            # of its own listens only once its worker's lifespan has run (uvicorn's startup), so
            # the kernel sends nothing to a worker still loading its model.
            sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise CascadeError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


def _worker(spec: _Spec, index: int, ready: EventType, shared: socket.socket | None) -> None:
    """One worker process: the shared socket or its own on the shared port, one uvicorn server."""
    from cascade.logs import configure_json_logs  # noqa: PLC0415 - in the child process

    configure_json_logs(spec.log_level)
    sock = shared
    if sock is None:
        try:
            sock = _listening_socket(spec.host, spec.port, reuse_port=True)
        except CascadeError as exc:
            log.error("worker.bind_failed", host=spec.host, port=spec.port, error=str(exc))
            raise SystemExit(3) from None
    options = uvicorn_options(spec.log_level)
    if isinstance(spec.app, str):
        config = uvicorn.Config(spec.app, factory=True, host=spec.host, port=spec.port, **options)
    else:
        config = uvicorn.Config(
            spec.app(index, spec.count), host=spec.host, port=spec.port, **options
        )
    server = uvicorn.Server(config)
    threading.Thread(target=_announce, args=(server, ready), daemon=True).start()
    server.run(sockets=[sock])


def _announce(server: uvicorn.Server, ready: EventType) -> None:
    """Tell the parent once ``server`` has run its lifespan and listens."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        ready.set()
