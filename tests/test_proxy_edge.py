"""The proxy's edge: whatever a client sends gets a 4xx in OpenAI's error shape, never a 5xx.

The proxy runs under uvicorn on loopback in front of scripted tiers, with an API key and a
ledger, and is reached over real HTTP; the few requests no HTTP client would send go to the app
in process (tests/asgi_app.py).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import pytest

from cascade.server.app import create_app
from cascade.server.proxy import Proxy
from cascade.server.settings import ServerSettings
from tests.asgi_app import running_app
from tests.servers import serving
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier

KEY = "sk-edge"
CHAT = "/v1/chat/completions"
HI = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}
JSON = {"content-type": "application/json"}


@dataclass
class Edge:
    """A proxy (with a key and a ledger) in front of three scripted tiers."""

    url: str
    small: ScriptedTier
    settings: ServerSettings

    def post(
        self,
        body: object,
        *,
        path: str = CHAT,
        authorization: str | None = f"Bearer {KEY}",
        headers: dict[str, str] = JSON,
    ) -> httpx.Response:
        """POST ``body`` (bytes as they are, anything else as JSON)."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {**headers, **({"authorization": authorization} if authorization else {})}
        return httpx.post(f"{self.url}{path}", content=content, headers=sent, timeout=30)


@pytest.fixture(scope="module")
def running_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The proxy, with the key ``sk-edge`` and an SQLite ledger, in front of scripted tiers
    (one for the module: starting it takes a second)."""
    tmp_path = tmp_path_factory.mktemp("edge")
    small, medium, big = ScriptedTier("small"), ScriptedTier("medium"), ScriptedTier("big")
    with serving(small.app()) as s, serving(medium.app()) as m, serving(big.app()) as b:
        policy = tmp_path / "proxytest.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b))
        settings = ServerSettings(
            policies=(str(policy),),
            api_keys=frozenset({KEY, "sk-other"}),
            database_url=f"sqlite:///{tmp_path / 'edge.db'}",
            spool_path=str(tmp_path / "spool"),
            reload_interval_s=0,
        )
        with serving(create_app(settings)) as url:
            yield Edge(url, small, settings)


@pytest.fixture
def edge(running_edge: Edge) -> Edge:
    """The module's proxy, its small tier's record of calls emptied."""
    running_edge.small.calls = 0
    running_edge.small.requests.clear()
    return running_edge


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    """The OpenAI error in ``response``, checked for its status, shape and message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in response.text
    return error


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "body",
    [
        {**HI, "metadata": _nested(300)},  # a parameter passed through to the tier
        {"model": "cascade", "messages": [{"role": "user", "content": "hi", "x": _nested(300)}]},
        {
            "model": "cascade",
            "messages": [
                {"role": "system", "content": "be brief", "x": _nested(300)},
                {"role": "user", "content": "hi"},
            ],
        },
        {**HI, "tools": [{"type": "function", "function": {"parameters": _nested(300)}}]},
        {**HI, "stream": True, "metadata": _nested(65)},
    ],
    ids=["parameter", "message", "system-message", "tool", "streamed-just-over"],
)
def test_a_request_nested_too_deep_is_a_400_saying_so(edge: Edge, body: object) -> None:
    """Deeply nested values made a 500 (orjson's re-encoding stops at 254 levels, the prompt
    step recursed); they are refused at parse time, and no tier is called."""
    error = _error(edge.post(body), 400)
    assert "the request nests deeper than 64 levels" in str(error["message"])
    assert edge.small.calls == 0


def test_a_request_at_the_depth_limit_reaches_the_tier_intact(edge: Edge) -> None:
    """64 levels, the body included, are allowed, and passed on unchanged."""
    response = edge.post({**HI, "metadata": _nested(63)})
    assert response.status_code == 200, response.text
    assert edge.small.requests[0]["metadata"] == _nested(63)


@pytest.mark.parametrize("max_tokens", ["16", 16.0])
def test_max_tokens_as_a_string_or_a_float_is_read_as_a_number(
    edge: Edge, max_tokens: object
) -> None:
    """Validation accepts ``"16"`` and ``16.0``; the raw value once reached the cost estimate's
    arithmetic and made a 500. The typed request reads it as 16 everywhere."""
    response = edge.post({**HI, "max_tokens": max_tokens})
    assert response.status_code == 200, response.text
    assert response.headers["x-cascade-tier"] == "small"


def test_a_deeply_nested_feedback_body_is_a_400_in_openai_shape(edge: Edge) -> None:
    """The feedback endpoint parsed with the recursive json module: a plain-text 500."""
    deep = b'{"request_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    error = _error(edge.post(deep, path="/v1/feedback"), 400)
    assert error["param"] is None or error["param"] == "request_id"
    nested = {"request_id": _nested(100)}
    assert "nests deeper than 64" in str(_error(edge.post(nested, path="/v1/feedback"), 400))


