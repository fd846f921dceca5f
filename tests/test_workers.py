"""``cascade serve --workers N``: worker processes on one port, supervised, stopped cleanly,
each with a spool of its own and no secret in its environment."""

from __future__ import annotations

import functools
import os
import pickle
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from cascade.ledger.spool import Spool, adopt_spools
from cascade.server.app import create_worker_app
from cascade.server.settings import ServerSettings
from tests.ledger_databases import make_entry
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier, closed_port

POLICY = """\
name: workers
tiers:
  - {{name: small, model: s, kind: self_hosted, endpoint: "{url}/v1", threshold: 0.0,
      price: {{input_usd_per_mtok: 1, output_usd_per_mtok: 2}}}}
  - {{name: big, model: b, kind: self_hosted, endpoint: "{url}/v1",
      price: {{input_usd_per_mtok: 2, output_usd_per_mtok: 4}}}}
"""

needs_reuse_port = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="workers share a port with SO_REUSEPORT"
)
pytestmark = pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="the tests watch workers through /proc"
)


def _children(pid: int) -> set[int]:
    """The worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = {int(child) for child in path.read_text().split()} if path.exists() else set()
    return {child for child in children if b"spawn_main" in _command_line(child)}


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _serve(
    policy: Path,
    port: int,
    log: Path,
    ledger: Path | None = None,
    *,
    key_env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``cascade serve --workers 2``, its stderr in ``log`` (a pipe nobody reads could fill);
    ``key_env``: ``{VARIABLE: key}``, the client key given with ``--api-key-env VARIABLE``."""
    command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
    command += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    command += ["--drain-delay", "0"]  # no load balancer to wait for: stop accepting at once
    if ledger is None:
        command.append("--no-ledger")
    else:
        command += ["--database-url", f"sqlite:///{ledger}", "--spool", f"{ledger}.spool"]
    for name in key_env or {}:
        command += ["--api-key-env", name]
    with log.open("w") as stderr:
        return subprocess.Popen(
            command, stderr=stderr, text=True, env={**os.environ, **(key_env or {})}
        )


def _shut_down(server: subprocess.Popen[str]) -> None:
    """Stop a server a test left running (it failed): its workers too, never orphaned."""
    if server.poll() is not None:
        return
    workers = _children(server.pid)
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)
    for pid in workers:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def _recorded(ledger: Path) -> int:
    """Requests in the ledger's database or waiting in a worker's spool (never lost)."""
    with closing(sqlite3.connect(ledger)) as db:
        count: int = db.execute("SELECT count(*) FROM requests").fetchone()[0]
    spooled = sum(
        len(path.read_text().splitlines()) for path in ledger.parent.glob("*.spool.worker*")
    )
    return count + spooled


def _ask(url: str) -> int:
    with httpx.Client(timeout=30) as client:  # a connection of its own
        return _ask_with(client, url)


def _ask_with(client: httpx.Client, url: str) -> int:
    body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
    return client.post(f"{url}/v1/chat/completions", json=body).status_code


def _connections(pid: int, port: int) -> set[int]:
    """Inodes of the established TCP connections to ``port`` that process ``pid`` holds."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            held.add(int(target[8:-1]))
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            established.add(int(fields[9]))
    return held & established


@pytest.fixture
def policy(tmp_path: Path) -> Iterator[Path]:
    with serving(ScriptedTier("small").app()) as tier:
        path = tmp_path / "workers.yaml"
        path.write_text(POLICY.format(url=tier))
        yield path


@needs_reuse_port
def test_two_workers_serve_one_port_restart_after_a_crash_and_stop_on_sigterm(
    policy: Path, tmp_path: Path
) -> None:
    """Both workers serve and record into one SQLite ledger; a worker killed mid-run is
    replaced and requests keep succeeding; SIGTERM stops the workers and the supervisor, which
    exits 0, with every request in the ledger."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    ledger = tmp_path / "ledger.db"
    log = tmp_path / "serve.log"
    server = _serve(policy, port, log, ledger)
    try:
        assert wait_until(lambda: len(_children(server.pid)) == 2 and _ready(url), 60), (
            log.read_text()
        )
        first = _children(server.pid)
        clients = [httpx.Client(timeout=30) for _ in range(16)]  # 16 kept-alive connections
        try:
            with ThreadPoolExecutor(16) as pool:
                codes = set(pool.map(lambda client: _ask_with(client, url), clients))
            assert codes == {200}
            per_worker = [len(_connections(pid, port)) for pid in sorted(first)]
        finally:
            for client in clients:
                client.close()
        assert sum(per_worker) == 16
        assert min(per_worker) >= 1  # the kernel spread them (all on one: p = 2 / 2**16)
        assert wait_until(lambda: _recorded(ledger) == 16, 60), log.read_text()  # before the kill
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        restarted = wait_until(lambda: len(_children(server.pid) - first) == 1 and _ready(url), 60)
        assert restarted, log.read_text()
        survivors = _children(server.pid)
        assert victim not in survivors
        assert len(survivors) == 2
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: _ask(url), range(40))) == {200}
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()
        assert all(not Path(f"/proc/{pid}").exists() for pid in survivors)
        assert _recorded(ledger) == 56, log.read_text()
    finally:
        _shut_down(server)


