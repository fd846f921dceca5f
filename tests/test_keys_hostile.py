"""A proxy with keys against hostile input: malformed, revoked and expired keys, path and method
tricks, oversized and non-Latin-1 headers, header injection on the wire.

Every request goes to the real app: in process (``httpx.ASGITransport``), so that bytes no HTTP
client would send still arrive, and under uvicorn through raw sockets, for what only the wire can
carry (CR and LF inside a header, obs-fold, headers past the server's limits). Every answer must
be under 500, and none may be a 2xx without a valid key (only ``/healthz`` and ``/readyz`` are
open). Afterwards no log line (structlog's, and the standard library's) and no ledger column, nor
the database file's bytes, hold a key's secret or the prompts' text.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog.testing

from cascade.cli import main
from cascade.ledger.keys import KeyRecord
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.asgi_app import RunningApp, running_app
from tests.servers import serving
from tests.test_keys import make_key
from tests.test_proxy import POLICY
from tests.upstreams import ScriptedTier

PROMPT = "PROMPT-SENTINEL-a81f: what is the capital of France?"
BODY = (
    b'{"model": "cascade", "messages": [{"role": "user", "content": "' + PROMPT.encode() + b'"}]}'
)
JSON = (b"content-type", b"application/json")
CHAT = "/v1/chat/completions"
ROUTES = {
    CHAT: "POST",
    "/v1/feedback": "POST",
    "/v1/models": "GET",
    "/metrics": "GET",
    "/healthz": "GET",
    "/readyz": "GET",
}
OPEN = {"/healthz", "/readyz"}
METHODS = ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE"]
TRICKS = [
    "//v1/chat/completions",
    "/v1/chat/completions/",
    "/v1//chat/completions",
    "/v1/chat%2Fcompletions",
    "/%76%31/chat/completions",
    "/v1/chat/completions%00",
    "/v1/chat/completions;x=1",
    "/v1/chat/completions?x=1",
    "/./v1/chat/completions",
    "/v1/../v1/chat/completions",
    "/V1/CHAT/COMPLETIONS",
    "/v1/feedback/",
    "//v1/feedback",
    "/v1/models/",
    "//metrics",
    "/metrics/",
    "/%6detrics",
    "/metrics%00",
    "/healthz/../metrics",
    "/readyz/../v1/models",
]


@dataclass
class Hostile:
    """The proxy (in process and under uvicorn) with keys, and what the checks need."""

    app: RunningApp
    port: int
    database: Path
    keys: dict[str, str]
    records: dict[str, KeyRecord]
    statuses: list[tuple[str, int]]

    @property
    def secrets(self) -> list[str]:
        """Every key's secret part (the id is public and may be logged)."""
        return [key[17:] for key in self.keys.values()]

    def send(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> int:
        """One request in process; the status is checked and kept."""
        response = self.app.request(method, path, headers=headers, content=body)
        status = response.status_code
        self.statuses.append((f"{method} {path}", status))
        assert status < 500, f"{method} {path}: {status} {response.text[:300]}"
        return status

    def wire(self, raw: bytes) -> int:
        """One request as raw bytes to uvicorn; its status (0: closed without an answer)."""
        answer = b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            try:
                sock.sendall(raw)
                while chunk := sock.recv(65536):
                    answer += chunk
            except (TimeoutError, ConnectionError):
                pass  # the server stopped reading (a refused request) or kept the line open
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        self.statuses.append((raw[:60].decode("latin-1"), status))
        assert status < 500, (raw[:200], answer[:300])
        assert b"x-evil" not in answer.lower(), answer[:500]
        return status


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """Keys (good, revoked, expired, admin), the proxy twice on one SQLite ledger, every log
    captured. After the module's tests, with both proxies shut down (the ledger flushed), the
    logs, the ledger's rows and its files' bytes are searched for the keys' secrets and the
    prompts' text, and for a crash: a find fails the module's last test."""
    tmp_path = tmp_path_factory.mktemp("hostile")
    database = tmp_path / "hostile.db"
    url = f"sqlite:///{database}"
    made = {
        "good": make_key(url, "team-a"),
        "revoked": make_key(url, "team-a"),
        "expired": make_key(url, "team-a", expires_at=datetime.now(UTC) - timedelta(hours=1)),
        "admin": make_key(url, "ops", admin=True),
    }
    assert main(["keys", "revoke", made["revoked"][0].key_id, "--url", url]) == 0
    tier = ScriptedTier("small")
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        with (
            structlog.testing.capture_logs() as logs,
            serving(tier.app()) as s,
        ):
            policy = tmp_path / "proxytest.yaml"
            policy.write_text(POLICY.format(small=s, medium=s, big=s))
            settings = ServerSettings(
                policies=(str(policy),),
                database_url=url,
                spool_path=str(tmp_path / "spool"),
                reload_interval_s=0,
            )
            with running_app(create_app(settings)) as app, serving(create_app(settings)) as base:
                port = int(base.rsplit(":", 1)[1])
                keys = {name: key for name, (_, key) in made.items()}
                records = {name: record for name, (record, _) in made.items()}
                yield Hostile(app, port, database, keys, records, [])
            # Both proxies have shut down: their ledger rows are written.
            texts = [repr(entry) for entry in logs] + handler.texts
            ledger = _ledger_text(database)
            raw = b"".join(p.read_bytes() for p in tmp_path.glob("hostile.db*"))
        for secret in [key[17:] for key in (k for _, k in made.values())]:
            assert not [t for t in texts if secret in t], "a key's secret was logged"
            assert secret not in ledger
            assert secret.encode() not in raw
        assert not [t for t in texts if "PROMPT-SENTINEL" in t], "a prompt was logged"
        assert "PROMPT-SENTINEL" not in ledger
        assert b"PROMPT-SENTINEL" not in raw
        assert not [t for t in texts if "request.crashed" in t]
        # The search saw the request lines: they name the key by its public id, never more.
        assert [t for t in texts if made["good"][0].key_id in t], "no request line was captured"
    finally:
        logging.getLogger().removeHandler(handler)


class _Records(logging.Handler):
    """Every standard-library log record (uvicorn's, asyncio's), formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.getMessage()} {record.args!r} {record.exc_text or ''}")


def _ledger_text(database: Path) -> str:
    """Every row of every table in the ledger, as text."""
    with closing(sqlite3.connect(database)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(repr(db.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


def _auth(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", value), JSON]


def _malformed(keys: dict[str, str]) -> list[bytes]:
    good = keys["good"].encode()
    key_id = good[4:16]
    return [
        b"",
        b"Bearer",
        b"Bearer ",
        b"bearer",
        b"Basic dXNlcjpwYXNz",
        b"Token " + good,
        good,  # no scheme
        b"Bearer " + good.replace(b"csk_", b"sk_"),
        b"Bearer " + good.replace(b"csk_", b"CSK_"),
        b"Bearer csk_",
        b"Bearer csk_" + key_id,
        b"Bearer " + good + b"x",
        b"Bearer " + good[:-1],
        b"Bearer " + good[:-1] + (b"A" if good[-1:] != b"A" else b"B"),  # wrong secret
        b"Bearer csk_" + key_id.upper() + good[16:],
        b"Bearer " + good + b"\x00",
        b"Bearer \x00" + good,
        b"Bearer " + good[:30] + b"\x00" + good[31:],
        b"Bearer " + good + b" " + good,
        b"Bearer\t" + good,
        b"Bearer " + b"A" * 100_000,
        b"Bearer csk_" + b"a" * 100_000,
        b"Bearer " + "ключ-csk_абв".encode(),
        b"Bearer " + good[:-3] + "é".encode(),
        b"Bearer \xff\xfe\xfd",
        b"Bearer " + keys["revoked"].encode(),
        b"Bearer " + keys["expired"].encode(),
    ]


def test_malformed_revoked_and_expired_keys_get_401_on_every_route(hostile: Hostile) -> None:
    """No malformed, revoked or expired key opens any route: chat, feedback and models answer
    401, and so does /metrics (a valid non-admin key would get 403); the good key works."""
    feedback = b'{"request_id": "req_000000000000000000000000"}'
    for value in _malformed(hostile.keys):
        for path, method in ROUTES.items():
            if path in OPEN:
                continue
            body = BODY if path == CHAT else feedback if method == "POST" else b""
            status = hostile.send(method, path, _auth(value), body)
            assert status == 401, (value[:80], path, status)
    good = _auth(f"Bearer {hostile.keys['good']}".encode())
    assert hostile.send("POST", CHAT, good, BODY) == 200
    assert hostile.send("GET", "/metrics", good) == 403
    admin = _auth(f"Bearer {hostile.keys['admin']}".encode())
    assert hostile.send("GET", "/metrics", admin) == 200


def test_path_and_method_tricks_open_nothing_without_a_key(hostile: Hostile) -> None:
    """Every route and every trick on its path (double slashes, trailing slashes,
    percent-encoding, dot segments, NUL, case), with every method (HEAD and OPTIONS included),
    answers under 500 and never 2xx without a key, but /healthz and /readyz; with a tenant's key,
    /metrics stays closed however its path is spelled."""
    good = _auth(f"Bearer {hostile.keys['good']}".encode())
    for path in [*ROUTES, *TRICKS]:
        for method in METHODS:
            body = BODY if method in ("POST", "PUT", "PATCH") else b""
            status = hostile.send(method, path, [JSON], body)
            if status < 300:
                assert path in OPEN, (method, path, status)
            if "metrics" in path:
                assert hostile.send(method, path, good) >= 300, (method, path)


def test_oversized_and_non_latin_1_headers_are_refused_cleanly(hostile: Hostile) -> None:
    """A huge or non-Latin-1 tenant header with a good key is refused (403, the key names the
    tenant), a repeated Authorization or tenant header is refused (400), in process and on the
    wire; a header past the server's limit is refused by the server, never a 5xx."""
    good = f"Bearer {hostile.keys['good']}".encode()
    for tenant in [b"t" * 100_000, "команда".encode(), b"\xff\xfe", b"team-a\x00", b"team-b"]:
        headers = [(b"authorization", good), (b"x-cascade-tenant", tenant), JSON]
        assert hostile.send("POST", CHAT, headers, BODY) == 403
    twice = [(b"authorization", b"Bearer nope"), (b"authorization", good), JSON]
    for path in (CHAT, "/v1/models", "/v1/feedback", "/metrics"):
        method = ROUTES[path]
        assert hostile.send(method, path, twice, BODY if path == CHAT else b"{}") == 400, path
    tenants = [(b"authorization", good), (b"x-cascade-tenant", b"team-a")] * 2
    assert hostile.send("POST", CHAT, [*tenants, JSON], BODY) == 400

    def request(*header_lines: bytes) -> bytes:
        head = [b"POST /v1/chat/completions HTTP/1.1", b"host: proxy", b"connection: close"]
        head += [b"content-type: application/json", b"content-length: %d" % len(BODY)]
        return b"\r\n".join([*head, *header_lines]) + b"\r\n\r\n" + BODY

    assert hostile.wire(request(b"authorization: " + good)) == 200
    assert (
        hostile.wire(request(b"authorization: " + good, b"x-cascade-tenant: " + b"t" * 8000)) == 403
    )
    refused = {0, 400, 413, 431}  # what a server's header limit may answer, or a closed line
    assert hostile.wire(request(b"authorization: Bearer " + b"A" * 200_000)) in refused | {401}
    junk = request(b"x-junk: " + b"j" * 200_000, b"authorization: " + good)
    assert hostile.wire(junk) in refused | {200}
    assert hostile.wire(request(b"authorization: " + "Bearer ключ".encode())) == 401
    assert hostile.wire(request(*[b"x-pad-%d: v" % n for n in range(300)])) == 401


def test_header_injection_on_the_wire_gets_no_one_in(hostile: Hostile) -> None:
    """CR or LF inside a header value, obs-fold, a smuggled second request or header: each is
    refused by the server or reaches the proxy as a harmless value; no answer is a 2xx without a
    valid key, none carries an injected header."""
    good = f"Bearer {hostile.keys['good']}".encode()

    def request(*header_lines: bytes, separator: bytes = b"\r\n") -> bytes:
        head = [b"POST /v1/chat/completions HTTP/1.1", b"host: proxy", b"connection: close"]
        head += [b"content-type: application/json", b"content-length: %d" % len(BODY)]
        return separator.join([*head, *header_lines]) + separator * 2 + BODY

    attempts = [
        request(b"authorization: Bearer nope\rx-evil: 1"),
        request(b"authorization: Bearer nope\nx-evil: 1"),
        request(b"authorization: Bearer nope\r\n\tx-evil: 1"),  # obs-fold
        request(b"authorization: Bearer nope\r\n " + good),  # a good key folded onto a bad one
        request(b"authorization: Bearer nope", b"x-cascade-tenant: team-a\rauthorization: " + good),
        request(b"authorization: Bearer nope", separator=b"\n"),
        request(b"authorization: Bearer nope%0d%0ax-evil:%201"),
        request(b"authorization: Bearer nope\x00" + good),
        request(b"authorization: Bearer nope\r\n\r\nGET /metrics HTTP/1.1\r\nhost: x"),
        request(b"x-cascade-tenant: team-a\r\nx-evil: 1"),
        request(b"authorization : " + good),  # space before the colon: not a header name
        request(b"transfer-encoding: chunked", b"authorization: Bearer nope"),
    ]
    for raw in attempts:
        status = hostile.wire(raw)
        assert not 200 <= status < 300, raw[:200]
    with_key = request(b"authorization: " + good, b"x-cascade-tenant: team-b\r\nx-evil: 1")
    assert hostile.wire(with_key) == 403
