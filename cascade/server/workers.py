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
SIGINT or SIGTERM drains them all and returns. It sends each worker SIGTERM (Kubernetes signals
only the container's first process); each drains as :mod:`cascade.server.drain` says, and the
parent waits for them up to the drain delay and timeout and a margin, and kills one still
running after that (an error: what that worker held may be missing from the ledger). A second
signal is passed on too: the workers then cut at once. Workers ignore SIGINT themselves: a
terminal's Ctrl+C reaches the whole process group, and a worker hearing it as well as the
parent's SIGTERM would take it for a second signal.
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
from starlette.types import ASGIApp

from cascade.errors import CascadeError
from cascade.server.drain import DrainingServer, DrainTimes, draining_server

log = structlog.get_logger("cascade.workers")

_STOP_MARGIN_S = 15.0  # beyond the drain's delay and timeout: the cut, then the ledger's flush
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
    drain: DrainTimes | None = None,
) -> None:
    """Serve ``app`` from ``workers`` processes until SIGINT or SIGTERM, then drain them; raises
    CascadeError when a worker cannot start, or had to be killed because it did not drain.

    ``app``: a :data:`WorkerApp`, or the import string (``module:function``) of a factory that
    takes no arguments. ``reuse_port``: whether every worker binds the port itself
    (``SO_REUSEPORT``) or all serve one socket the parent binds; None: the former where the
    platform has it. ``drain``: how the workers drain (default: :class:`DrainTimes`'s).
    """
    times = drain or DrainTimes()
    reuse = reuse_port_available() if reuse_port is None else reuse_port
    shared = None if reuse else _listening_socket(host, port, reuse_port=False)
    context = multiprocessing.get_context("spawn")
    signals = 0  # stop signals received

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    spec = _Spec(app, host, port, log_level, workers, times)
    running: list[_Worker] = []
    try:
        for index in range(workers):
            running.append(_Worker.start(context, spec, index, shared))
        while not signals:
            time.sleep(_POLL_S)
            for number, worker in enumerate(running):
                if worker.process.is_alive() or signals:
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
        processes = [worker.process for worker in running]
        killed = _stop(processes, times, shared, signals=lambda: signals)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if shared is not None:
            shared.close()
    if killed:
        raise CascadeError(
            f"{killed} worker(s) did not drain within {_budget(times):.0f}s and were killed; "
            "requests they held may be missing from the ledger"
        )


@dataclass(frozen=True)
class _Spec:
    """What every worker process is handed (pickled, with its index)."""

    app: WorkerApp | str
    host: str
    port: int
    log_level: str
    count: int
    drain: DrainTimes


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


def _stop(
    processes: list[SpawnProcess],
    times: DrainTimes,
    shared: socket.socket | None,
    *,
    signals: Callable[[], int],
) -> int:
    """Drain the workers (SIGTERM each, and again on each further signal); kill those still
    running past the drain's budget. Returns how many were killed."""
    started = time.monotonic()
    forwarded = 0
    while any(process.is_alive() for process in processes):
        elapsed = time.monotonic() - started
        if elapsed > _budget(times):
            break
        if shared is not None and elapsed >= times.delay_s:
            shared.close()  # the workers stop accepting now: so does the socket they share
        if forwarded < max(1, signals()):
            forwarded += 1
            for process in processes:
                if process.is_alive():
                    process.terminate()
        time.sleep(_POLL_S / 4)
    killed = 0
    for process in processes:
        if process.is_alive():
            log.error("worker.killed", pid=process.pid, drain_budget_s=_budget(times))
            process.kill()
            killed += 1
        process.join()
    return killed


def _budget(times: DrainTimes) -> float:
    """How long the parent waits for its workers to drain."""
    return times.delay_s + times.timeout_s + _STOP_MARGIN_S


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

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent says when to stop (SIGTERM)
    configure_json_logs(spec.log_level)
    sock = shared
    if sock is None:
        try:
            sock = _listening_socket(spec.host, spec.port, reuse_port=True)
        except CascadeError as exc:
            log.error("worker.bind_failed", host=spec.host, port=spec.port, error=str(exc))
            raise SystemExit(3) from None
    app = spec.app if isinstance(spec.app, str) else spec.app(index, spec.count)
    server = draining_server(
        app,
        host=spec.host,
        port=spec.port,
        log_level=spec.log_level,
        times=spec.drain,
        signals=(signal.SIGTERM,),
    )
    threading.Thread(target=_announce, args=(server, ready), daemon=True).start()
    server.run(sockets=[sock])


def _announce(server: DrainingServer, ready: EventType) -> None:
    """Tell the parent once ``server`` has run its lifespan and listens."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        ready.set()
