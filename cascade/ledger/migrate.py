"""Run the shipped Alembic migrations from code: no ``alembic.ini`` is needed or read.

The migrations live in ``migrations/`` (a source checkout) or inside the installed wheel;
:func:`cascade.resources.resource_dir` finds either. Each function takes the ledger's async
engine and runs Alembic on one of its connections, inside one transaction;
:func:`upgrade_database` does the same for a synchronous caller given a URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.database import run_with_engine
from cascade.ledger.models import metadata
from cascade.resources import resource_dir


def alembic_config() -> Config:
    """An Alembic configuration pointing at the shipped migrations."""
    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    return config


def head_revision() -> str | None:
    """The newest revision the shipped migrations define."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    await _with_connection(engine, lambda config: command.upgrade(config, revision))


def upgrade_database(url: str | None, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` on an engine of its own (closed after).

    For synchronous callers: ``cascade db upgrade``, and ``cascade serve --workers``, which
    migrates once before it starts workers that then skip it. Errors name the database.
    """
    run_with_engine(url, lambda engine: upgrade(engine, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` removes the ledger's tables)."""
    await _with_connection(engine, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def schema_differences(engine: AsyncEngine) -> list[Any]:
    """Differences between the database and the models, empty when they match (alembic check)."""

    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


_MIGRATION_LOCK = 0x63617363  # "casc": one Postgres advisory lock for every cascade migration


async def _with_connection(engine: AsyncEngine, run: Callable[[Config], None]) -> None:
    def in_sync(sync: Connection) -> None:
        if sync.dialect.name == "postgresql":
            # Proxy replicas that start together all migrate: the first holds the lock until its
            # transaction commits, the others then find the schema at head and do nothing
            # (without it, the losers failed on tables the winner had just created).
            sync.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config = alembic_config()
        config.attributes["connection"] = sync
        run(config)

    async with engine.begin() as conn:
        await conn.run_sync(in_sync)
