"""Graceful drain: what the proxy does between SIGTERM and its exit.

A load balancer (or Kubernetes, which keeps routing to a pod for a moment after marking it
terminating) must stop sending before the proxy stops listening, and what was accepted must end
as an answer, not a reset connection. On the first SIGTERM or SIGINT, :class:`DrainingServer`:

1. marks the :class:`Drain` draining: ``/readyz`` answers 503 ``{"status": "draining"}`` at
   once, and every answer from then on closes its connection (``Connection: close``), so
   clients reconnect elsewhere instead of reusing one that is about to go;
2. keeps accepting and serving for ``delay_s`` (``cascade serve --drain-delay``), for the
   traffic still routed here;
3. stops accepting, closes idle keep-alive connections, and lets every request in flight finish,
   streams included, for up to ``timeout_s`` (``--drain-timeout``);
4. cancels what is left. The proxy's handlers see :attr:`Drain.cutting` and end such a request
   properly: a 503 with code ``shutdown``, or, mid-stream, a last error event with that code and
   the end of the stream; its ledger row has that status and its cut call the error class
   ``shutdown`` (never a silent drop);
5. shuts the app down (its lifespan flushes the ledger writer and its spool and settles
   budgets) and returns, so the process exits 0.

A second signal skips what is left of the delay and the wait, and cuts at once (everything is
still recorded and flushed). uvicorn's own shutdown, which this replaces, stops accepting at the
first signal; it waits for requests without limit or, given a timeout, cancels them and shuts
the app down (the ledger included) without waiting for them to end, so their rows were lost;
and it raises the signal again once stopped, so the process died of SIGTERM instead of exiting
0. This class keeps uvicorn's serving and overrides its signal handling and shutdown (their
hooks: ``capture_signals``, ``handle_exit``, ``on_tick``, ``shutdown``, ``server_state``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

import structlog
import uvicorn
from starlette.types import ASGIApp, Message, Scope, Send

from cascade.errors import CascadeError
from cascade.run.attempts import CLIENT_GONE, Attempt
from cascade.server.background import uvicorn_options
from cascade.server.openai_format import error_body, sse
from cascade.server.replies import JSONReply, error_reply

log = structlog.get_logger("cascade.serve")

SHUTDOWN = "shutdown"
"""The error class (ledger) and error code (client) of a request the shutdown cut."""
SHUTDOWN_STATUS = 503
"""The status of a request the shutdown cut: the client may retry it, on another replica."""
STATE_KEY = "drain"
"""Where the server puts its :class:`Drain` in the app's lifespan state (and so every request's
``scope["state"]``)."""

_CUT_GRACE_S = 5.0  # for cancelled requests to record themselves and send their last bytes
_POLL_S = 0.05
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class DrainTimes:
    """How long a stopping server keeps serving, and how long it waits for what is in flight."""

    delay_s: float = 5.0
    """After the signal: ``/readyz`` fails while the proxy still accepts and serves."""
    timeout_s: float = 30.0
    """After the delay: the longest wait for requests in flight before they are cut."""

    def __post_init__(self) -> None:
        for name, value in (("delay", self.delay_s), ("timeout", self.timeout_s)):
            if not value >= 0:
                raise CascadeError(f"--drain-{name} {value}: must be 0 seconds or more")


class Drain:
    """Where the server stands in its shutdown; read by the app's handlers."""

    __slots__ = ("cutting", "draining")

    def __init__(self) -> None:
        self.draining = False
        """A stop signal came: ``/readyz`` fails, answers close their connections."""
        self.cutting = False
        """The drain timeout passed: requests still running are being cancelled."""


_NEVER = Drain()  # never changed: the state of a server that does not drain


def drain_of(scope: Scope) -> Drain:
    """The server's drain state (one that never drains when the server is not a
    :class:`DrainingServer`, as under plain uvicorn or ``httpx.ASGITransport``)."""
    drain = (scope.get("state") or {}).get(STATE_KEY)
    return drain if isinstance(drain, Drain) else _NEVER


def shutdown_attempts(attempts: Iterable[Attempt]) -> list[Attempt]:
    """``attempts`` with the call the cut interrupted marked ``shutdown`` (the run, seeing only
    a cancellation, took it for a client that left)."""
    reason = "the proxy shut down before the call ended"
    return [
        replace(a, error_class=SHUTDOWN, reason=reason) if a.error_class == CLIENT_GONE else a
        for a in attempts
    ]


_SHUTDOWN_MESSAGE = "the proxy shut down before the answer was complete (request id {}); retry"


def shutdown_reply(request_id: str) -> JSONReply:
    """The answer to a request the shutdown cut before its answer started."""
    message = _SHUTDOWN_MESSAGE.format(request_id)
    return error_reply(SHUTDOWN_STATUS, message, code=SHUTDOWN, request_id=request_id)


