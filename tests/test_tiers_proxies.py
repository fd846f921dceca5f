"""HTTP proxies from the environment: forwarded http calls, CONNECT tunnels for https, bypass."""

from __future__ import annotations

import asyncio
import base64
import ssl

import pytest
import trustme

from cascade.tiers.pool import ConnectionPool, Endpoint, HTTPConnectionError
from cascade.tiers.proxies import DIRECT, route_for
from tests.raw_servers import ForwardProxy, Server, answer_ok

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment that names no proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_http_calls_go_through_http_proxy_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HTTP_PROXY set, an http:// tier is called through the proxy: an absolute-form
    request line, Basic proxy credentials from the URL, and the connection kept alive."""

    async def scenario() -> None:
        async with Server(answer_ok) as server, ForwardProxy(server.port) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            pool = ConnectionPool()
            endpoint = Endpoint.parse(server.url(host="upstream.test"), {})
            answers = [
                await pool.post(endpoint, b"%d" % i, connect_timeout=2, timeout=5) for i in range(2)
            ]
            await pool.aclose()
        assert [a.body for a in answers] == [b"0", b"1"]
        assert proxy.request_lines == [
            f"POST http://upstream.test:{server.port}/v1/chat/completions HTTP/1.1".encode()
        ]
        assert proxy.authorizations == [b"Basic " + base64.b64encode(b"user:p@ss")]
        assert proxy.connections == 1
        assert server.requests[1].startswith(b"POST http://upstream.test:")

    asyncio.run(scenario())


def test_https_calls_tunnel_through_https_proxy_with_tls_to_the_tier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HTTPS_PROXY set, an https:// tier is reached through a CONNECT tunnel, and TLS
    inside it checks the tier's own certificate and name."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("upstream.test").configure_cert(server_tls)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)

    async def scenario() -> None:
        async with (
            Server(answer_ok, tls=server_tls) as server,
            ForwardProxy(server.port) as proxy,
        ):
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            pool = ConnectionPool(ssl_context=trusting)
            endpoint = Endpoint.parse(server.url(host="upstream.test"), {})
            answers = [
                await pool.post(endpoint, b"%d" % i, connect_timeout=2, timeout=5) for i in range(2)
            ]
            await pool.aclose()
        assert [a.body for a in answers] == [b"0", b"1"]
        assert proxy.request_lines == [f"CONNECT upstream.test:{server.port} HTTP/1.1".encode()]
        assert proxy.authorizations == [b"Basic " + base64.b64encode(b"user:p@ss")]
        assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1")

    asyncio.run(scenario())


def test_loopback_tiers_never_go_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tier on this machine is called directly even when HTTP_PROXY is set."""

    async def scenario() -> None:
        async with Server(answer_ok) as server, ForwardProxy(server.port) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            pool = ConnectionPool()
            for host in ("127.0.0.1", "localhost"):
                endpoint = Endpoint.parse(server.url(host=host), {})
                answer = await pool.post(endpoint, b"direct", connect_timeout=2, timeout=5)
                assert answer.body == b"direct"
            await pool.aclose()
        assert proxy.connections == 0

    asyncio.run(scenario())


def test_no_proxy_and_the_scheme_choose_the_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_PROXY hosts and their subdomains go direct; each scheme uses its own variable."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.corp,.gpu.corp")
    assert route_for("http", "internal.corp") == DIRECT
    assert route_for("http", "node1.gpu.corp") == DIRECT
    assert route_for("https", "api.example.com") == DIRECT  # no HTTPS_PROXY
    through = route_for("http", "api.example.com")
    assert (through.proxy, through.forward, through.name) == (
        ("proxy.corp", 3128),
        True,
        "proxy.corp:3128",
    )
    assert route_for("http", "::1") == DIRECT


def test_a_proxy_that_cannot_be_spoken_to_fails_the_call_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SOCKS proxy in HTTPS_PROXY fails calls with a connection error naming the variable,
    rather than silently going around the proxy."""
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:secret@proxy.corp:1080")

    async def scenario() -> None:
        pool = ConnectionPool()
        endpoint = Endpoint.parse("https://api.example.com/v1/chat/completions", {})
        with pytest.raises(HTTPConnectionError, match=r"https_proxy .* only http://") as caught:
            await pool.post(endpoint, b"{}", connect_timeout=2, timeout=5)
        assert "secret" not in str(caught.value)
        await pool.aclose()

    asyncio.run(scenario())
