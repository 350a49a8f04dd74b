"""SQL for virtual API keys and the admin audit trail (tables `api_keys`, `admin_audit`).

Only the SHA-256 of a secret is stored; the secret itself exists once, in the answer to
create or rotate. A key is found by the digest of what the client sent, through a unique
index: the database compares digests, never secrets, so lookup time says nothing about how
much of a guessed key was right.

Every change (revoke and rotate included) bumps `updated_at`, which replicas poll to drop
stale cache entries when Redis is unavailable. Each change and its audit row commit in one
transaction, so the audit trail never claims a change that did not happen, or misses one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.ledger.keys_records import (
    DISPLAY_PREFIX_CHARS,
    EDITABLE,
    SECRET_PREFIX,
    AuditEntry,
    KeyChange,
    KeyNotFound,
    KeyRevoked,
    VirtualKey,
    hash_secret,
    new_secret,
    utc,
)
from gateway.ledger.keys_records import key_of as _key
from gateway.ledger.models import admin_audit_table, api_keys_table

__all__ = [
    "DISPLAY_PREFIX_CHARS",
    "EDITABLE",
    "SECRET_PREFIX",
    "AuditEntry",
    "KeyChange",
    "KeyNotFound",
    "KeyRevoked",
    "KeysRepository",
    "VirtualKey",
    "hash_secret",
    "new_secret",
    "utc",
]

_TICK = timedelta(microseconds=1)


def _jsonable(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Audit detail: what was set, in JSON types (never a secret or a hash)."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        out[name] = value
    return out


class KeysRepository:
    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    @classmethod
    def connect(cls, url: str) -> KeysRepository:
        """A repository with its own small engine (the CLI; the gateway shares the ledger's)."""
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if make_url(url).get_backend_name() != "sqlite":
            kwargs["connect_args"] = {"timeout": 5}
        return cls(create_async_engine(url, **kwargs), owns_engine=True)

    async def close(self) -> None:
        if self._owns_engine:
            await self.engine.dispose()

    async def ready(self) -> bool:
        """False when `api_keys` does not exist yet (`farebox migrate` has not run)."""

        def check(sync_conn: Any) -> bool:
            return bool(inspect(sync_conn).has_table(api_keys_table.name))

        async with self.engine.connect() as conn:
            return await conn.run_sync(check)

    # --- reads --------------------------------------------------------------------------------

    async def by_hash(self, key_hash: str) -> VirtualKey | None:
        stmt = select(api_keys_table).where(api_keys_table.c.key_hash == key_hash)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _key(row)

    async def get(self, key_id: str) -> VirtualKey | None:
        async with self.engine.connect() as conn:
            return await self._get(conn, key_id)

    async def all(self, *, include_revoked: bool = True) -> list[VirtualKey]:
        c = api_keys_table.c
        stmt = select(api_keys_table).order_by(c.created_at, c.id)
        if not include_revoked:
            stmt = stmt.where(c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return [_key(row) for row in (await conn.execute(stmt)).all()]

    async def changes_since(self, since: datetime | None) -> list[KeyChange]:
        """Keys changed after `since` (all of them when None), oldest change first."""
        c = api_keys_table.c
        stmt = select(c.id, c.key_hash, c.updated_at).order_by(c.updated_at)
        if since is not None:
            stmt = stmt.where(c.updated_at > since.astimezone(UTC))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [KeyChange(r.id, r.key_hash, utc(r.updated_at) or r.updated_at) for r in rows]

    async def latest_change(self) -> datetime | None:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.max(api_keys_table.c.updated_at)))
        return utc(value)

    async def recent_audit(self, limit: int = 100) -> list[AuditEntry]:
        c = admin_audit_table.c
        stmt = select(admin_audit_table).order_by(c.at.desc(), c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            AuditEntry(r.id, utc(r.at) or r.at, r.actor, r.action, r.target, r.detail, r.client)
            for r in rows
        ]

    # --- writes -------------------------------------------------------------------------------

    async def create(
        self, fields: Mapping[str, Any], *, actor: str, client: str | None = None
    ) -> tuple[VirtualKey, str]:
        """A new key and its secret (the only time the secret is available)."""
        unknown = set(fields) - EDITABLE
        if unknown:
            raise ValueError(f"not key fields: {', '.join(sorted(unknown))}")
        secret = new_secret()
        now = datetime.now(UTC)
        values: dict[str, Any] = dict.fromkeys(EDITABLE)
        values.update(fields)
        values["tags"] = dict(values["tags"] or {})
        values["expires_at"] = utc(values["expires_at"])
        key_id = f"key_{uuid.uuid4().hex[:24]}"
        values.update(
            id=key_id,
            key_hash=hash_secret(secret),
            key_prefix=secret[:DISPLAY_PREFIX_CHARS],
            created_at=now,
            updated_at=now,
            revoked_at=None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(api_keys_table).values(**values))
            await self._audit(conn, actor, "key.create", key_id, _jsonable(fields), client, now)
            created = await self._get(conn, key_id)
        assert created is not None
        return created, secret

    async def update(
        self, key_id: str, changes: Mapping[str, Any], *, actor: str, client: str | None = None
    ) -> VirtualKey:
        unknown = set(changes) - EDITABLE
        if unknown:
            raise ValueError(f"not key fields: {', '.join(sorted(unknown))}")
        values = dict(changes)
        if "expires_at" in values:
            values["expires_at"] = utc(values["expires_at"])
        if "tags" in values:
            values["tags"] = dict(values["tags"] or {})
        return await self._change(
            key_id, values, "key.update", _jsonable(changes), actor=actor, client=client
        )

    async def revoke(self, key_id: str, *, actor: str, client: str | None = None) -> VirtualKey:
        now = datetime.now(UTC)
        return await self._change(
            key_id, {"revoked_at": now}, "key.revoke", {}, actor=actor, client=client, now=now
        )

    async def rotate(
        self, key_id: str, *, actor: str, client: str | None = None
    ) -> tuple[VirtualKey, str, str]:
        """New secret for the same key (id, limits, budget and spend stay); the old secret
        stops working the moment this commits. Returns (key, new secret, old hash)."""
        secret = new_secret()
        async with self.engine.begin() as conn:
            current = await self._get(conn, key_id, lock=True)
            if current is None:
                raise KeyNotFound(key_id)
            if current.revoked_at is not None:
                raise KeyRevoked(key_id)
            values = {"key_hash": hash_secret(secret), "key_prefix": secret[:DISPLAY_PREFIX_CHARS]}
            rotated = await self._apply(conn, current, values, "key.rotate", {}, actor, client)
        return rotated, secret, current.key_hash

    async def audit(
        self,
        action: str,
        target: str | None,
        detail: Mapping[str, Any],
        *,
        actor: str,
        client: str | None = None,
    ) -> None:
        async with self.engine.begin() as conn:
            await self._audit(conn, actor, action, target, dict(detail), client, datetime.now(UTC))

    # --- helpers ------------------------------------------------------------------------------

    async def _change(
        self,
        key_id: str,
        values: dict[str, Any],
        action: str,
        detail: dict[str, Any],
        *,
        actor: str,
        client: str | None,
        now: datetime | None = None,
    ) -> VirtualKey:
        async with self.engine.begin() as conn:
            current = await self._get(conn, key_id, lock=True)
            if current is None:
                raise KeyNotFound(key_id)
            if current.revoked_at is not None:
                raise KeyRevoked(key_id)
            return await self._apply(conn, current, values, action, detail, actor, client, now)

    async def _apply(
        self,
        conn: AsyncConnection,
        current: VirtualKey,
        values: dict[str, Any],
        action: str,
        detail: dict[str, Any],
        actor: str,
        client: str | None,
        now: datetime | None = None,
    ) -> VirtualKey:
        now = now or datetime.now(UTC)
        # Strictly later than the previous stamp, so a poller that saw the old value always
        # notices this change, even if two changes land within one clock tick.
        stamp = max(now, current.updated_at + _TICK)
        stmt = (
            update(api_keys_table)
            .where(api_keys_table.c.id == current.id)
            .values(**values, updated_at=stamp)
        )
        await conn.execute(stmt)
        await self._audit(conn, actor, action, current.id, detail, client, now)
        changed = await self._get(conn, current.id)
        assert changed is not None
        return changed

    async def _get(
        self, conn: AsyncConnection, key_id: str, *, lock: bool = False
    ) -> VirtualKey | None:
        stmt = select(api_keys_table).where(api_keys_table.c.id == key_id)
        if lock and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        return None if row is None else _key(row)

    async def _audit(
        self,
        conn: AsyncConnection,
        actor: str,
        action: str,
        target: str | None,
        detail: dict[str, Any],
        client: str | None,
        at: datetime,
    ) -> None:
        await conn.execute(
            insert(admin_audit_table).values(
                id=f"aud_{uuid.uuid4().hex}",
                at=at,
                actor=actor[:255],
                action=action,
                target=target,
                detail=detail,
                client=client[:255] if client else None,
            )
        )
