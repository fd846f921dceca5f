"""``cascade serve``: the OpenAI-compatible routing proxy."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible routing proxy",
        description="Serve /v1/chat/completions: route each request to the cheapest tier that "
        "can handle it, escalate rejected answers, spill overflow. Point an OpenAI client's "
        "base URL at http://HOST:PORT/v1 and use the model name 'cascade'.",
    )
    serve.add_argument(
        "--policy",
        action="append",
        help="policy file or shipped name (repeatable; default: default)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger bodies get 413"
    )
    serve.add_argument(
        "--api-key-env",
        help="name of an environment variable holding the key clients must send (default: none)",
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
        "--spool", default="cascade-ledger.spool", help="where rows wait while the database is down"
    )
    serve.set_defaults(command=_serve)


def _serve(ns: argparse.Namespace) -> int:
    from cascade.errors import CascadeError
    from cascade.ledger import DATABASE_URL_ENV
    from cascade.ledger.database import run_with_engine
    from cascade.ledger.migrate import upgrade
    from cascade.logs import configure_json_logs
    from cascade.server.app import SETTINGS_ENV, create_app
    from cascade.server.background import serve_forever
    from cascade.server.settings import ServerSettings
    from cascade.server.workers import serve_workers

    keys: frozenset[str] = frozenset()
    if ns.api_key_env:
        key = os.environ.get(ns.api_key_env)
        if not key:
            raise CascadeError(f"--api-key-env {ns.api_key_env}: that variable is not set")
        keys = frozenset({key})
    configure_json_logs(ns.log_level)
    ledger_url = None
    if not ns.no_ledger:
        ledger_url = ns.database_url or os.environ.get(DATABASE_URL_ENV) or "sqlite:///cascade.db"
    settings = ServerSettings(
        policies=tuple(ns.policy or ["default"]),
        max_body_bytes=ns.max_body_bytes,
        api_keys=keys,
        database_url=ledger_url,
        spool_path=ns.spool,
    )
    if ns.workers > 1:
        if ledger_url is not None:
            # Migrate once, here: workers migrating one database at the same time can collide
            # (two CREATE TABLEs), and the loser would stop the server as it starts.
            run_with_engine(ledger_url, upgrade)
            settings = replace(settings, migrate_on_start=False)
        # Worker processes build the app themselves, from settings handed over in the environment.
        os.environ[SETTINGS_ENV] = settings.to_json()
        serve_workers(
            "cascade.server.app:create_app_from_env",
            host=ns.host,
            port=ns.port,
            log_level=ns.log_level,
            workers=ns.workers,
        )
    else:
        serve_forever(create_app(settings), host=ns.host, port=ns.port, log_level=ns.log_level)
    return 0
