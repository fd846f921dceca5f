"""The proxy's settings: built by the CLI (or a test) and handed to ``create_app``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ServerSettings:
    """What one proxy process serves, and its limits."""

    policies: tuple[str | Path, ...] = ("default",)
    """Policy files or shipped policy names; the first is used for the model name ``cascade``."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    api_keys: frozenset[str] = field(default_factory=frozenset)
    """Bearer tokens clients must send; empty means no authentication (a sidecar on loopback)."""
    reload_interval_s: float = 1.0
    """How often policy files are checked for changes (0 disables reloading)."""
    database_url: str | None = None
    """The ledger's database (``sqlite:///cascade.db``, ``postgresql://…``); None: no ledger."""
    spool_path: str = "cascade-ledger.spool"
    """Where ledger rows wait while the database is unreachable (replayed when it is back)."""
    migrate_on_start: bool = True
    """Bring the ledger's schema up to date at start-up (``cascade db upgrade`` does it by hand)."""
    batch_scoring: Literal["auto", "loop", "always", "never"] = "auto"
    """How the scorer is called. ``loop``: the requests of one event-loop turn are scored in one
    call, on the loop (no thread). ``always``: micro-batches in a worker thread, waiting up to
    ``batch_wait_ms`` for more prompts. ``never``: each request on its own. ``auto``: ``always``
    when the scorer runs on a GPU, else ``loop`` (on 2 CPU cores it cut the proxy's CPU per
    request by a fifth at concurrency 64, while the thread hand-off of ``always`` cost ~30% of
    the throughput; benchmarks/bench_proxy.py)."""
    batch_wait_ms: float = 0.0
    """How long a micro-batch waits for more prompts (0: batch only what is already queued)."""

    def to_json(self) -> str:
        """The settings as JSON (to hand them to worker processes)."""
        data = asdict(self)
        data["policies"] = [str(p) for p in self.policies]
        data["api_keys"] = sorted(self.api_keys)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServerSettings:
        """Settings written by :meth:`to_json`."""
        data = json.loads(text)
        data["policies"] = tuple(data["policies"])
        data["api_keys"] = frozenset(data["api_keys"])
        return cls(**data)
