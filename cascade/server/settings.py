"""The proxy's settings: built by the CLI (or a test) and handed to ``create_app``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ServerSettings:
    """What one proxy process serves, and its limits."""

    policies: tuple[str | Path, ...] = ("default",)
    """Policy files or shipped policy names; the first is used for the model name ``cascade``."""
    shadows: tuple[str | Path, ...] = ()
    """Shadow policy files (``--shadow``): each decides beside the live policy of its name,
    recorded in the ledger and never acted on (:mod:`cascade.server.shadow`)."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    """Bearer tokens clients must send; empty means no authentication (a sidecar on loopback).
    Left out of the settings' repr, so that logging the settings never logs a key."""
    virtual_keys: bool = True
    """Read virtual keys (``cascade keys``) from the ledger's database: once it holds any, every
    /v1 request needs one, and until it has been read (Postgres unreachable at start) /v1
    requests get 503. False (``cascade serve --no-keys``): never read; the tenant comes from
    ``x-cascade-tenant`` (see :mod:`cascade.server.auth`)."""
    key_pepper: bytes = field(default=b"", repr=False)
    """The HMAC key of the virtual keys' hashes (``$CASCADE_KEY_PEPPER``); never in a repr."""
    reload_interval_s: float = 1.0
    """How often policy files are checked for changes (0 disables reloading)."""
    explore_seed: int | None = None
    """Exploration's draws (``learning.explore``) as a function of this seed and each prompt,
    so an experiment repeats exactly whatever the order requests arrive in; None: random."""
    database_url: str | None = None
    """The ledger's database (``sqlite:///cascade.db``, ``postgresql://…``); None: no ledger."""
    spool_path: str = "cascade-ledger.spool"
    """Where ledger rows wait while the database is unreachable (replayed when it is back)."""
    migrate_on_start: bool = True
    """Bring the ledger's schema up to date at start-up (``cascade db upgrade`` does it by hand;
    ``cascade serve --workers`` does it once before starting workers, which then skip it)."""
    batch_scoring: Literal["auto", "loop", "always", "never"] = "auto"
    """How the scorer is called. ``loop``: the requests of one event-loop turn are scored in one
    call, on the loop (no thread). ``always``: micro-batches in a worker thread, waiting up to
    ``batch_wait_ms`` for more prompts. ``never``: each request on its own. ``auto``: ``always``
    when the scorer runs on a GPU, else ``loop`` (on 2 CPU cores it cut the proxy's CPU per
    request by a fifth at concurrency 64, while the thread hand-off of ``always`` cost ~30% of
    the throughput; benchmarks/bench_proxy.py)."""
    adopt_spools: tuple[str, ...] = ()
    """Spool files of workers that no longer exist, moved into this process's spool at start
    (set by :meth:`for_worker`)."""
    batch_wait_ms: float = 0.0
    """How long a micro-batch waits for more prompts (0: batch only what is already queued)."""
    batch_concurrency: int = 4
    """Batch API requests this process runs at once (0: it runs none, only serves the API)."""
    batch_lease_s: float = 60.0
    """How long a claimed batch request stays this process's without a renewal: after a crash,
    another replica runs it once this has passed (renewed every third of it while it runs)."""
    batch_poll_s: float = 1.0
    """How often the batch runner looks for queued work when it has free slots."""
    batch_headroom: float = 0.25
    """The share of each self-hosted tier's ``max_concurrency`` that deferred (Batch API) work
    leaves to interactive traffic: it runs there only while the tier's load (this proxy's calls
    in flight, or its engines' running requests when read) is below the rest, and nothing is
    waiting (see :mod:`cascade.server.batch_schedule`)."""
    batch_deadline_margin_s: float = 1800.0
    """A batch this close to its deadline stops waiting for spare self-hosted capacity: its
    remaining requests are routed with every tier the caller may use, API tiers included."""
    batch_max_attempts: int = 5
    """Claims of a batch request an upstream failure (5xx, 429, timeout) may end before the
    request fails into the error file; a saturated tier does not count."""
    batch_retry_backoff_s: float = 1.0
    """The wait before a failed batch request's first retry, doubled at each further one."""
    max_batch_file_bytes: int = 50 * 1024 * 1024
    """Larger Batch API uploads are refused with 413 (files are kept in the database)."""

    def for_worker(self, index: int, count: int) -> ServerSettings:
        """The settings of worker ``index`` of ``count``: a spool file of its own, and no
        migration but in worker 0.

        Workers sharing one spool could lose rows: one empties the file after replaying what
        it read while another appends. Worker 0 also takes over the spool of a single-process
        run and those of workers beyond ``count`` (a restart with fewer workers).
        """
        base = Path(self.spool_path)
        adopt: tuple[str, ...] = ()
        if index == 0:
            pattern = re.compile(re.escape(base.name) + r"\.worker(\d+)")
            others = [
                str(path)
                for path in sorted(base.parent.glob(base.name + ".worker*"))
                if (match := pattern.fullmatch(path.name)) and int(match.group(1)) >= count
            ]
            adopt = (str(base), *others)
        # Only worker 0 migrates, if any must (the database was out of reach for the parent).
        return replace(
            self,
            spool_path=f"{base}.worker{index}",
            adopt_spools=adopt,
            migrate_on_start=self.migrate_on_start and index == 0,
        )
