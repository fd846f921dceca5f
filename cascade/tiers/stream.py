"""A streamed answer: its status and headers once they arrive, then its body as it comes."""

from __future__ import annotations

import asyncio

from cascade.tiers.connection import Connection
from cascade.tiers.http1 import Response, find_header

__all__ = ["SILENT", "UNFINISHED", "Stream"]

SILENT = "the stream was silent for %ss"
UNFINISHED = "the answer did not end within %ss"


class Stream:
    """An answer whose head has arrived: ``status``, ``headers``, and its body's bytes as they
    come (``async for chunk in stream``).

    Iteration raises ``TimeoutError`` when the answer is silent for ``idle_timeout`` or runs past
    the call's deadline, :class:`HTTPConnectionError` when the connection breaks. Close it when
    done (``async with``, or :meth:`close`): a body read to its end returns the connection to the
    pool, one abandoned midway closes it. :meth:`release` returns it even before the body's end
    arrived, once it does.
    """

    def __init__(
        self,
        connection: Connection,
        head: Response,
        *,
        idle_timeout: float,
        deadline: float,
        timeout: float,
    ) -> None:
        self.status = head.status
        self.headers = head.headers
        self._connection: Connection | None = connection
        self._loop = asyncio.get_running_loop()
        self._idle = idle_timeout
        self._deadline = deadline
        self._timeout = timeout

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        return find_header(self.headers, name)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        try:
            chunk = connection.pop()
            while chunk is None:
                now = self._loop.time()
                if now + self._idle < self._deadline:
                    await connection.wait(now + self._idle, SILENT, self._idle)
                else:
                    await connection.wait(self._deadline, UNFINISHED, self._timeout)
                chunk = connection.pop()
            if chunk and self._loop.time() > self._deadline:
                raise TimeoutError(UNFINISHED % self._timeout)
        except BaseException:
            self.close()
            raise
        if chunk:
            return chunk
        self.close()  # read whole: the connection goes back to the pool
        raise StopAsyncIteration

    async def read(self, limit: int) -> bytes:
        """The rest of the body, at most ``limit`` bytes (the connection is dropped if the body
        is longer)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                self.close()
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done reading (the rest of the body is not wanted): the connection goes back to the
        pool once the body has ended, within a short grace, or is closed."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()

    def close(self) -> None:
        """Stop reading: the connection goes back to the pool if the body was read whole, and
        is closed otherwise."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.complete and connection.error is None and connection.pop() == b"":
            connection.host.give_back(connection)
        else:
            connection.close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
