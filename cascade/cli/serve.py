"""``cascade serve``: the OpenAI-compatible routing proxy.

On SIGTERM (or Ctrl+C) the proxy drains rather than drops: ``/readyz`` answers 503 at once; for
``--drain-delay`` seconds it still accepts and serves (a load balancer, or Kubernetes, keeps
sending for a moment after it is told); then it stops accepting, lets every request in flight
finish, streams included, for up to ``--drain-timeout`` seconds, cuts what is left (each such
request answered 503, or its stream ended with an error event, code ``shutdown``, and recorded
in the ledger as cut), flushes the ledger and exits 0. A second signal cuts at once. With
``--workers``, each worker drains so. In Kubernetes, set ``terminationGracePeriodSeconds`` above
the delay plus the timeout (:mod:`cascade.server.drain`).
"""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade.server.drain import DrainTimes
    from cascade.server.settings import ServerSettings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible routing proxy",
        description="Serve /v1/chat/completions: route each request to the cheapest tier that "
        "can handle it, escalate rejected answers, spill overflow. Point an OpenAI client's "
        "base URL at http://HOST:PORT/v1 and use the model name 'cascade'. On SIGTERM or "
        "Ctrl+C it drains (/readyz fails, what is in flight finishes, the ledger is flushed, "
        "exit 0): see --drain-delay and --drain-timeout; a second signal cuts at once.",
    )
    serve.add_argument(
        "--policy",
        action="append",
        help="policy file or shipped name (repeatable; default: default)",
    )
    serve.add_argument(
        "--shadow",
        action="append",
        metavar="FILE",
        help="a candidate policy that decides every request the live policy of its name routes, "
        "recorded in the ledger beside the live decision and never acted on; compare the two "
        "with cascade report (repeatable: at most one per live policy)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger bodies get 413"
    )
    serve.add_argument(
        "--api-key-env",
        help="name of an environment variable holding the key clients must send (default: "
        "none); it is read at start and removed from the environment, so no worker inherits it",
    )
    serve.add_argument(
        "--no-keys",
        action="store_true",
        help="never read virtual keys (cascade keys) from the database: the tenant comes from "
        "x-cascade-tenant, and a database unreachable at start does not hold requests back",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (each loads policies and model)"
    )
    serve.add_argument(
        "--database-url",
        help="the cost ledger (default: $CASCADE_DATABASE_URL, else sqlite:///cascade.db here)",
    )
    serve.add_argument("--no-ledger", action="store_true", help="do not record requests")
    serve.add_argument(
        "--drain-delay",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after SIGTERM, /readyz fails at once but requests are still accepted and served "
        "for this long, while load balancers stop sending (default: 5)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="then, no new connections; requests in flight (streams too) get this long to "
        "finish before they are cut, answered 503 and recorded as cut by the shutdown; the "
        "ledger is flushed and the process exits 0 (default: 30). Kubernetes' "
        "terminationGracePeriodSeconds must exceed the delay plus this",
    )
    serve.add_argument(
        "--spool", default="cascade-ledger.spool", help="where rows wait while the database is down"
    )
    serve.add_argument(
        "--batch-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="Batch API requests each process runs at once (0: serve the API, run none; "
        "default: 4)",
    )
    serve.add_argument(
        "--batch-lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a batch request stays this process's without a renewal; after a crash "
        "another replica runs it once this has passed (default: 60)",
    )
    serve.add_argument(
        "--batch-headroom",
        type=float,
        default=0.25,
        metavar="SHARE",
        help="share of a self-hosted tier's slots that batch work leaves to interactive "
        "traffic, 0 to 1 (default: 0.25)",
    )
    serve.add_argument(
        "--batch-deadline-margin",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="this close to a batch's deadline its requests may go to API tiers too "
        "(default: 1800)",
    )
    serve.add_argument(
        "--batch-poll",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the batch runner looks for queued work and spare capacity (default: 1)",
    )
    serve.add_argument(
        "--batch-max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="claims of a batch request whose tier failed (5xx, 429, timeout) before it goes "
        "to the error file (default: 5)",
    )
    serve.add_argument(
        "--batch-retry-backoff",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wait before a failed batch request is tried again, doubled each time (default: 1)",
    )
    serve.set_defaults(command=_serve)


def _serve(ns: argparse.Namespace) -> int:
    from cascade.cli.policy import check_policies
    from cascade.errors import CascadeError
    from cascade.ledger import database_url
    from cascade.ledger.keys import PEPPER_ENV
    from cascade.logs import configure_json_logs
    from cascade.server.drain import DrainTimes
    from cascade.server.settings import ServerSettings

    drain = DrainTimes(delay_s=ns.drain_delay, timeout_s=ns.drain_timeout)  # checked first
    _check_batch_options(ns)
    policies = tuple(ns.policy or ["default"])
    shadows = tuple(ns.shadow or [])
    if not check_policies(policies + shadows):  # located errors, not a lifespan traceback
        return 1
    _check_shadows(policies, shadows)
    keys: frozenset[str] = frozenset()
    if ns.api_key_env:
        # Taken out of the environment: worker processes (and anything that dumps its
        # environment) never see it; the workers receive their settings pickled over a pipe.
        key = os.environ.pop(ns.api_key_env, None)
        if not key:
            raise CascadeError(f"--api-key-env {ns.api_key_env}: that variable is not set")
        keys = frozenset({key})
    # Out of the environment too; the workers get it in their pickled settings.
    pepper = os.environ.pop(PEPPER_ENV, "").encode()
    configure_json_logs(ns.log_level)
    ledger_url = None
    if not ns.no_ledger:
        ledger_url = database_url(ns.database_url).render_as_string(hide_password=False)
    settings = ServerSettings(
        policies=policies,
        shadows=shadows,
        max_body_bytes=ns.max_body_bytes,
        api_keys=keys,
        virtual_keys=not ns.no_keys,
        key_pepper=pepper,
        database_url=ledger_url,
        spool_path=ns.spool,
        batch_concurrency=ns.batch_concurrency,
        batch_lease_s=ns.batch_lease,
        batch_poll_s=ns.batch_poll,
        batch_headroom=ns.batch_headroom,
        batch_deadline_margin_s=ns.batch_deadline_margin,
        batch_max_attempts=ns.batch_max_attempts,
        batch_retry_backoff_s=ns.batch_retry_backoff,
    )
    if ns.workers > 1:
        _serve_workers(settings, ns, drain)
    else:
        from cascade.server.app import create_app
        from cascade.server.drain import serve_draining

        # The proxy migrates the ledger as it starts (open_ledger), once.
        app = create_app(settings)
        serve_draining(app, host=ns.host, port=ns.port, log_level=ns.log_level, times=drain)
    return 0


def _serve_workers(settings: ServerSettings, ns: argparse.Namespace, drain: DrainTimes) -> None:
    import structlog

    from cascade.errors import LedgerError
    from cascade.ledger.failures import is_outage
    from cascade.ledger.migrate import upgrade_database
    from cascade.server.app import create_worker_app
    from cascade.server.workers import serve_workers

    if settings.database_url is not None:
        # Migrate once, here, and not in the workers: workers migrating one database at the
        # same time can collide (two CREATE TABLEs), and the loser would stop the server.
        try:
            upgrade_database(settings.database_url)
        except LedgerError as exc:
            # Out of reach (not refusing): start anyway; worker 0 alone migrates once it can
            # (ServerSettings.for_worker), the others spool until the tables are there.
            postgres = settings.database_url.startswith("postgresql")
            if not postgres or exc.__cause__ is None or not is_outage(exc.__cause__):
                raise
            structlog.get_logger("cascade.serve").warning(
                "ledger.database_unreachable_at_start", error=str(exc), workers=ns.workers
            )
        else:
            settings = replace(settings, migrate_on_start=False)
    serve_workers(
        functools.partial(create_worker_app, settings),
        host=ns.host,
        port=ns.port,
        log_level=ns.log_level,
        workers=ns.workers,
        drain=drain,
    )


def _check_shadows(policies: tuple[str, ...], shadows: tuple[str, ...]) -> None:
    """Refuse a shadow whose name no served policy has, or a second shadow of one policy."""
    from pathlib import Path

    from cascade.policy import load_policy
    from cascade.resources import policy_path
    from cascade.server.shadow import check_shadow_names

    live = {load_policy(policy_path(name)).name for name in policies}
    loaded = [(Path(name), load_policy(policy_path(name))) for name in shadows]
    check_shadow_names(loaded, live)


def _check_batch_options(ns: argparse.Namespace) -> None:
    """Refuse out-of-range ``--batch-*`` options, naming each with what is allowed."""
    from cascade.errors import CascadeError

    problems = [
        f"--{flag} {value}: {rule}"
        for flag, value, ok, rule in (
            ("batch-concurrency", ns.batch_concurrency, ns.batch_concurrency >= 0, "0 or more"),
            ("batch-lease", ns.batch_lease, ns.batch_lease > 0, "above 0 seconds"),
            ("batch-poll", ns.batch_poll, ns.batch_poll > 0, "above 0 seconds"),
            ("batch-headroom", ns.batch_headroom, 0 <= ns.batch_headroom <= 1, "from 0 to 1"),
            (
                "batch-deadline-margin",
                ns.batch_deadline_margin,
                ns.batch_deadline_margin >= 0,
                "0 seconds or more",
            ),
            ("batch-max-attempts", ns.batch_max_attempts, ns.batch_max_attempts >= 1, "1 or more"),
            (
                "batch-retry-backoff",
                ns.batch_retry_backoff,
                ns.batch_retry_backoff >= 0,
                "0 seconds or more",
            ),
        )
        if not ok
    ]
    if problems:
        raise CascadeError("; ".join(problems))
