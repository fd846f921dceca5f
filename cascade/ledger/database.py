"""Which database the ledger uses, and the async engine that reaches it.

The URL comes from, in order: the ``url`` argument, the ``CASCADE_DATABASE_URL`` environment
variable, or an SQLite file ``cascade.db`` in the working directory. Plain URLs are given the
async driver this project ships with: ``postgresql://`` (or ``postgres://``) becomes
``postgresql+asyncpg://`` and ``sqlite://`` becomes ``sqlite+aiosqlite://``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from cascade.errors import LedgerError

_T = TypeVar("_T")

DATABASE_URL_ENV = "CASCADE_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///cascade.db"

# An outage must be noticed in seconds, not after asyncpg's default 60 s connect timeout: the
# writer spools the batch meanwhile, and a clean shutdown waits on this.
POSTGRES_CONNECT_TIMEOUT_S = 5.0

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def database_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> URL:
    """Resolve the ledger's URL (argument, then ``CASCADE_DATABASE_URL``, then ``cascade.db``)."""
    env = os.environ if environ is None else environ
    raw = url or env.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
    try:
        parsed = make_url(raw)
    except ArgumentError as exc:
        raise LedgerError(
            f"database URL {raw!r} is not a URL; expected e.g. sqlite:///cascade.db or "
            "postgresql://user@host:5432/db"
        ) from exc
    driver = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if driver not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise LedgerError(
            f"database URL {parsed.render_as_string(hide_password=True)!r}: unsupported driver "
            f"{parsed.drivername!r}; the ledger supports postgresql (asyncpg) and "
            "sqlite (aiosqlite)"
        )
    return parsed.set(drivername=driver)


def create_engine(
    url: str | URL | None = None, *, connect_args: Mapping[str, Any] | None = None
) -> AsyncEngine:
    """An async engine for the ledger's database; nothing connects until first use.

    ``connect_args`` reach the driver's ``connect()`` (for asyncpg, e.g.
    ``{"server_settings": {"search_path": "my_schema"}}``).
    """
    resolved = url if isinstance(url, URL) else database_url(url)
    args: dict[str, Any] = {}
    if resolved.get_backend_name() == "postgresql":
        args["timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    args.update(connect_args or {})
    if resolved.get_backend_name() == "sqlite":
        # No pool: an SQLite connection is a file open (well under a millisecond, once per write
        # batch), and a pooled aiosqlite connection that outlives its event loop is closed later
        # by the garbage collector from its worker thread, which then fails on the dead loop.
        engine = create_async_engine(resolved, connect_args=args, poolclass=NullPool)
    else:
        # pre-ping: after a Postgres restart the pool holds dead connections; test before use.
        engine = create_async_engine(resolved, connect_args=args, pool_pre_ping=True)
    if resolved.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def check_sqlite_folder(url: URL) -> None:
    """For one-shot commands and a proxy's start: refuse a database file whose folder does not
    exist, before aiosqlite tries to open it.

    SQLite would fail anyway; found here, the error names the folder, and no aiosqlite worker
    thread is left reporting the failed open to an event loop that ``asyncio.run`` has closed.
    (A running proxy instead treats a missing folder as an outage: rows wait in the spool.)
    """
    name = url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    folder = Path(name).expanduser().resolve().parent
    if not folder.is_dir():
        where = url.render_as_string(hide_password=True)
        raise LedgerError(f"database {where}: the folder {folder} does not exist; create it first")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite enforces foreign keys only when asked, per connection; WAL lets readers (reports)
    # run while the writer commits, and a busy timeout waits out their locks instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def run_with_engine(
    url: str | None, run: Callable[[AsyncEngine], Awaitable[_T]], *, existing: bool = False
) -> _T:
    """Run one async job on a fresh engine from a synchronous caller (the CLI).

    Database errors become a :class:`~cascade.errors.LedgerError` naming the URL (without its
    password) and the driver's first line, instead of a traceback. ``existing``: the job only
    reads a ledger, so a SQLite file that does not exist is an error (not created empty), and a
    database without the ledger's tables says how to create them.
    """
    resolved = database_url(url)
    where = resolved.render_as_string(hide_password=True)
    create = f"`cascade db upgrade --url {where}` creates its tables (a running proxy does too)"
    if resolved.get_backend_name() == "sqlite":
        check_sqlite_folder(resolved)
        name = resolved.database
        if existing and name and name != ":memory:" and not Path(name).expanduser().exists():
            raise LedgerError(f"database {where}: there is no ledger at {name}; {create}")

    async def go() -> _T:
        engine = create_engine(resolved)
        try:
            return await run(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except (SQLAlchemyError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if existing and ("no such table" in first_line or "does not exist" in first_line):
            raise LedgerError(f"database {where}: it holds no ledger tables; {create}") from exc
        raise LedgerError(f"database {where}: {first_line}") from exc
