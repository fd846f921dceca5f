"""The ledger's schema: shipped migrations, their round trip, and their match with the models."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cascade.cli import db as db_cli
from cascade.ledger import DATABASE_URL_ENV, LedgerError, database_url
from cascade.ledger.migrate import (
    current_revision,
    downgrade,
    head_revision,
    schema_differences,
    upgrade,
)
from tests.ledger_databases import KINDS, LedgerDatabase, open_database


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerDatabase]:
    """An empty SQLite file or Postgres schema."""
    with open_database(request.param, tmp_path) as db:
        yield db


_TABLES = ("requests", "attempts", "api_keys", "budget_periods", "budget_leases")


async def _tables(database: LedgerDatabase) -> set[str]:
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def test_upgrade_downgrade_upgrade(database: LedgerDatabase) -> None:
    """Migrations create the ledger's tables, remove them on downgrade, and create them again."""

    async def run() -> None:
        engine = database.engine()
        try:
            assert await current_revision(engine) is None
            await upgrade(engine)
            assert await current_revision(engine) == head_revision()
            assert set(_TABLES) <= await _tables(database)
            await downgrade(engine, "base")
            assert await current_revision(engine) is None
            assert not set(_TABLES) & await _tables(database)
            await upgrade(engine)
            assert await current_revision(engine) == head_revision()
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_migrated_schema_matches_models(database: LedgerDatabase) -> None:
    """After upgrade, autogenerate finds nothing to change (the ``alembic check`` guarantee)."""

    async def run() -> None:
        engine = database.engine()
        try:
            await upgrade(engine)
            assert await schema_differences(engine) == []
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_report_indexes_exist(database: LedgerDatabase) -> None:
    """The indexes the cost reports query by exist from the first migration."""

    async def run() -> dict[str, list[list[str | None]]]:
        engine = database.engine()
        try:
            await upgrade(engine)
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: {
                        table: [ix["column_names"] for ix in inspect(sync).get_indexes(table)]
                        for table in ("requests", "attempts")
                    }
                )
        finally:
            await engine.dispose()

    indexes = asyncio.run(run())
    assert ["created_at"] in indexes["requests"]
    assert ["tenant", "created_at"] in indexes["requests"]
    assert ["policy", "created_at"] in indexes["requests"]
    assert ["final_tier", "created_at"] in indexes["requests"]
    assert ["tier"] in indexes["attempts"]


def test_database_url_defaults_to_sqlite_file_and_env_overrides() -> None:
    """No URL means ./cascade.db; CASCADE_DATABASE_URL overrides; plain URLs get async drivers."""
    assert str(database_url(environ={})) == "sqlite+aiosqlite:///cascade.db"
    env = {DATABASE_URL_ENV: "postgresql://postgres@127.0.0.1:5432/test"}
    assert database_url(environ=env).drivername == "postgresql+asyncpg"
    assert database_url("postgres://u@h/d", environ=env).drivername == "postgresql+asyncpg"
    assert database_url("sqlite:////tmp/x.db", environ=env).drivername == "sqlite+aiosqlite"


def test_database_url_rejects_unsupported_driver() -> None:
    """A database the ledger cannot drive is refused with the supported ones named."""
    with pytest.raises(LedgerError, match=r"unsupported driver 'mysql'.*postgresql.*sqlite"):
        database_url("mysql://u@h/d", environ={})


def _cli(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="cascade")
    db_cli.register(parser.add_subparsers())
    ns = parser.parse_args(list(args))
    status: int = ns.command(ns)
    return status


def test_cli_upgrade_current_downgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cascade db upgrade`, `current` and `downgrade` migrate the database the URL names."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert _cli("db", "current", "--url", url) == 0
    assert "never migrated" in capsys.readouterr().out
    assert _cli("db", "upgrade", "--url", url) == 0
    assert f"revision {head_revision()}" in capsys.readouterr().out
    assert _cli("db", "current", "--url", url) == 0
    assert "(newest)" in capsys.readouterr().out
    assert _cli("db", "downgrade", "base", "--url", url) == 0
    assert "base" in capsys.readouterr().out


def test_cli_reports_unreachable_database(tmp_path: Path) -> None:
    """An unreachable database is a LedgerError naming it, not a traceback."""
    url = f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}"
    with pytest.raises(
        LedgerError, match=r"missing/ledger\.db: the folder .*missing does not exist"
    ):
        _cli("db", "upgrade", "--url", url)


def test_replicas_that_migrate_at_once_all_start(tmp_path: Path) -> None:
    """Several proxies starting together against a new Postgres database each run the
    migrations: all of them succeed and the schema is at head (an advisory lock orders them).
    SQLite serves one host, where ``cascade serve --workers`` migrates once before starting."""
    with open_database("postgres", tmp_path) as database:
        _migrate_at_once(database)


def _migrate_at_once(database: LedgerDatabase) -> None:
    async def run() -> None:
        engines = [database.engine() for _ in range(3)]
        try:
            # Unordered, concurrent DDL transactions wait on each other's locks: bounded here.
            await asyncio.wait_for(asyncio.gather(*(upgrade(e) for e in engines)), 60)
            assert await current_revision(engines[0]) == head_revision()
            assert set(_TABLES) <= await _tables(database)
        finally:
            for engine in engines:
                await engine.dispose()

    asyncio.run(run())
