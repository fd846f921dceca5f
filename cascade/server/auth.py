"""Who is calling: the proxy's virtual keys, cached in memory, and the :class:`Caller` of a request.

:class:`KeyCache` reads the ``api_keys`` table once at start and then every half second polls
the rows changed since (``updated_at``), so a key revoked or rotated with ``cascade keys`` stops
working within a second on every worker and every replica; checking a key on a request is a dict
lookup and one HMAC, no database round trip.

Who gets in (:meth:`KeyCache.authorize`):

* **Virtual keys** (``Authorization: Bearer csk_…``): the request's tenant, allowed tiers and
  policies, budget and rate limits come from its key. Once the database holds any key, revoked
  ones included, every ``/v1`` request needs one (or the shared key below), and
  ``x-cascade-tenant`` no longer names the tenant: a request whose header names another tenant
  than its key's is refused (403), so a client that thinks it bills someone else finds out.
* **The shared key** of ``cascade serve --api-key-env`` (``ServerSettings.api_keys``): one
  trusted client (a sidecar). It has no tenant and no limits; while no virtual key exists its
  requests may name their tenant with ``x-cascade-tenant``, as before.
* **Local development**: with no virtual key in the database and no shared key, anyone is let in
  and ``x-cascade-tenant`` names the tenant.

Fail closed: until the key table has been read once (a Postgres unreachable at start), the proxy
cannot tell whom to let in, so ``/v1`` requests get 503 (``keys_unavailable``), shared-key ones
excepted; a deployment without virtual keys can say so (``cascade serve --no-keys``) and serve
meanwhile. A poll that fails later keeps the keys last read (revocations wait for the database;
expiry does not, it is checked against the clock on each request).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cascade.ledger.database import create_engine
from cascade.ledger.failures import first_line
from cascade.ledger.keys import PREFIX, Budget, KeyRecord, changed_since, hash_secret, split_key
from cascade.server.openai_format import BadRequestError
from cascade.server.settings import ServerSettings

__all__ = ["Budget", "Caller", "KeyCache"]

log = structlog.get_logger("cascade.keys")

POLL_INTERVAL_S = 0.5
"""How often each worker asks the database for changed keys."""
LOOKBACK = timedelta(seconds=30)
"""Each poll reads again the rows changed this long before the newest it has seen: a row
committed late, or stamped by a machine whose clock is a little behind, is still found."""
FULL_RELOAD_S = 60.0
"""How often the whole table is read again (whatever the lookback missed: larger clock skew)."""
_DUMMY_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, and what it may do (``None``: no limit of that kind)."""

    tenant: str | None
    key_id: str | None
    """The virtual key's public id (None: the shared key, or local development)."""
    tiers: frozenset[str] | None
    policies: frozenset[str] | None
    budget: Budget | None
    rpm: int | None
    tpm: int | None
    admin: bool

    @classmethod
    def of(cls, key: KeyRecord) -> Caller:
        """The caller holding ``key``."""
        return cls(
            key.tenant, key.key_id, key.tiers, key.policies, key.budget, key.rpm, key.tpm, key.admin
        )

    @classmethod
    def unlimited(cls, tenant: str | None) -> Caller:
        """A caller without a virtual key: the shared key's holder, or local development."""
        return cls(tenant, None, None, None, None, None, None, False)

    def permit(self, policy: str, tier: str | None, tier_model: str | None = None) -> None:
        """Refuse (403) a policy, or a tier asked for by its model's name, that the key may
        not use, naming what it may."""
        if self.policies is not None and policy not in self.policies:
            allowed = ", ".join(f"cascade/{name}" for name in sorted(self.policies))
            raise BadRequestError(
                403,
                f"this key may not use policy {policy!r}; it may use: {allowed}",
                param="model",
                code="model_not_allowed",
            )
        if tier is not None and self.tiers is not None and tier not in self.tiers:
            asked = f"model {tier_model!r} (tier {tier!r})" if tier_model else f"tier {tier!r}"
            raise BadRequestError(
                403,
                f"this key may not use {asked}; it may use the tiers "
                f"{', '.join(sorted(self.tiers))}, or 'cascade' to route among them",
                param="model",
                code="model_not_allowed",
            )


