"""Scripted raw HTTP/1.1 servers and proxies on loopback, for the tier clients' tests.

A :class:`Server` hands every request (head and body, as bytes) to a handler that writes whatever
answer the test needs, byte for byte: split across writes, cut, closed early. A
:class:`ForwardProxy` is a tiny HTTP proxy (absolute-form requests and CONNECT tunnels) that
sends every target host to one loopback port. Both bind port 0, count what they see, and close
on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Handler = Callable[["Peer", bytes], Awaitable[bool]]
"""Gets each request (head + body); returns False to stop serving that connection."""


@dataclass
class Peer:
    """One accepted connection of a scripted server."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def answer(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def client_gone(self) -> None:
        """Wait until the client closes the connection (whatever it sends meanwhile is read)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


@dataclass
class Server:
    """A raw HTTP/1.1 server on loopback that hands each request to ``handler``."""

    handler: Handler
    tls: ssl.SSLContext | None = None
    connections: int = 0
    closed: int = 0
    """Connections this server has closed (or seen closed) so far."""
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str = "/v1/chat/completions", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = Peer(self.connections, reader, writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.handler(peer, request):
                    return
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.closed += 1


def ok(body: bytes = b'{"ok":true}', headers: bytes = b"") -> bytes:
    """A 200 answer with a Content-Length."""
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


def body_of(request: bytes) -> bytes:
    """The body of a request as a Server received it."""
    return request.split(b"\r\n\r\n", 1)[1]


async def answer_ok(peer: Peer, request: bytes) -> bool:
    """Echo the request's body in a 200 answer."""
    peer.answer(ok(body_of(request)))
    return True


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail the test after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "the awaited event did not happen"
        await asyncio.sleep(0.005)


@dataclass
class ForwardProxy:
    """An HTTP proxy on loopback that sends every target to ``127.0.0.1:target_port``."""

    target_port: int
    connections: int = 0
    request_lines: list[bytes] = field(default_factory=list)
    authorizations: list[bytes] = field(default_factory=list)
    port: int = 0

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://user:p%40ss@127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.split(b"\r\n")
        self.request_lines.append(lines[0])
        self.authorizations += [
            line.split(b":", 1)[1].strip()
            for line in lines
            if line.lower().startswith(b"proxy-authorization:")
        ]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        if lines[0].startswith(b"CONNECT "):
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)  # the rest of the request follows through the pipe
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
