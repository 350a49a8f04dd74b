"""The virtual-key reads a serving worker makes on a Postgres ledger, on asyncpg: the lookup
by digest (a cache miss on the request path) and the key-change poll (gateway/keys/sync.py).

Same statements as KeysRepository's (gateway/ledger/keys_repository.py), which SQLite ledgers,
the admin API and the CLI keep using; the records are the same (gateway/ledger/keys_records.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Protocol

from gateway.ledger.keys_records import KeyChange, VirtualKey, key_of, utc
from gateway.ledger.pg import PgPool

_COLUMNS = (
    "id, name, team, key_hash, key_prefix, routes, rpm, tpm, max_concurrency, budget_usd,"
    " soft_budget_ratio, expires_at, tags, created_at, updated_at, revoked_at"
)


class KeyReads(Protocol):
    """What KeySync and the KeyStore's source read; KeysRepository and PgKeyReads both are."""

    async def ready(self) -> bool: ...

    async def by_hash(self, key_hash: str) -> VirtualKey | None: ...

    async def changes_since(self, since: datetime | None) -> list[KeyChange]: ...

    async def latest_change(self) -> datetime | None: ...


class PgKeyReads:
    def __init__(self, pool: PgPool) -> None:
        self._pool = pool

    async def ready(self) -> bool:
        """False when `api_keys` does not exist yet (`farebox migrate` has not run)."""
        return not await self._pool.missing_tables(["api_keys"])

    async def by_hash(self, key_hash: str) -> VirtualKey | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
        )
        return None if row is None else key_of(SimpleNamespace(**dict(row)))

    async def changes_since(self, since: datetime | None) -> list[KeyChange]:
        """Keys changed after `since` (all of them when None), oldest change first."""
        if since is None:
            rows = await self._pool.fetch(
                "SELECT id, key_hash, updated_at FROM api_keys ORDER BY updated_at"
            )
        else:
            rows = await self._pool.fetch(
                "SELECT id, key_hash, updated_at FROM api_keys WHERE updated_at > $1"
                " ORDER BY updated_at",
                since.astimezone(UTC),
            )
        return [KeyChange(r[0], r[1], utc(r[2]) or r[2]) for r in rows]

    async def latest_change(self) -> datetime | None:
        return utc(await self._pool.fetchval("SELECT max(updated_at) FROM api_keys"))
