"""Why a database write failed: the database is out of reach, or it refused what it was sent.

The writer treats the two differently. An **outage** (connection refused, reset or timed out,
the server shutting down or out of connections) says nothing about the rows: they wait in the
spool until the database is back. Anything else may be the rows' fault (a value Postgres refuses,
an integer out of range, a constraint): the writer then asks the database whether it takes a
known-good row (:meth:`~cascade.ledger.store.Ledger.probe`) and, if it does, retries the batch row
by row and quarantines the rows it still refuses; if it does not, the fault is the database's
(a missing table, say) and the rows wait in the spool like in an outage.

At start-up the same test separates a database that is merely **unreachable** (the proxy starts
and spools) from a **misconfigured** one (bad credentials, no such database, a refused URL), which
stops the start with the database's own message.
"""

from __future__ import annotations

import sys

from sqlalchemy import exc as sa

# SQLSTATE classes of an unreachable server: 08 connection exception, 53 insufficient resources
# (too many connections, disk full), 57 operator intervention (shutting down, starting up),
# 58 system error (I/O).
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57", "58")


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached now (rather than refusing rows)."""
    if isinstance(error, OSError | TimeoutError | sa.DisconnectionError | sa.TimeoutError):
        return True
    if isinstance(error, sa.OperationalError | sa.InterfaceError):
        return True
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    # The asyncpg driver's own errors reach us unwrapped where the ledger uses it directly (the
    # Postgres batch insert). If asyncpg was never imported, no error of its kind can exist.
    driver = sys.modules.get("asyncpg")
    if driver is not None and isinstance(error, driver.InterfaceError):
        return True
    state = sqlstate(error)
    return state is not None and state[:2] in _OUTAGE_SQLSTATE_CLASSES


def sqlstate(error: BaseException) -> str | None:
    """The Postgres SQLSTATE of ``error`` (wrapped by SQLAlchemy or not), None if it has none."""
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def first_line(error: BaseException) -> str:
    """The error's first line: the driver's message, without SQLAlchemy's SQL and parameters."""
    text = str(getattr(error, "orig", None) or error)
    return text.splitlines()[0] if text else type(error).__name__


def error_class(error: BaseException) -> str:
    """The name of the driver's own error class under SQLAlchemy's wrappers (``OverflowError``,
    ``CharacterNotInRepertoireError``, …): what a person looks up."""
    inner = error
    for _ in range(8):  # a few wrappers deep at most; never loop on a cycle
        deeper = getattr(inner, "orig", None) or inner.__cause__
        if deeper is None or not type(inner).__module__.startswith("sqlalchemy"):
            break
        inner = deeper
    return type(inner).__name__
