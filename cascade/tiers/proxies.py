"""Which HTTP proxy, if any, the connection pool goes through to reach a host.

The environment decides, as urllib reads it (``urllib.request.getproxies()``): ``HTTP_PROXY``
for http:// tiers, ``HTTPS_PROXY`` for https:// tiers, ``NO_PROXY`` for the hosts that bypass
them (either case; the system settings too on macOS and Windows). Loopback hosts (``localhost``,
``127.0.0.0/8``, ``::1``) never go through a proxy: a tier on the same machine is not behind one.

Through a proxy, an http:// target gets an absolute-form request line (``POST http://host/path``)
on a connection to the proxy; an https:// target gets a ``CONNECT`` tunnel with TLS to the target
inside it, end to end. The proxy itself is spoken to in plain HTTP (an ``http://`` proxy URL,
optionally with ``user:password@`` for Basic ``Proxy-Authorization``).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cascade.tiers.http1 import HTTPConnectionError

__all__ = ["DIRECT", "Route", "open_tunnel", "route_for"]


@dataclass(frozen=True)
class Route:
    """How to reach one (scheme, host, port)."""

    proxy: tuple[str, int] | None = None
    """The proxy's host and port; None: connect directly."""
    tunnel: bool = False
    """Open a CONNECT tunnel through the proxy (https:// targets)."""
    authorization: bytes = b""
    """A ``proxy-authorization`` header line (CRLF-terminated) when the proxy URL has a user."""
    name: str = ""
    """The proxy as errors name it (host:port, never the credentials)."""

    @property
    def forward(self) -> bool:
        """Requests go to the proxy with an absolute-form request line (http:// targets)."""
        return self.proxy is not None and not self.tunnel


DIRECT = Route()


def route_for(scheme: str, host: str) -> Route:
    """How to reach ``host`` for ``scheme`` (http or https), as the environment says now.

    Raises ValueError for a proxy URL that is not ``http://host[:port]``.
    """
    if _is_loopback(host):
        return DIRECT
    url = urllib.request.getproxies().get(scheme)
    if not url or urllib.request.proxy_bypass(host):
        return DIRECT
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port < 0:
        where = parts.hostname or "?"
        raise ValueError(
            f"{scheme}_proxy points at {parts.scheme}://{where}: only http://host[:port] proxies "
            "are supported; fix the variable or list this host in NO_PROXY"
        )
    authorization = b""
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(user.encode()).decode("ascii")
        authorization = f"proxy-authorization: Basic {token}\r\n".encode("ascii")
    name = f"{parts.hostname}:{port}"
    return Route((parts.hostname, port), scheme == "https", authorization, name)


def _is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def open_tunnel(route: Route, authority: str) -> asyncio.Transport:
    """A connection to ``route``'s proxy with a CONNECT tunnel to ``authority`` (host:port)
    open through it; HTTPConnectionError when the proxy refuses."""
    assert route.proxy is not None
    loop = asyncio.get_running_loop()
    transport, tunnel = await loop.create_connection(_TunnelReply, *route.proxy)
    try:
        target = authority.encode()
        transport.write(
            b"CONNECT %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (target, target, route.authorization)
        )
        status, line = await tunnel.reply
        if status != 200:
            raise HTTPConnectionError(
                f"the proxy {route.name} refused a tunnel to {authority}: {line}"
            )
    except BaseException:
        transport.close()
        raise
    return transport


class _TunnelReply(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: its status line, up to the blank line."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.reply.done():
            return
        if b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > 64 * 1024:
                self.reply.set_exception(HTTPConnectionError("the proxy's answer is too long"))
            return
        line = self._buffer.split(b"\r\n", 1)[0].decode("latin-1")
        words = line.split(" ", 2)
        if len(words) < 2 or not words[0].startswith("HTTP/1.") or not words[1].isdigit():
            self.reply.set_exception(HTTPConnectionError(f"the proxy answered {line[:80]!r}"))
            return
        self.reply.set_result((int(words[1]), line[:200]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(
                HTTPConnectionError("the proxy closed the connection before answering CONNECT")
            )
