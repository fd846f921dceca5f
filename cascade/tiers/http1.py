"""HTTP/1.1 messages as the connection pool sends and reads them: where a request goes
(:class:`Endpoint`, parsed once per URL), a complete answer (:class:`Response`), and the error
when an exchange fails (:class:`HTTPConnectionError`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ConnectTimeoutError",
    "Endpoint",
    "HTTPConnectionError",
    "Headers",
    "Response",
    "UnreachableError",
    "find_header",
]

Headers = tuple[tuple[bytes, bytes], ...]
"""An answer's headers as sent, names lowercased."""


class HTTPConnectionError(ConnectionError):
    """The connection failed, closed early, or the answer was not valid HTTP/1.1."""


class UnreachableError(HTTPConnectionError):
    """No connection to the host could be made: the request never left this process, so it may
    go to another replica."""


class ConnectTimeoutError(UnreachableError, TimeoutError):
    """No connection to the host within the connect timeout (a ``TimeoutError`` too)."""


@dataclass(frozen=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes
    headers: Headers = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        return find_header(self.headers, name)


def find_header(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (any case) in ``headers``, or None."""
    wanted = name.lower().encode("latin-1")
    return next((v.decode("latin-1") for k, v in headers if k == wanted), None)


@dataclass(frozen=True)
class Endpoint:
    """Where requests for one URL go, parsed once."""

    scheme: str
    host: str
    port: int
    authority: str
    """``host:port`` with the host bracketed when it is IPv6 (a CONNECT request's target)."""
    head: bytes
    """The request line and the headers every request to this URL carries."""
    absolute_head: bytes
    """The same with an absolute-form request line, for a request through an HTTP proxy."""
    key: tuple[str, str, int]
    """What connections are pooled by: (scheme, host, port)."""

    @classmethod
    def parse(cls, url: str, headers: Mapping[str, str]) -> Endpoint:
        """Parse ``url`` (http or https); ``headers`` go on every request to it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: expected an http:// or https:// URL with a host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname
        bracketed = f"[{host}]" if ":" in host else host
        host_header = bracketed if parts.port is None else f"{bracketed}:{port}"
        lines = [f"host: {host_header}", "user-agent: cascade-router"]
        lines += [f"{name}: {_header_value(name, value)}" for name, value in headers.items()]
        rest = "".join(f"\r\n{line}" for line in lines) + "\r\n"
        return cls(
            scheme=parts.scheme,
            host=host,
            port=port,
            authority=f"{bracketed}:{port}",
            head=f"POST {path} HTTP/1.1{rest}".encode("latin-1"),
            absolute_head=f"POST {parts.scheme}://{host_header}{path} HTTP/1.1{rest}".encode(
                "latin-1"
            ),
            key=(parts.scheme, host, port),
        )


def _header_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name}: a line break in the value is not allowed")
    return value
