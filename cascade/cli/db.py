"""``cascade db``: create and migrate the ledger's database (SQLite by default, or Postgres)."""

from __future__ import annotations

import argparse

_URL_HELP = (
    "database URL (default: $CASCADE_DATABASE_URL, else sqlite:///cascade.db in the working "
    "directory); postgresql://user@host/db uses asyncpg"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``db`` command and its ``upgrade``, ``downgrade`` and ``current`` subcommands."""
    db = commands.add_parser(
        "db",
        help="create or migrate the ledger's database",
        description="Apply the shipped Alembic migrations to the ledger's database.",
    )
    actions = db.add_subparsers(title="actions", metavar="ACTION", required=True)

    upgrade = actions.add_parser("upgrade", help="migrate up to REVISION (default: newest)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.add_argument("--url", help=_URL_HELP)
    upgrade.set_defaults(command=_upgrade)

    downgrade = actions.add_parser(
        "downgrade", help="migrate down to REVISION ('base' drops the ledger's tables)"
    )
    downgrade.add_argument("revision")
    downgrade.add_argument("--url", help=_URL_HELP)
    downgrade.set_defaults(command=_downgrade)

    current = actions.add_parser("current", help="print the revision the database is at")
    current.add_argument("--url", help=_URL_HELP)
    current.set_defaults(command=_current)


def _upgrade(ns: argparse.Namespace) -> int:
    from cascade.ledger import migrate
    from cascade.ledger.database import run_with_engine

    migrate.upgrade_database(ns.url, ns.revision)
    print(f"ledger database at revision {run_with_engine(ns.url, migrate.current_revision)}")
    return 0


def _downgrade(ns: argparse.Namespace) -> int:
    from cascade.ledger import migrate
    from cascade.ledger.database import run_with_engine

    run_with_engine(ns.url, lambda engine: migrate.downgrade(engine, ns.revision))
    revision = run_with_engine(ns.url, migrate.current_revision)
    print(f"ledger database at revision {revision or 'base (no ledger tables)'}")
    return 0


def _current(ns: argparse.Namespace) -> int:
    from cascade.ledger import migrate
    from cascade.ledger.database import run_with_engine

    revision = run_with_engine(ns.url, migrate.current_revision)
    head = migrate.head_revision()
    if revision is None:
        print(f"none (never migrated; newest is {head}): run `cascade db upgrade`")
    elif revision == head:
        print(f"{revision} (newest)")
    else:
        print(f"{revision} (newest is {head}: run `cascade db upgrade`)")
    return 0
