"""Bearer-key authentication: static keys (FAREBOX_MASTER_KEY, the YAML) and virtual keys.

Only SHA-256 digests are kept in memory, so a heap dump or an error message never shows a key.
Lookups are two-step so the hot path stays synchronous: `cached()` answers from memory
(static keys, and virtual keys seen recently); only a `MISS` awaits `resolve()`, which asks
the database (virtual keys live in Postgres).

Virtual-key cache semantics:
- a known key is served from memory for `ttl_s`; after that it is refreshed in the
  background (one lookup per digest) while the stale entry keeps answering, so no request
  waits on the database for a key it knew — neither on a slow or hung one nor on an outage
  (the entry was valid, and nothing invalidated it). A revocation still wins: it drops the
  entry (pub/sub or the database poll, gateway/keys/sync.py), and a dropped entry is never
  served stale;
- an unknown (or revoked) digest is remembered for `negative_ttl_s`, in a bounded FIFO, so a
  flood of made-up keys costs at most one lookup per digest per window and fixed memory;
- concurrent misses on one digest share one lookup, and at most `lookup_concurrency` lookups
  run at once (beyond `max_pending` distinct digests waiting, callers get a 503 at once); a
  key nobody knows is answered (or refused with 503) within `lookup_timeout_s`, queueing
  for a lookup slot included;
- `invalidate*()` drop entries when a key changes (revoke, rotate, update); key_sync calls
  them from Redis pub/sub and from its database poll, on every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Protocol

from gateway.errors import AuthenticationFailed, Unavailable
from gateway.ledger.db_errors import database_errors

log = logging.getLogger("farebox.auth")


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
# After a failed lookup, unseen keys get a 503 without asking the database for this long.
_DOWN_S = 1.0


class _RecentlyDown(Exception):
    pass


def _lookup_failures() -> tuple[type[Exception], ...]:
    """Why a key lookup can fail without it being a bug: stale-if-error, or 503."""
    return (_RecentlyDown, *database_errors())


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


class KeySource(Protocol):
    """Where virtual keys live. `principal` answers None for an unknown or revoked key and
    raises when it cannot tell (database down)."""

    async def principal(self, key_hash: str) -> Principal | None: ...


def key_expired() -> AuthenticationFailed:
    return AuthenticationFailed("This API key has expired.", code="key_expired")


def keys_unavailable() -> Unavailable:
    return Unavailable(
        "API keys cannot be checked right now (the key database is unreachable); "
        "retry shortly. Keys used recently keep working.",
        code="key_store_unavailable",
        headers=[(b"retry-after", b"1")],
    )


def keys_busy() -> Unavailable:
    return Unavailable(
        "Too many unrecognised API keys are being checked at once; retry shortly.",
        code="key_store_busy",
        headers=[(b"retry-after", b"1")],
    )


class KeyStore:
    __slots__ = (
        "_by_digest",
        "_clock",
        "_down_until",
        "_gate",
        "_generation",
        "_inflight",
        "_known",
        "_lookup_timeout_s",
        "_max_entries",
        "_max_negative",
        "_max_pending",
        "_negative_ttl_s",
        "_source",
        "_ttl_s",
        "_unknown",
        "_wall",
        "disabled",
    )

    def __init__(
        self,
        keys: Iterable[tuple[str | Principal, str]],
        *,
        disabled: bool = False,
        source: KeySource | None = None,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
        max_negative: int = 10_000,
        lookup_concurrency: int = 4,
        max_pending: int = 1024,
        lookup_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.disabled = disabled
        self._by_digest = {
            digest(key): who if isinstance(who, Principal) else Principal(who) for who, key in keys
        }
        self._source = source
        self._ttl_s, self._negative_ttl_s = ttl_s, negative_ttl_s
        self._max_entries, self._max_negative = max_entries, max_negative
        self._max_pending = max_pending
        self._lookup_timeout_s = lookup_timeout_s
        self._clock, self._wall = clock, wall_clock
        # digest -> (principal, fresh until); insertion order is age order (FIFO eviction).
        self._known: dict[bytes, tuple[Principal, float]] = {}
        # digest -> remembered as unknown until.
        self._unknown: dict[bytes, float] = {}
        # digest -> the lookup running for it, and the generation it started in.
        self._inflight: dict[bytes, tuple[asyncio.Future[Principal | None], int]] = {}
        # Bumped by every invalidation: a lookup that raced one must not cache what it read.
        self._generation = 0
        self._gate = asyncio.Semaphore(lookup_concurrency)
        self._down_until = 0.0

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def virtual(self) -> bool:
        """True when unseen keys are looked up in the key database."""
        return self._source is not None

    def attach(self, source: KeySource | None) -> None:
        self._source = source

    def cache_sizes(self) -> tuple[int, int]:
        """(known, unknown) virtual-key entries held in memory."""
        return len(self._known), len(self._unknown)

    def cached(self, token: bytes) -> Principal | _Miss | None:
        """From memory only. Dict lookup by digest rather than comparing secrets directly,
        so lookup time does not depend on how much of a guessed key matches."""
        d = digest(token)
        found = self._by_digest.get(d)
        if found is not None or self._source is None:
            return found
        entry = self._known.get(d)
        now = self._clock()
        if entry is not None:
            if entry[1] <= now and not self._refresh(d):
                return MISS
            return self._unexpired(entry[0])
        until = self._unknown.get(d)
        if until is not None and until > now:
            return None
        return MISS

    async def resolve(self, token: bytes) -> Principal | None:
        """The principal for `token` when `cached()` said MISS (asks the key database)."""
        found = self.cached(token)
        if not isinstance(found, _Miss):
            return found
        d = digest(token)
        flight = self._inflight.get(d)
        # A lookup that started before an invalidation may have read the key as it was:
        # a caller arriving after it (say, after a revocation) waits for a fresh one.
        if flight is None or flight[1] != self._generation:
            if len(self._inflight) >= self._max_pending:
                raise keys_busy()
            pending = self._start_lookup(d)
        else:
            pending = flight[0]
        # Shielded: a client hanging up must not cancel the lookup others are waiting on.
        principal = await asyncio.shield(pending)
        return None if principal is None else self._unexpired(principal)

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

    def invalidate(self, key_hash: str | bytes) -> None:
        """Forget one digest (hex as stored in the database, or raw bytes)."""
        d = bytes.fromhex(key_hash) if isinstance(key_hash, str) else key_hash
        self._generation += 1
        self._known.pop(d, None)
        self._unknown.pop(d, None)

    def invalidate_key(self, key_id: str) -> None:
        """Forget every cached secret of one key (a rotation leaves the old digest behind)."""
        self._generation += 1
        for d in [d for d, (p, _) in self._known.items() if p.key_id == key_id]:
            del self._known[d]

    def invalidate_all(self) -> None:
        self._generation += 1
        self._known.clear()
        self._unknown.clear()

    def _unexpired(self, principal: Principal) -> Principal:
        if principal.expires_at is not None and principal.expires_at <= self._wall():
            raise key_expired()
        return principal

    def _start_lookup(self, d: bytes) -> asyncio.Future[Principal | None]:
        pending = asyncio.ensure_future(self._lookup(d))
        self._inflight[d] = (pending, self._generation)
        pending.add_done_callback(lambda done: self._settled(d, done))
        return pending

    def _refresh(self, d: bytes) -> bool:
        """Refresh a stale entry in the background; False when that cannot start (no event
        loop, or too many lookups pending), and the caller must resolve it itself."""
        flight = self._inflight.get(d)
        if flight is not None and flight[1] == self._generation:
            return True
        if len(self._inflight) >= self._max_pending:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._start_lookup(d)
        return True

    def _settled(self, d: bytes, done: asyncio.Future[Principal | None]) -> None:
        flight = self._inflight.get(d)
        if flight is not None and flight[0] is done:
            del self._inflight[d]
        if not done.cancelled():
            done.exception()  # retrieved here, so an unawaited failure is not logged as lost

    async def _lookup(self, d: bytes) -> Principal | None:
        assert self._source is not None
        generation = self._generation
        try:
            # The deadline covers the wait for a lookup slot too: slots held by lookups
            # hanging on a frozen database must not stretch an unknown key's answer.
            async with asyncio.timeout(self._lookup_timeout_s), self._gate:
                if self._clock() < self._down_until:
                    # Failed a moment ago: answer at once instead of queueing every unseen
                    # key behind a connect timeout.
                    raise _RecentlyDown
                principal = await self._source.principal(d.hex())
        except _lookup_failures() as exc:  # database trouble: stale-if-error, else 503
            if not isinstance(exc, _RecentlyDown):
                log.warning("key lookup failed (%s: %s)", type(exc).__name__, exc)
                self._down_until = self._clock() + _DOWN_S
            stale = self._known.get(d)
            if stale is not None and generation == self._generation:
                # Keep serving a key that was valid, and do not ask again at once.
                self._known[d] = (stale[0], self._clock() + self._negative_ttl_s)
                return stale[0]
            raise keys_unavailable() from None
        if generation == self._generation:
            self._remember(d, principal)
        return principal

    def _remember(self, d: bytes, principal: Principal | None) -> None:
        now = self._clock()
        if principal is None:
            self._known.pop(d, None)
            self._unknown.pop(d, None)  # re-inserted at the young end
            self._unknown[d] = now + self._negative_ttl_s
            while len(self._unknown) > self._max_negative:
                del self._unknown[next(iter(self._unknown))]
            return
        self._unknown.pop(d, None)
        self._known.pop(d, None)
        self._known[d] = (principal, now + self._ttl_s)
        while len(self._known) > self._max_entries:
            del self._known[next(iter(self._known))]
