"""Server-sent events: the data of each event in a streamed body, however the bytes were cut."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["data_events"]


async def data_events(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each event in ``body`` (its ``data:`` lines joined by newlines).

    Lines end in ``\\n`` or ``\\r\\n`` and may be split anywhere across chunks; a blank line ends
    an event; other fields (``event:``, ``id:``, ``retry:``) and comments are ignored. An event
    the body ends in without its blank line is still delivered: whoever reads the data decides
    whether it is whole.
    """
    pending = b""
    data: list[bytes] = []
    async for chunk in body:
        pending = pending + chunk if pending else chunk
        if b"\n" not in chunk:
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]  # noqa: PLW2901 - the same line, without its CR
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    line = pending.removesuffix(b"\r")
    if line.startswith(b"data:"):
        value = line[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
