"""Bearer-key authentication: static keys (FAREBOX_MASTER_KEY, the YAML) and virtual keys.

Only SHA-256 digests are kept in memory, so a heap dump or an error message never shows a key.
Lookups are two-step so the hot path stays synchronous: `cached()` answers from memory
(static keys, and virtual keys seen recently); only a `MISS` awaits `resolve()`, which asks
the database (virtual keys live in Postgres).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what they may spend. `key_name` is what the ledger records."""

    key_name: str
    # Virtual keys only: the stable id (survives rotation) and its limits.
    key_id: str | None = None
    team: str | None = None
    # Route names this key may call; None = every route.
    routes: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    # Monthly budget in USD and the share of it at which an alert fires.
    budget_usd: Decimal | None = None
    soft_budget_ratio: float | None = None
    # Unix seconds; None = never.
    expires_at: float | None = None
    # Free-form metadata that flows into the ledger (workload, segment, …).
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def limited(self) -> bool:
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.max_concurrency is not None
            or self.budget_usd is not None
        )


ANONYMOUS = Principal(key_name="anonymous")


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


# `cached()` could not answer from memory: await `resolve()`.
MISS: Final = _Miss()


def digest(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def bearer_token(authorization: bytes | None, api_key: bytes | None) -> bytes | None:
    """The key from `Authorization: Bearer …` (OpenAI SDKs) or `x-api-key` (Anthropic)."""
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            return rest.strip() or None
        return None
    if api_key is not None:
        return api_key.strip() or None
    return None


class KeyStore:
    __slots__ = ("_by_digest", "disabled")

    def __init__(self, keys: Iterable[tuple[str, str]], *, disabled: bool = False) -> None:
        self.disabled = disabled
        self._by_digest = {digest(key): Principal(name) for name, key in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def cached(self, token: bytes) -> Principal | None | _Miss:
        """From memory only. Dict lookup by digest rather than comparing secrets directly,
        so lookup time does not depend on how much of a guessed key matches."""
        return self._by_digest.get(digest(token))

    async def resolve(self, token: bytes) -> Principal | None:
        """The principal for `token` when `cached()` said MISS (asks the key database)."""
        found = self.cached(token)
        return None if isinstance(found, _Miss) else found

    def authenticate(
        self, authorization: bytes | None, api_key: bytes | None = None
    ) -> Principal | None:
        """Static and cached keys only (no database): for callers that cannot await."""
        if self.disabled:
            return ANONYMOUS
        token = bearer_token(authorization, api_key)
        if token is None:
            return None
        found = self.cached(token)
        return None if isinstance(found, _Miss) else found
