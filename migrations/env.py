"""Alembic environment for the cascade ledger.

Run through :mod:`cascade.ledger.migrate` (or ``cascade db upgrade``), which hands over an open
connection of the ledger's async engine in ``config.attributes["connection"]``. Run by the
``alembic`` command itself, it builds an async engine from ``sqlalchemy.url`` (or
``CASCADE_DATABASE_URL``, or the default SQLite file).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from cascade.ledger.database import create_engine
from cascade.ledger.models import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later revisions get copy-and-move batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("cascade's migrations run online only: use `cascade db upgrade`")

_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    asyncio.run(_run_with_own_engine())