def farewell(drain: Drain, request_id: str) -> bytes | None:
    """While the shutdown cuts: the last event of a stream, saying why it ends early (the
    client sees that, not a truncated stream); else None."""
    if not drain.cutting:
        return None
    return sse(error_body(SHUTDOWN_STATUS, _SHUTDOWN_MESSAGE.format(request_id), code=SHUTDOWN))


def closing_connection(send: Send) -> Send:
    """``send``, with ``Connection: close`` on the response: while draining, a client should
    reconnect (to another replica) rather than reuse this connection."""

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
        await send(message)

    return send_closing


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains on SIGTERM/SIGINT (see the module's docstring).

    ``signals``: the signals that start the drain (a worker process of ``cascade serve
    --workers`` takes only SIGTERM, from its supervisor: a terminal's Ctrl+C reaches the whole
    process group, and a worker hearing it twice would cut at once).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        times: DrainTimes,
        *,
        signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
    ) -> None:
        super().__init__(config)
        self.drain = Drain()
        self._times = times
        self._signals = tuple(signals)
        self._signalled_at: float | None = None
        self._at_signal = (0, 0)  # responses completed, requests in flight
        self._announced = False
        self._hurry = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Our handler for the stop signals while serving; unlike uvicorn's, it does not raise
        the signal again once the server has stopped (that killed the process: no exit 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in self._signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: start draining; second: cut now. (In a signal handler: flags only.)"""
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()
            self._at_signal = (self.server_state.total_requests, len(self.server_state.tasks))
            self.drain.draining = True
            if not self.started:  # nothing served yet: nothing to drain
                self.should_exit = True
        else:
            self._hurry = True
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Hand the app the drain state (lifespan state reaches every request), then start."""
        self.lifespan.state[STATE_KEY] = self.drain
        await super().startup(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        """Log the drain once it began; stop accepting once its delay has passed."""
        if self._signalled_at is not None:
            if not self._announced:
                self._announced = True
                log.info(
                    "server.draining",
                    delay_s=self._times.delay_s,
                    timeout_s=self._times.timeout_s,
                    connections=len(self.server_state.connections),
                    requests_in_flight=self._at_signal[1],
                )
            if time.monotonic() - self._signalled_at >= self._times.delay_s:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, wait for what is in flight, cut the rest, then the app's lifespan."""
        self.drain.draining = True  # also when stopped without a signal (should_exit)
        for server in self.servers:
            server.close()
        for sock in sockets or ():
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle: closed now; busy: closed after its answer
        at_close = len(self.server_state.tasks)
        cut = 0
        if not await self._settled(self._times.timeout_s) and self.server_state.tasks:
            cut = len(self.server_state.tasks)
            self.drain.cutting = True
            why = "second signal" if self._hurry else f"drain timeout ({self._times.timeout_s}s)"
            log.warning("server.cutting", requests=cut, reason=why)
            for task in list(self.server_state.tasks):
                task.cancel("the server is shutting down")
            await self._settled(_CUT_GRACE_S)
        await self.lifespan.shutdown()
        answered = self.server_state.total_requests - self._at_signal[0]  # uvicorn counts answers
        log.info(
            "server.drained",
            requests_finished=answered - cut,  # since the signal, /readyz's included
            requests_in_flight_at_close=at_close,
            requests_cut=cut,
            seconds=round(time.monotonic() - (self._signalled_at or time.monotonic()), 3),
        )

    async def _settled(self, seconds: float) -> bool:
        """Wait until no request runs and no connection is open; False when ``seconds`` ran out
        (or, before the cut, when a second signal says not to wait)."""
        deadline = time.monotonic() + seconds
        state = self.server_state
        while state.tasks or state.connections:
            hurried = self._hurry and not self.drain.cutting
            if hurried or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True


def draining_server(
    app: ASGIApp | str,
    *,
    host: str,
    port: int,
    log_level: str,
    times: DrainTimes,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> DrainingServer:
    """A :class:`DrainingServer` for ``app`` (or the import string of a factory taking no
    arguments) with cascade's uvicorn settings."""
    options: dict[str, Any] = uvicorn_options(log_level)
    if isinstance(app, str):
        options["factory"] = True
    config = uvicorn.Config(app, host=host, port=port, **options)
    return DrainingServer(config, times, signals=signals)


def serve_draining(
    app: ASGIApp, *, host: str, port: int, log_level: str, times: DrainTimes
) -> None:
    """Serve ``app`` in this process until a stop signal, then drain; returns once drained
    (uvicorn exits the process itself, with status 3, when the app cannot start)."""
    draining_server(app, host=host, port=port, log_level=log_level, times=times).run()
