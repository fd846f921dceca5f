"""Virtual keys in the ledger's database: create, list, revoke, rotate, and what changed since.

A key reads ``csk_<key id>_<secret>``: the key id is 12 lowercase base32 characters (60 random
bits, public: it names the key in ``cascade keys list`` and in logs), the secret 43 characters of
URL-safe base64 (256 random bits). The ``api_keys`` table holds the key id and
``HMAC-SHA256(pepper, secret)``, never the secret; the pepper is ``$CASCADE_KEY_PEPPER`` (empty
when unset: set it in production, so that a copy of the table alone cannot check guesses).

Why a keyed fast hash and not bcrypt or argon2: those are slow on purpose, to make guessing a
*password* (a few dozen bits a person chose) expensive. A secret of 256 random bits cannot be
guessed at any speed, so slowness buys nothing, and the proxy checks a key on every request, where
a hash that takes 100 ms per call would be the bottleneck; HMAC-SHA256 takes about a microsecond.

Every change to a row moves its ``updated_at``; proxies poll :func:`changed_since` (see
:class:`cascade.server.auth.KeyCache`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.errors import LedgerError
from cascade.ledger.models import ApiKey

PREFIX = "csk_"
PEPPER_ENV = "CASCADE_KEY_PEPPER"
ID_CHARS = 12
SECRET_CHARS = 43
KEY_CHARS = len(PREFIX) + ID_CHARS + 1 + SECRET_CHARS
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32, lower case
_KEY = re.compile(rf"csk_([a-z2-7]{{{ID_CHARS}}})_([A-Za-z0-9_-]{{{SECRET_CHARS}}})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_TABLE = cast("Table", ApiKey.__table__)
Period = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class Budget:
    """What a key may spend per UTC calendar period (``day`` or ``month``)."""

    usd: Decimal
    period: Period


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One row of ``api_keys``: never printed with its hash (left out of the repr)."""

    key_id: str
    hash: str = field(repr=False)
    tenant: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    updated_at: datetime
    budget: Budget | None
    rpm: int | None
    tpm: int | None
    tiers: frozenset[str] | None
    """Tier names the key may use (None: all)."""
    policies: frozenset[str] | None
    """Policy names the key may use (None: all)."""
    admin: bool

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def pepper(environ: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key: ``$CASCADE_KEY_PEPPER``'s bytes, or empty when it is unset."""
    return (os.environ if environ is None else environ).get(PEPPER_ENV, "").encode()


def hash_secret(secret: str, key: bytes) -> str:
    """``HMAC-SHA256(pepper, secret)`` in hex, as stored."""
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None (never raises, whatever the input)."""
    if len(token) != KEY_CHARS or not token.startswith(PREFIX):
        return None
    match = _KEY.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def _new_secret() -> str:
    return secrets.token_urlsafe(32)  # 32 bytes: 43 characters, no padding


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_CHARS))


def _names(values: Collection[str] | None, what: str) -> str | None:
    if values is None:
        return None
    for value in values:
        if not _NAME.fullmatch(value):
            raise LedgerError(f"{what}: {value[:60]!r} is not a name (letters, digits, ._:@/-)")
    if not values:
        raise LedgerError(f"{what}: name at least one, or leave it out to allow all")
    return ",".join(sorted(set(values)))


def check_tenant(tenant: str) -> str:
    """A tenant name as the ledger can store it (1 to 128 of letters, digits and ``._:@/-``)."""
    if not _NAME.fullmatch(tenant):
        raise LedgerError(
            f"tenant {tenant[:60]!r}: 1 to 128 letters, digits and ._:@/- (starting with a "
            "letter or digit)"
        )
    return tenant


def _record(row: RowMapping) -> KeyRecord:
    budget = None
    if row["budget_usd"] is not None:
        budget = Budget(row["budget_usd"], row["budget_period"] or "month")

    def names(value: str | None) -> frozenset[str] | None:
        return None if value is None else frozenset(value.split(","))

    return KeyRecord(
        key_id=row["key_id"],
        hash=row["hash"],
        tenant=row["tenant"],
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        updated_at=row["updated_at"],
        budget=budget,
        rpm=row["rpm"],
        tpm=row["tpm"],
        tiers=names(row["tiers"]),
        policies=names(row["policies"]),
        admin=bool(row["admin"]),
    )


async def create_key(
    engine: AsyncEngine,
    tenant: str,
    *,
    key: bytes,
    name: str | None = None,
    budget: Budget | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    tiers: Collection[str] | None = None,
    policies: Collection[str] | None = None,
    expires_at: datetime | None = None,
    admin: bool = False,
) -> tuple[KeyRecord, str]:
    """Store a new key for ``tenant``; returns its row and the key itself (shown once: the
    database keeps only its hash). ``key``: the pepper."""
    if budget is not None and not (budget.usd >= 0 and budget.period in ("day", "month")):
        raise LedgerError(f"budget {budget.usd} per {budget.period}: a sum >= 0 per day or month")
    for what, limit in (("rpm", rpm), ("tpm", tpm)):
        if limit is not None and limit < 1:
            raise LedgerError(f"{what}: at least 1 (or leave it out for no limit)")
    if name is not None and (len(name) > 200 or not name.isprintable()):
        raise LedgerError("name: up to 200 printable characters")
    now = datetime.now(UTC)
    key_id, secret = _new_id(), _new_secret()
    values = {
        "key_id": key_id,
        "hash": hash_secret(secret, key),
        "tenant": check_tenant(tenant),
        "name": name,
        "created_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
        "updated_at": now,
        "budget_usd": None if budget is None else budget.usd,
        "budget_period": None if budget is None else budget.period,
        "rpm": rpm,
        "tpm": tpm,
        "tiers": _names(tiers, "tiers"),
        "policies": _names(policies, "policies"),
        "admin": admin,
    }
    async with engine.begin() as conn:
        await conn.execute(insert(_TABLE).values(**values))
        row = (await conn.execute(select(_TABLE).where(_TABLE.c.key_id == key_id))).mappings()
        record = _record(row.one())
    return record, f"{PREFIX}{key_id}_{secret}"


async def list_keys(engine: AsyncEngine) -> list[KeyRecord]:
    """Every key, oldest first (revoked and expired ones too)."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(_TABLE).order_by(_TABLE.c.created_at, _TABLE.c.key_id))
        return [_record(row) for row in rows.mappings()]


async def get_key(engine: AsyncEngine, key_id: str) -> KeyRecord:
    """The key with this id (LedgerError naming it when there is none)."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(_TABLE).where(_TABLE.c.key_id == key_id))).mappings()
        found = row.first()
    if found is None:
        raise LedgerError(f"no key {key_id[:40]!r}; `cascade keys list` shows them")
    return _record(found)


async def revoke_key(engine: AsyncEngine, key_id: str) -> KeyRecord:
    """Revoke a key now (revoking twice keeps the first time); proxies refuse it within a
    second."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            update(_TABLE)
            .where(_TABLE.c.key_id == key_id, _TABLE.c.revoked_at.is_(None))
            .values(revoked_at=now, updated_at=now)
        )
    return await get_key(engine, key_id)


async def rotate_key(engine: AsyncEngine, key_id: str, *, key: bytes) -> tuple[KeyRecord, str]:
    """A new secret for a key (same id, tenant and limits); the old secret stops working."""
    current = await get_key(engine, key_id)
    if current.revoked_at is not None:
        raise LedgerError(f"key {key_id} was revoked; create a new key instead")
    secret, now = _new_secret(), datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            update(_TABLE)
            .where(_TABLE.c.key_id == key_id)
            .values(hash=hash_secret(secret, key), updated_at=now)
        )
    return await get_key(engine, key_id), f"{PREFIX}{key_id}_{secret}"


async def changed_since(engine: AsyncEngine, since: datetime | None) -> list[KeyRecord]:
    """Keys whose row changed at or after ``since`` (None: every key), by ``updated_at``."""
    query = select(_TABLE).order_by(_TABLE.c.updated_at)
    if since is not None:
        query = query.where(_TABLE.c.updated_at >= since)
    async with engine.connect() as conn:
        return [_record(row) for row in (await conn.execute(query)).mappings()]