class KeyCache:
    """The virtual keys as every request sees them: read at start, polled, checked in memory."""

    def __init__(self, settings: ServerSettings) -> None:
        self._url = settings.database_url if settings.virtual_keys else None
        self._shared = tuple(key.encode() for key in settings.api_keys)
        self._pepper = settings.key_pepper
        self._keys: dict[str, KeyRecord] = {}
        self._seen: datetime | None = None
        self._engine: AsyncEngine | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._failing = False
        self.loaded = self._url is None
        """Whether the key table has been read (always, when there is none to read)."""

    @property
    def required(self) -> bool:
        """Whether virtual keys exist, so that every ``/v1`` request must bring a key."""
        return bool(self._keys)

    async def start(self) -> None:
        """Read every key, then poll for changes (an unreachable database is logged, retried)."""
        if self._url is None:
            return
        self._engine = create_engine(self._url)
        await self._refresh_logged()
        self._task = asyncio.create_task(self._poll())

    async def aclose(self) -> None:
        """Stop polling and close the connection. A poll under way is let finish (its
        database timeouts bound it): cancelled mid-connect, asyncpg leaves its connection
        unclosed."""
        self._closing.set()
        if self._task is not None:
            await asyncio.wait([self._task])
        if self._engine is not None:
            await self._engine.dispose()

    async def refresh(self, *, full: bool = False) -> None:
        """Read the keys changed since the newest seen (``full``: all of them)."""
        assert self._engine is not None
        since = None if full or self._seen is None else self._seen - LOOKBACK
        rows = await changed_since(self._engine, since)
        for row in rows:
            self._keys[row.key_id] = row
        if rows:
            # Never past our own clock: a row stamped by a clock ahead is read again until then.
            newest = min(rows[-1].updated_at, datetime.now(UTC))
            self._seen = newest if self._seen is None else max(self._seen, newest)
        self.loaded = True

    async def _refresh_logged(self, *, full: bool = False) -> None:
        try:
            await self.refresh(full=full)
        except (SQLAlchemyError, OSError) as exc:
            if not self._failing:
                log.warning(
                    "keys.unreadable",
                    error=first_line(exc),
                    keys=f"keeping the {len(self._keys)} keys last read"
                    if self.loaded
                    else "refusing /v1 requests until the key table can be read",
                )
            self._failing = True
        else:
            if self._failing:
                log.info("keys.readable", keys=len(self._keys))
            self._failing = False

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        reloaded = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._closing.wait(), POLL_INTERVAL_S)
                return  # closing
            except TimeoutError:
                pass
            full = loop.time() - reloaded >= FULL_RELOAD_S
            await self._refresh_logged(full=full)
            if full:
                reloaded = loop.time()

    def authorize(self, authorization: str | None, tenant: str | None) -> Caller:
        """The caller of a ``/v1`` request, from its ``Authorization`` and ``x-cascade-tenant``
        headers; raises :class:`BadRequestError` (401, 403 or 503) when it may not pass."""
        token = _bearer(authorization)
        if token.startswith(PREFIX):
            return self._virtual(token, tenant)
        if self._shared:
            if not _matches_shared(token.encode("latin-1", "replace"), self._shared):
                raise _unauthorized("missing or wrong API key (send 'Authorization: Bearer <key>')")
            if self.required and tenant:
                raise _other_tenant("the shared key has no tenant", tenant)
            return Caller.unlimited(None if self.required else tenant)
        if not self.loaded:
            raise _keys_unavailable()
        if self.required:
            raise _unauthorized("this proxy needs an API key: send 'Authorization: Bearer csk_…'")
        return Caller.unlimited(tenant)

    def authorize_admin(self, authorization: str | None) -> None:
        """Let an admin key through to ``/metrics`` and admin routes; while no virtual key
        exists (local development, or a shared key only) they are open."""
        if self.loaded and not self.required:
            return
        caller = self.authorize(authorization, None)
        if not caller.admin:
            raise BadRequestError(
                403,
                "this route needs an admin key (cascade keys create --admin)",
                code="admin_key_required",
            )

    def _virtual(self, token: str, tenant: str | None) -> Caller:
        if not self.loaded:
            raise _keys_unavailable()
        parts = split_key(token)
        key = self._keys.get(parts[0]) if parts else None
        # The hash is computed whether or not the id is known: the time taken says nothing.
        digest = hash_secret(parts[1] if parts else "", self._pepper)
        if not hmac.compare_digest(digest, key.hash if key else _DUMMY_HASH) or key is None:
            raise _unauthorized("unknown or wrong API key")
        now = datetime.now(UTC)
        if key.revoked_at is not None:
            raise _unauthorized(f"API key {key.key_id} was revoked")
        if key.expires_at is not None and now >= key.expires_at:
            raise _unauthorized(f"API key {key.key_id} expired at {key.expires_at:%Y-%m-%d %H:%M}")
        if tenant and tenant != key.tenant:
            raise _other_tenant(f"this key belongs to tenant {key.tenant!r}", tenant)
        return Caller.of(key)


def _bearer(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer <token>`` (the scheme in any case, RFC 7235)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _matches_shared(token: bytes, keys: tuple[bytes, ...]) -> bool:
    matched = False
    for key in keys:  # every key compared in constant time: the time says nothing
        matched |= hmac.compare_digest(token, key)
    return bool(token) and matched


def _unauthorized(message: str) -> BadRequestError:
    return BadRequestError(401, message, code="invalid_api_key")


def _other_tenant(whose: str, tenant: str) -> BadRequestError:
    return BadRequestError(
        403,
        f"{whose}; x-cascade-tenant {tenant[:60]!r} is not honoured when keys are in use "
        "(leave it out: the key names the tenant)",
        code="tenant_mismatch",
    )


def _keys_unavailable() -> BadRequestError:
    return BadRequestError(
        503,
        "the proxy cannot read its API keys from the database yet; retry shortly",
        code="keys_unavailable",
    )
