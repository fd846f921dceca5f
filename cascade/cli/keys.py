"""``cascade keys create|list|revoke|rotate``: the proxy's virtual keys, in the ledger's database.

A key is printed once, when it is created or rotated (alone on stdout, so a script can capture
it; what it is on stderr); the database keeps its public id and a keyed hash. Revoking or
rotating takes effect within a second on every running proxy. Set ``$CASCADE_KEY_PEPPER`` the
same for these commands and for ``cascade serve`` (see :mod:`cascade.ledger.keys`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from cascade.errors import CascadeError

if TYPE_CHECKING:
    from cascade.ledger.keys import Budget, KeyRecord

_URL_HELP = (
    "database URL (default: $CASCADE_DATABASE_URL, else sqlite:///cascade.db in the working "
    "directory): the proxy's ledger database"
)
_BUDGET = re.compile(r"\$?(\d+(?:\.\d+)?)\s*/\s*(day|month)")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command group."""
    keys = commands.add_parser(
        "keys",
        help="create, list, revoke and rotate the proxy's virtual keys",
        description="Virtual keys: each belongs to a tenant and may carry a budget, rate "
        "limits and the tiers and policies it may use. Once any key exists, every /v1 request "
        "to the proxy needs one.",
    )
    actions = keys.add_subparsers(title="actions", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", required=True, help="who the key's requests are billed to")
    create.add_argument("--name", help="a note on what the key is for")
    create.add_argument(
        "--budget", metavar="USD/PERIOD", help="spend per UTC day or month: 50/day, 2000/month"
    )
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--tiers", help="comma-separated tiers the key may use (default: all)")
    create.add_argument(
        "--policies", help="comma-separated policies the key may use (default: all)"
    )
    create.add_argument(
        "--expires",
        metavar="DATE",
        help="when the key stops working: YYYY-MM-DD (midnight UTC) or an ISO time with zone",
    )
    create.add_argument(
        "--admin", action="store_true", help="may read /metrics and use admin routes"
    )
    create.add_argument("--url", help=_URL_HELP)
    create.set_defaults(command=_create)

    listing = actions.add_parser("list", help="list keys (never their secrets or hashes)")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.add_argument("--url", help=_URL_HELP)
    listing.set_defaults(command=_list)

    revoke = actions.add_parser("revoke", help="revoke a key (proxies refuse it within a second)")
    revoke.add_argument("key_id", metavar="ID")
    revoke.add_argument("--url", help=_URL_HELP)
    revoke.set_defaults(command=_revoke)

    rotate = actions.add_parser(
        "rotate", help="give a key a new secret (same id and limits); the old one stops working"
    )
    rotate.add_argument("key_id", metavar="ID")
    rotate.add_argument("--url", help=_URL_HELP)
    rotate.set_defaults(command=_rotate)


def parse_budget(text: str) -> Budget:
    """``50/day``, ``$2000/month`` → a :class:`~cascade.ledger.keys.Budget`."""
    from cascade.ledger.keys import Budget

    match = _BUDGET.fullmatch(text.strip().lower())
    if match is None:
        raise CascadeError(f"--budget {text!r}: expected USD/day or USD/month, e.g. 50/day")
    try:
        usd = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise CascadeError(f"--budget {text!r}: {match.group(1)!r} is not a number") from exc
    return Budget(usd, "day" if match.group(2) == "day" else "month")


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """``2027-01-31`` (midnight UTC) or an ISO time with its zone; must lie in the future."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CascadeError(f"--expires {text!r}: expected YYYY-MM-DD or an ISO time") from exc
    if when.tzinfo is None:
        if len(text) > 10:
            raise CascadeError(f"--expires {text!r}: give the time's zone, e.g. {text}+00:00")
        when = when.replace(tzinfo=UTC)
    if when <= (now or datetime.now(UTC)):
        raise CascadeError(f"--expires {text!r}: that is not in the future")
    return when.astimezone(UTC)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _create(ns: argparse.Namespace) -> int:
    from cascade.ledger import keys
    from cascade.ledger.database import run_with_engine
    from cascade.ledger.migrate import upgrade_database

    budget = None if ns.budget is None else parse_budget(ns.budget)
    expires = None if ns.expires is None else parse_expiry(ns.expires)
    upgrade_database(ns.url)  # a fresh database gets its tables, as a starting proxy does
    record, key = run_with_engine(
        ns.url,
        lambda engine: keys.create_key(
            engine,
            ns.tenant,
            key=keys.pepper(),
            name=ns.name,
            budget=budget,
            rpm=ns.rpm,
            tpm=ns.tpm,
            tiers=_names(ns.tiers),
            policies=_names(ns.policies),
            expires_at=expires,
            admin=ns.admin,
        ),
    )
    print(key)
    print(
        f"created key {record.key_id} for tenant {record.tenant}: {_limits(record)}. The key "
        "above is shown this once; the database keeps only its hash.",
        file=sys.stderr,
    )
    return 0


def _list(ns: argparse.Namespace) -> int:
    from cascade.ledger import keys
    from cascade.ledger.database import run_with_engine

    records = run_with_engine(ns.url, keys.list_keys, existing=True)
    now = datetime.now(UTC)
    if ns.json:
        for record in records:
            print(json.dumps(_row(record, now)))
        return 0
    if not records:
        print("no keys: the proxy lets anyone in (local development); `cascade keys create`")
        return 0
    print(f"{'ID':<12}  {'TENANT':<16}  {'STATE':<8}  {'CREATED':<16}  LIMITS")
    for record in records:
        row = _row(record, now)
        created = record.created_at.strftime("%Y-%m-%d %H:%M")
        name = f"  ({record.name})" if record.name else ""
        print(
            f"{record.key_id:<12}  {record.tenant:<16}  {row['state']:<8}  {created:<16}  "
            f"{_limits(record)}{name}"
        )
    return 0


def _revoke(ns: argparse.Namespace) -> int:
    from cascade.ledger import keys
    from cascade.ledger.database import run_with_engine

    record = run_with_engine(
        ns.url, lambda engine: keys.revoke_key(engine, ns.key_id), existing=True
    )
    assert record.revoked_at is not None
    print(f"revoked key {record.key_id} ({record.tenant}) at {record.revoked_at:%Y-%m-%d %H:%M:%S}")
    return 0


def _rotate(ns: argparse.Namespace) -> int:
    from cascade.ledger import keys
    from cascade.ledger.database import run_with_engine

    record, key = run_with_engine(
        ns.url, lambda engine: keys.rotate_key(engine, ns.key_id, key=keys.pepper()), existing=True
    )
    print(key)
    print(
        f"rotated key {record.key_id} ({record.tenant}): the old secret stops working within a "
        "second; the new key above is shown this once.",
        file=sys.stderr,
    )
    return 0


def _limits(record: KeyRecord) -> str:
    parts = []
    if record.budget is not None:
        parts.append(f"${record.budget.usd.normalize():f}/{record.budget.period}")
    if record.rpm is not None:
        parts.append(f"{record.rpm} rpm")
    if record.tpm is not None:
        parts.append(f"{record.tpm} tpm")
    if record.tiers is not None:
        parts.append("tiers " + ",".join(sorted(record.tiers)))
    if record.policies is not None:
        parts.append("policies " + ",".join(sorted(record.policies)))
    if record.expires_at is not None:
        parts.append(f"expires {record.expires_at:%Y-%m-%d %H:%M}")
    if record.admin:
        parts.append("admin")
    return ", ".join(parts) or "no limits"


def _row(record: KeyRecord, now: datetime) -> dict[str, object]:
    """A key as ``keys list --json`` prints it: no secret, no hash."""
    state = "revoked" if record.revoked_at else "active" if record.usable_at(now) else "expired"

    def time(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "key_id": record.key_id,
        "tenant": record.tenant,
        "name": record.name,
        "state": state,
        "created_at": time(record.created_at),
        "expires_at": time(record.expires_at),
        "revoked_at": time(record.revoked_at),
        "budget_usd": None if record.budget is None else f"{record.budget.usd.normalize():f}",
        "budget_period": None if record.budget is None else record.budget.period,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "tiers": None if record.tiers is None else sorted(record.tiers),
        "policies": None if record.policies is None else sorted(record.policies),
        "admin": record.admin,
    }