@needs_reuse_port
def test_a_worker_that_cannot_start_stops_the_server_with_an_error(
    policy: Path, tmp_path: Path
) -> None:
    """The port is held by a program without SO_REUSEPORT: no worker can bind it, and serve
    exits non-zero saying so instead of restarting workers forever."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        log = tmp_path / "serve.log"
        server = _serve(policy, port, log)
        try:
            code = server.wait(120)
        finally:
            _shut_down(server)
    err = log.read_text()
    assert code != 0
    assert "worker.bind_failed" in err
    assert "a worker exited before it was serving" in err


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_each_worker_spools_to_a_file_of_its_own_and_worker_0_adopts_orphans(
    tmp_path: Path,
) -> None:
    """Workers sharing a spool could lose rows (one empties it after replaying while another
    appends), so each gets its own; worker 0 takes over the spool of a single-process run and
    those of workers that no longer exist, without losing or dropping an entry."""
    base = tmp_path / "ledger.spool"
    Spool(base).append([make_entry(1), make_entry(2)])
    Spool(f"{base}.worker3").append([make_entry(3)])
    Spool(f"{base}.worker1").append([make_entry(4)])
    settings = ServerSettings(spool_path=str(base))

    first, second = settings.for_worker(0, 2), settings.for_worker(1, 2)
    assert first.spool_path == f"{base}.worker0"
    assert second.spool_path == f"{base}.worker1"
    assert first.adopt_spools == (str(base), f"{base}.worker3")
    assert second.adopt_spools == ()
    # What a worker receives: the settings, pickled with its app factory.
    handed = pickle.loads(pickle.dumps(functools.partial(create_worker_app, first)))
    assert handed.args == (first,)

    assert adopt_spools(first.adopt_spools, into=first.spool_path) == 3
    ids = [e.request.request_id for e in Spool(first.spool_path).read()]
    assert ids == [make_entry(n).request.request_id for n in (1, 2, 3)]
    assert not base.exists()
    assert not Path(f"{base}.worker3").exists()
    assert len(Spool(f"{base}.worker1").read()) == 1  # a live worker's spool is left alone


def test_no_worker_has_the_client_api_key_in_its_environment(policy: Path, tmp_path: Path) -> None:
    """With a client key given as ``--api-key-env``, no worker's /proc/<pid>/environ holds the
    key (anything that dumps its environment would print it), yet every worker enforces it."""
    key = f"sk-test-{secrets.token_hex(16)}"
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = _serve(policy, port, log, key_env={"CASCADE_TEST_CLIENT_KEY": key})
    try:
        assert wait_until(lambda: len(_children(server.pid)) == 2 and _ready(url), 60), (
            log.read_text()
        )
        workers = _children(server.pid)
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert key.encode() not in environ, f"worker {pid} has the key in its environment"
        body = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"authorization": f"Bearer {key}"}
        for _ in range(8):  # a connection each: the kernel spreads them across both workers
            with httpx.Client(timeout=30) as client:
                assert client.post(f"{url}/v1/chat/completions", json=body).status_code == 401
            with httpx.Client(timeout=30) as client:
                answer = client.post(f"{url}/v1/chat/completions", json=body, headers=auth)
                assert answer.status_code == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()
    finally:
        _shut_down(server)


_SHARED_SOCKET_SERVER = """\
import functools, sys
from cascade.logs import configure_json_logs
from cascade.server.app import create_worker_app
from cascade.server.drain import DrainTimes
from cascade.server.settings import ServerSettings
from cascade.server.workers import serve_workers

policy, database, spool, port = sys.argv[1:]
configure_json_logs("warning")
settings = ServerSettings(  # no virtual keys: they could not be read from that database
    policies=(policy,), database_url=database, spool_path=spool, migrate_on_start=False,
    virtual_keys=False,
)
serve_workers(
    functools.partial(create_worker_app, settings),
    host="127.0.0.1", port=int(port), log_level="warning", workers=2, reuse_port=False,
    drain=DrainTimes(delay_s=0),
)
"""


def test_workers_on_one_shared_socket_each_spool_to_a_file_of_their_own(
    policy: Path, tmp_path: Path
) -> None:
    """Without SO_REUSEPORT (forced here) the workers serve one socket the supervisor binds,
    and still each writes a spool of its own: with the database unreachable, every request
    waits in a worker's spool, both workers' spools fill, and none goes to a shared file."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    unreachable = f"sqlite:///{tmp_path / 'missing-folder' / 'ledger.db'}"
    spool = tmp_path / "ledger.spool"
    log = tmp_path / "serve.log"
    command = [sys.executable, "-c", _SHARED_SOCKET_SERVER, str(policy), unreachable]
    command += [str(spool), str(port)]
    with log.open("w") as stderr:
        server = subprocess.Popen(command, stderr=stderr, text=True)
    sent = 0

    def both_workers_spooled() -> bool:
        nonlocal sent
        with ThreadPoolExecutor(16) as pool:  # a connection each, all at once
            assert set(pool.map(lambda _: _ask(url), range(16))) == {200}
        sent += 16
        return all(Path(f"{spool}.worker{n}").exists() for n in (0, 1))

    try:
        assert wait_until(lambda: len(_children(server.pid)) == 2 and _ready(url), 60), (
            log.read_text()
        )
        assert wait_until(both_workers_spooled, 60), log.read_text()
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()
    finally:
        _shut_down(server)
    assert not spool.exists()
    per_worker = [len(Spool(f"{spool}.worker{n}").read()) for n in (0, 1)]
    assert min(per_worker) >= 1
    assert sum(per_worker) == sent
