"""Virtual keys as the gateway sees them, without SQLAlchemy: the records, the secret's digest
and the row -> record mapping, shared by the SQLAlchemy repository (admin API, CLI, SQLite
ledgers) and the asyncpg reads a serving worker makes (gateway/ledger/keys_reads.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

SECRET_PREFIX = "fbx-"
# "fbx-" plus four characters: enough to tell keys apart in a list, far too little to guess.
DISPLAY_PREFIX_CHARS = 8

# What PATCH (and `farebox keys update`) may change; id, hash and timestamps are not editable.
EDITABLE = frozenset(
    {
        "name",
        "team",
        "routes",
        "rpm",
        "tpm",
        "max_concurrency",
        "budget_usd",
        "soft_budget_ratio",
        "expires_at",
        "tags",
    }
)


class KeyNotFound(LookupError):
    pass


class KeyRevoked(Exception):
    """The key exists but is revoked: it can no longer be changed or rotated."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str | bytes) -> str:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC. Naive values are UTC: SQLite hands timestamps back without an offset, and a
    naive expiry from a client must not be read as this server's local time."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class VirtualKey:
    id: str
    name: str
    team: str | None
    key_hash: str
    key_prefix: str
    routes: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_usd: Decimal | None
    soft_budget_ratio: float | None
    expires_at: datetime | None
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired(now) else "active"


@dataclass(frozen=True, slots=True)
class KeyChange:
    id: str
    key_hash: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]
    client: str | None


def key_of(row: Any) -> VirtualKey:
    """A VirtualKey from a row with attribute access (SQLAlchemy Row, or a namespace)."""
    budget = row.budget_usd
    return VirtualKey(
        id=row.id,
        name=row.name,
        team=row.team,
        key_hash=row.key_hash,
        key_prefix=row.key_prefix,
        routes=list(row.routes) if row.routes is not None else None,
        rpm=row.rpm,
        tpm=row.tpm,
        max_concurrency=row.max_concurrency,
        # SQLite hands NUMERIC back as float; go through str so 12.34 stays 12.34.
        budget_usd=None if budget is None else Decimal(str(budget)),
        soft_budget_ratio=row.soft_budget_ratio,
        expires_at=utc(row.expires_at),
        tags={str(k): str(v) for k, v in (row.tags or {}).items()},
        created_at=utc(row.created_at) or row.created_at,
        updated_at=utc(row.updated_at) or row.updated_at,
        revoked_at=utc(row.revoked_at),
    )