def test_a_feedback_request_id_with_control_characters_is_refused(edge: Edge) -> None:
    """A NUL byte in a request id would reach the database's query (Postgres refuses it)."""
    error = _error(edge.post({"request_id": "req_\x00"}, path="/v1/feedback"), 400)
    assert error["param"] == "request_id"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/nope", None),
        ("POST", "/", None),
        ("GET", "/v1/chat/completions/", None),
        ("GET", CHAT, "POST"),
        ("GET", "/v1/feedback", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/healthz", "GET"),
        ("PUT", "/readyz", "GET"),
        ("POST", "/metrics", "GET"),
        ("OPTIONS", CHAT, "POST"),
    ],
)
def test_unknown_paths_and_wrong_methods_get_openai_errors(
    edge: Edge, method: str, path: str, allowed: str | None
) -> None:
    """Starlette answered these in plain text ("Not Found", "Method Not Allowed"); now every
    route's 404 and 405 is OpenAI's error body, saying what the proxy serves or allows."""
    response = httpx.request(method, f"{edge.url}{path}", timeout=30)
    if allowed is None:
        error = _error(response, 404)
        assert f"no route {method} {path}" in str(error["message"])
        assert "POST /v1/chat/completions" in str(error["message"])
    else:
        error = _error(response, 405)
        assert allowed in response.headers["allow"]
        assert f"{path} takes {response.headers['allow']}, not {method}" == error["message"]


def test_a_bug_outside_the_hot_path_is_a_500_in_openai_shape(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in a Starlette route was a plain-text 500; now it is OpenAI's error body,
    with no trace of the exception."""

    def broken(proxy: Proxy) -> list[str]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Proxy, "model_names", broken)
    key = {"authorization": f"Bearer {KEY}"}  # /v1/models asks for the key like every /v1 route
    response = httpx.get(f"{edge.url}/v1/models", headers=key, timeout=30)
    assert _error(response, 500)["code"] == "internal_error"
    assert "secret internal detail" not in response.text


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {KEY}", 200),
        (f"bearer {KEY}", 200),
        (f"BEARER  {KEY}", 200),
        ("Bearer sk-other", 200),
        (KEY, 401),  # a bare key, without its scheme
        (f"Basic {KEY}", 401),
        ("Bearer sk-edg", 401),
        ("Bearer", 401),
        (None, 401),
    ],
)
def test_the_bearer_scheme_is_case_insensitive_and_required(
    edge: Edge, authorization: str | None, status: int
) -> None:
    """RFC 7235 schemes are case-insensitive: ``bearer <key>`` was refused, and a bare key
    without any scheme was accepted."""
    response = edge.post(HI, authorization=authorization)
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        assert _error(response, 401)["code"] == "invalid_api_key"
        assert edge.small.calls == 0


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
@pytest.mark.parametrize("path", [CHAT, "/v1/feedback"])
def test_a_body_not_declared_json_is_a_415(edge: Edge, content_type: str | None, path: str) -> None:
    """A web page on any origin can make a browser POST text/plain or a form to a proxy on
    loopback without a CORS preflight; the proxy answered those. Now they get a 415."""
    headers = {} if content_type is None else {"content-type": content_type}
    body = HI if path == CHAT else {"request_id": "req_0"}
    error = _error(edge.post(body, path=path, headers=headers), 415)
    assert error["code"] == "unsupported_media_type"
    assert edge.small.calls == 0


def test_json_with_a_charset_is_json(edge: Edge) -> None:
    """``application/json; charset=utf-8`` (and any case) is accepted."""
    headers = {"content-type": "Application/JSON; charset=utf-8"}
    assert edge.post(HI, headers=headers).status_code == 200


def test_malformed_http_gets_uvicorns_own_plain_text_400(edge: Edge) -> None:
    """The one answer not in OpenAI's shape: a request uvicorn cannot parse never reaches the
    proxy; uvicorn's protocol class writes a fixed plain-text 400 and closes the connection.
    Changing it would mean patching uvicorn (see the README)."""
    host, port = edge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-type: text/plain; charset=utf-8" in answer
    assert answer.endswith(b"\r\n\r\nInvalid HTTP request received.")


def test_a_content_length_that_is_not_a_number_is_not_a_5xx(edge: Edge) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: a Content-Length of ``²`` (the byte
    0xB2) made a 500. uvicorn refuses it on the wire; a server that passes it on must not crash
    the proxy."""
    with running_app(create_app(replace(edge.settings, database_url=None))) as app:
        for declared in (b"\xb2", b"-1", b"abc"):
            headers = [
                (b"authorization", f"Bearer {KEY}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", declared),
            ]
            body = json.dumps(HI).encode()
            response = app.request("POST", CHAT, headers=headers, content=body)
            assert response.status_code == 200, (declared, response.text)
