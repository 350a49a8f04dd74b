"""Managing virtual keys: what the admin API and `farebox keys` share.

Every change commits with its audit row (see ledger/keys_repository.py), then the hashes it
touched are announced so every replica drops them from its cache: by the gateway's KeySync
(local at once, others through Redis) or, from the CLI, by a one-shot Redis publish. If the
announcement is lost, the replicas' poll of `api_keys.updated_at` still catches the change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway.ledger.db_errors import database_errors
from gateway.ledger.keys_records import AuditEntry, KeyNotFound, KeyRevoked, VirtualKey

if TYPE_CHECKING:
    from gateway.ledger.keys_repository import KeysRepository

log = logging.getLogger("farebox.keys")
_T = TypeVar("_T")

__all__ = [
    "AuditEntry",
    "KeyAdmin",
    "KeyDatabaseError",
    "KeyNotFound",
    "KeyRevoked",
    "Notifier",
    "VirtualKey",
    "audit_view",
    "key_view",
]


class KeyDatabaseError(Exception):
    """The key database could not be reached or refused the statement."""


class Notifier(Protocol):
    async def key_changed(self, key_id: str, hashes: Sequence[str]) -> None: ...


class KeyAdmin:
    def __init__(
        self,
        repository: KeysRepository | None,
        notifier: Notifier | None,
        *,
        actor: str,
        open_repository: Callable[[], KeysRepository] | None = None,
    ) -> None:
        """`repository`, or (None) `open_repository` to make it on first use: a serving
        worker on Postgres imports SQLAlchemy only when the admin API is first used."""
        if repository is None and open_repository is None:
            raise ValueError("KeyAdmin needs a repository or a way to open one")
        self._repository = repository
        self._open_repository = open_repository
        self._notifier = notifier
        self.actor = actor

    @property
    def repository(self) -> KeysRepository:
        if self._repository is None:
            assert self._open_repository is not None
            self._repository = self._open_repository()
        return self._repository

    async def create(
        self, fields: Mapping[str, Any], client: str | None = None
    ) -> tuple[VirtualKey, str]:
        key, secret = await self._db(
            self.repository.create(fields, actor=self.actor, client=client)
        )
        # A guessed-then-created secret could sit in some replica's negative cache.
        await self._announce(key.id, [key.key_hash])
        return key, secret

    async def update(
        self, key_id: str, changes: Mapping[str, Any], client: str | None = None
    ) -> VirtualKey:
        key = await self._db(
            self.repository.update(key_id, changes, actor=self.actor, client=client)
        )
        await self._announce(key.id, [key.key_hash])
        return key

    async def revoke(self, key_id: str, client: str | None = None) -> VirtualKey:
        key = await self._db(self.repository.revoke(key_id, actor=self.actor, client=client))
        await self._announce(key.id, [key.key_hash])
        return key

    async def rotate(self, key_id: str, client: str | None = None) -> tuple[VirtualKey, str]:
        key, secret, old_hash = await self._db(
            self.repository.rotate(key_id, actor=self.actor, client=client)
        )
        await self._announce(key.id, [old_hash, key.key_hash])
        return key, secret

    async def get(self, key_id: str) -> VirtualKey:
        key = await self._db(self.repository.get(key_id))
        if key is None:
            raise KeyNotFound(key_id)
        return key

    async def all(self, *, include_revoked: bool = True) -> list[VirtualKey]:
        return await self._db(self.repository.all(include_revoked=include_revoked))

    async def recent_audit(self, limit: int = 100) -> list[AuditEntry]:
        return await self._db(self.repository.recent_audit(limit))

    async def _announce(self, key_id: str, hashes: Sequence[str]) -> None:
        if self._notifier is not None:
            await self._notifier.key_changed(key_id, hashes)

    @staticmethod
    async def _db(work: Awaitable[_T]) -> _T:
        try:
            return await work
        except (KeyNotFound, KeyRevoked, ValueError):
            raise
        except database_errors() as exc:  # driver, pool or SQL error: the caller reports it cleanly
            log.warning("key database error (%s: %s)", type(exc).__name__, exc)
            raise KeyDatabaseError(f"{type(exc).__name__}: {exc}") from exc


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def key_view(key: VirtualKey, now: datetime | None = None) -> dict[str, Any]:
    """A key as shown to operators: the display prefix, never the secret or its hash."""
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "team": key.team,
        "key_prefix": key.key_prefix,
        "status": key.status(now or datetime.now(UTC)),
        "routes": key.routes,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_concurrency": key.max_concurrency,
        "budget_usd": float(key.budget_usd) if key.budget_usd is not None else None,
        "soft_budget_ratio": key.soft_budget_ratio,
        "expires_at": _iso(key.expires_at),
        "tags": key.tags,
        "created_at": _iso(key.created_at),
        "updated_at": _iso(key.updated_at),
        "revoked_at": _iso(key.revoked_at),
    }


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "audit_entry",
        "at": _iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
        "client": entry.client,
    }
