"""A revoked key stops working on every worker of every replica within about a second.

Two ``cascade serve`` processes share one database, as two replicas behind a load balancer
would: one with two workers, one with one. The key is revoked with the CLI, and each replica is
polled with fresh connections (so the kernel spreads them over the workers) until it refuses the
key every time. The time from the revocation (its ``revoked_at``) to the first refusal of that
final run of refusals is the time it took; the bound is generous against a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cascade.cli import main
from cascade.ledger.database import run_with_engine
from cascade.ledger.keys import create_key, get_key, pepper
from cascade.ledger.migrate import upgrade_database
from tests.servers import serving, wait_until
from tests.test_keys import HI, bearer, database_url
from tests.test_workers import POLICY, _shut_down
from tests.upstreams import ScriptedTier, closed_port

PEPPER = "test-pepper-not-a-secret"
BOUND_S = 1.5
"""The issue promises a second; the poll runs every 0.5 s, and loopback HTTP on a loaded machine
adds the rest."""
STREAK = {1: 3, 2: 12}
"""Refusals in a row, on fresh connections, that show every worker refuses: with two workers,
12 connections all reaching one worker by chance has odds of 1 in 2,048."""


@contextmanager
def replica(policy: Path, url: str, workers: int, tmp_path: Path) -> Iterator[str]:
    """``cascade serve`` on a free port against ``url``; yields its base URL; stops it."""
    port = closed_port()
    name = f"replica-{port}"
    command = [sys.executable, "-m", "cascade", "serve", "--policy", str(policy)]
    command += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    command += ["--drain-delay", "0"]  # no load balancer to wait for on SIGTERM
    command += ["--database-url", url, "--spool", str(tmp_path / f"{name}.spool")]
    env = {**os.environ, "CASCADE_KEY_PEPPER": PEPPER}
    with (tmp_path / f"{name}.log").open("w") as log:
        server = subprocess.Popen(command, stderr=log, stdout=log, text=True, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _shut_down(server)


def _status(base: str, key: str) -> int:
    with httpx.Client(timeout=30) as client:  # a connection of its own
        try:
            return client.post(
                f"{base}/v1/chat/completions", json=HI, headers=bearer(key)
            ).status_code
        except httpx.TransportError:
            return 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_revoked_key_is_refused_by_every_worker_and_replica_within_a_second(
    kind: str, tmp_path: Path
) -> None:
    """After ``cascade keys revoke``, both replicas (three workers) refuse the key on every
    connection within BOUND_S of the revocation; before it, they all accepted it."""
    with database_url(kind, tmp_path) as url, serving(ScriptedTier("s").app()) as tier:
        policy = tmp_path / "workers.yaml"
        policy.write_text(POLICY.format(url=tier))
        upgrade_database(url)  # once, before the replicas start: no two migrate at once
        record, key = run_with_engine(
            url,
            lambda engine: create_key(engine, "team-a", key=pepper({"CASCADE_KEY_PEPPER": PEPPER})),
        )
        with ExitStack() as stack:
            replicas = {
                stack.enter_context(replica(policy, url, workers, tmp_path)): workers
                for workers in (2, 1)
            }
            for base in replicas:

                def accepted(base: str = base) -> bool:
                    return _status(base, key) == 200

                assert wait_until(accepted, 90), "a replica did not start"
            assert main(["keys", "revoke", record.key_id, "--url", url]) == 0
            revoked_at = run_with_engine(url, lambda engine: get_key(engine, record.key_id))
            assert revoked_at.revoked_at is not None

            took: dict[str, float] = {}
            streaks = dict.fromkeys(replicas, 0)
            first_refusal: dict[str, datetime] = {}
            deadline = datetime.now(UTC).timestamp() + 30
            while len(took) < len(replicas) and datetime.now(UTC).timestamp() < deadline:
                for base, workers in replicas.items():
                    if base in took:
                        continue
                    sent = datetime.now(UTC)
                    status = _status(base, key)
                    assert status in (200, 401), status
                    if status == 200:
                        streaks[base] = 0
                        continue
                    if streaks[base] == 0:
                        first_refusal[base] = sent
                    streaks[base] += 1
                    if streaks[base] >= STREAK[workers]:
                        elapsed = first_refusal[base] - revoked_at.revoked_at
                        took[base] = elapsed.total_seconds()
    assert len(took) == len(replicas), f"not every replica refused the key within 30 s: {took}"
    print(f"revocation took {took} ({kind})")  # shown with -s
    assert max(took.values()) < BOUND_S, took
