"""``cascade serve --workers N``: worker processes on one port, supervised, stopped cleanly."""

from __future__ import annotations

import os
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

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="workers share a port with SO_REUSEPORT"
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


def _serve(policy: Path, port: int, log: Path, ledger: Path | None = None) -> subprocess.Popen[str]:
    """``cascade serve --workers 2``, its stderr in ``log`` (a pipe nobody reads could fill)."""
    command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
    command += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    if ledger is None:
        command.append("--no-ledger")
    else:
        command += ["--database-url", f"sqlite:///{ledger}", "--spool", f"{ledger}.spool"]
    with log.open("w") as stderr:
        return subprocess.Popen(command, stderr=stderr, text=True)


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
        if server.poll() is None:
            server.kill()
        server.wait(10)


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
            if server.poll() is None:
                server.kill()
                server.wait(10)
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
    assert ServerSettings.from_json(first.to_json()) == first

    assert adopt_spools(first.adopt_spools, into=first.spool_path) == 3
    ids = [e.request.request_id for e in Spool(first.spool_path).read()]
    assert ids == [make_entry(n).request.request_id for n in (1, 2, 3)]
    assert not base.exists()
    assert not Path(f"{base}.worker3").exists()
    assert len(Spool(f"{base}.worker1").read()) == 1  # a live worker's spool is left alone
