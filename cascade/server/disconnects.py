"""Noticing that a client went away while the proxy still works on its request.

ASGI tells an application that its client left only through ``receive``, and only when it is
awaited; once a request's body has been read nothing else awaits it. :class:`CancelOnDisconnect`
watches ``receive`` while the proxy waits on a tier and cancels that wait when the client hangs
up, so an answer nobody will read stops holding the tier's connection and its slot.

The watcher is a task, started only once the work has taken ``grace_s``: most answers from a
fast tier come sooner and never pay for one, and a client that left meanwhile is noticed as soon
as the watcher starts (``receive`` reports a disconnect that already happened at once).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive

from cascade.server.openai_format import ClientGoneError

GRACE_S = 0.05
"""How long the proxy works on a request before it starts watching for a disconnect."""


class CancelOnDisconnect:
    """A ``with`` block that is cancelled when the client disconnects, and then ends in
    :class:`ClientGoneError`. (A cancellation from elsewhere, such as the server stopping, goes
    on as it came.)"""

    __slots__ = ("_grace_s", "_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive, *, grace_s: float = GRACE_S) -> None:
        self._receive = receive
        self._grace_s = grace_s
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False
        """The client disconnected while the block ran."""

    def __enter__(self) -> CancelOnDisconnect:
        task = asyncio.current_task()
        assert task is not None, "CancelOnDisconnect is entered inside a task"
        self._task = task
        self._timer = task.get_loop().call_later(self._grace_s, self._start)
        return self

    def _start(self) -> None:
        self._watcher = self._task.get_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self._task.cancel()  # wakes the block wherever it waits: in a tier's queue or on its answer

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()  # before anything else awaits: it cancels nothing after this
        if self.gone and kind is not None and issubclass(kind, asyncio.CancelledError):
            self._task.uncancel()
            raise ClientGoneError from None
