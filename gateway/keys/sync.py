"""Keep every replica's virtual-key cache honest: revocations, rotations and edits reach all of
them within about a second.

Two paths, either sufficient on its own:

- Redis pub/sub, channel `<prefix>:keys`, JSON {id, hashes, origin}: whoever changes a key (the
  admin API on any replica, or `farebox keys` from a laptop) publishes its old and new hashes;
  every replica drops those entries as the message arrives (milliseconds). A lost connection
  is re-established by a supervisor with jittered backoff, as in gateway/core/breakers.py.
- A poll of `api_keys.updated_at` every `poll_s`, which needs no Redis: changed rows since the
  watermark are invalidated by hash and by key id (a rotation leaves the old digest cached,
  and only the id links it to the row). The query reaches back `overlap_s` behind the
  watermark so a transaction that committed late, or a writer whose clock lags by less than
  that, is still seen; rows already handled are remembered by (id, updated_at) and skipped.

Nothing here is awaited by a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson

from gateway.keys.admin import KeyAdmin
from gateway.keys.auth import KeyStore, Principal
from gateway.ledger.keys_reads import KeyReads, PgKeyReads
from gateway.ledger.keys_records import VirtualKey
from gateway.ledger.serving_ledger import ServingLedger
from gateway.runtime.background import Background, within
from gateway.runtime.redis import RedisClient, Sharing, publish, redis_client, subscriber
from gateway.runtime.redis_health import REDIS_ERRORS

if TYPE_CHECKING:
    from gateway.ledger.keys_repository import KeysRepository
    from gateway.ledger.repository import LedgerRepository

log = logging.getLogger("farebox.keys")

_V = TypeVar("_V")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def principal_of(key: VirtualKey) -> Principal:
    return Principal(
        # The id, not the name: it is unique and survives rotation, so spend and limits
        # stay attached to the key (names are labels and may repeat).
        key_name=key.id,
        key_id=key.id,
        team=key.team,
        routes=frozenset(key.routes) if key.routes is not None else None,
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrency=key.max_concurrency,
        budget_usd=key.budget_usd,
        soft_budget_ratio=key.soft_budget_ratio,
        expires_at=key.expires_at.timestamp() if key.expires_at is not None else None,
        tags=dict(key.tags),
    )


class RepositoryKeySource:
    """The KeyStore's view of the `api_keys` table: revoked keys do not exist."""

    def __init__(self, repository: KeyReads) -> None:
        self._repository = repository

    async def principal(self, key_hash: str) -> Principal | None:
        key = await self._repository.by_hash(key_hash)
        if key is None or key.revoked_at is not None:
            return None
        return principal_of(key)


def _message(key_id: str, hashes: Sequence[str], origin: str) -> bytes:
    return orjson.dumps({"id": key_id, "hashes": list(hashes), "origin": origin})


class Publisher:
    """For processes that do not serve (the CLI). Connect before changing the database, so
    the announcement leaves the moment the change commits rather than after a connect."""

    def __init__(self, redis_url: str, *, prefix: str = "farebox") -> None:
        self._redis = redis_client(redis_url)
        self._channel = f"{prefix}:keys"
        self.reachable = False

    async def connect(self) -> bool:
        try:
            await self._redis.ping()
            self.reachable = True
        except REDIS_ERRORS as exc:  # Redis away (a timeout is an OSError): replicas poll
            log.debug("Redis unreachable for key changes (%s: %s)", type(exc).__name__, exc)
        return self.reachable

    async def key_changed(self, key_id: str, hashes: Sequence[str]) -> None:
        """Raises when Redis could not be reached (the caller says so; replicas poll)."""
        await publish(self._redis, self._channel, _message(key_id, hashes, "cli"))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()


class KeySync:
    def __init__(
        self,
        store: KeyStore,
        repository: KeyReads,
        redis_url: str | None,
        *,
        prefix: str = "farebox",
        poll_s: float = 1.0,
        overlap_s: float = 10.0,
        op_timeout_s: float = 1.0,
        reconnect_max_s: float = 2.0,
        heartbeat_s: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._repository = repository
        self._source = RepositoryKeySource(repository)
        self._redis_url = redis_url
        self._channel = f"{prefix}:keys"
        self._poll_s, self._overlap = poll_s, timedelta(seconds=overlap_s)
        self._op_timeout_s = op_timeout_s
        self._heartbeat_s = heartbeat_s
        self._wall = wall_clock
        self.replica_id = uuid.uuid4().hex
        self._redis: RedisClient | None = None
        self._tasks = Background()
        self._watermark: datetime | None = None
        self._handled: dict[str, datetime] = {}  # key id -> the updated_at last invalidated
        self._sharing = Sharing(
            log,
            component="key_sync",
            up="key revocations shared through Redis",
            down="Redis unreachable for key changes (%s); polling the database",
            reconnect_max_s=reconnect_max_s,
        )
        self._closing = False
        self._poll_ok: bool | None = None

    @property
    def shared_ok(self) -> bool:
        """True while subscribed to key changes through Redis."""
        return self._sharing.ok

    async def start(self) -> None:
        self._spawn(self._poll_loop())
        if self._redis_url is None:
            return
        self._redis = redis_client(self._redis_url, timeout_s=self._op_timeout_s, retry_once=True)
        self._spawn(self._sharing.supervise(self._follow, self._sharing.lost))
        with contextlib.suppress(TimeoutError):
            await self._within(self._sharing.attempted.wait(), 3 * self._op_timeout_s)

    async def close(self) -> None:
        self._closing = True
        await self._tasks.cancel()
        self._sharing.ok = False
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def key_changed(self, key_id: str, hashes: Sequence[str]) -> None:
        """Called after a change committed here: forget it locally at once, then tell the
        other replicas. A failed publish is only logged: their poll catches up."""
        self._forget(key_id, hashes)
        if self._redis is None:
            return
        try:
            await self._within(
                publish(self._redis, self._channel, _message(key_id, hashes, self.replica_id))
            )
        except REDIS_ERRORS as exc:  # Redis away or slower than its timeout: replicas poll
            log.warning("key change not published (%s: %s); replicas poll", type(exc).__name__, exc)

    def _forget(self, key_id: str, hashes: Sequence[str]) -> None:
        for key_hash in hashes:
            with contextlib.suppress(ValueError):  # a malformed hash names nothing cached
                self._store.invalidate(key_hash)
        self._store.invalidate_key(key_id)

    # --- the poll -----------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self._within(self.poll_once(), max(5.0, 5 * self._poll_s))
                self._report_poll(True, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database down: retry next tick; cached keys keep working
                self._report_poll(False, exc)
            await asyncio.sleep(self._poll_s)

    async def poll_once(self) -> int:
        """Invalidate keys changed since the last poll; returns how many were."""
        if self._watermark is None:
            if not await self._repository.ready():
                if self._store.virtual:
                    log.error("table api_keys missing: run `farebox migrate`; static keys only")
                    # Unknown keys get a clean 401 instead of a 503 per miss meanwhile.
                    self._store.attach(None)
                return 0
            self._store.attach(self._source)
            latest = await self._repository.latest_change()
            self._watermark = min(latest or EPOCH, self._now())
            # Anything cached before the first successful poll was never checked against it.
            self._store.invalidate_all()
            return 0
        since = self._watermark - self._overlap
        changed = 0
        for change in await self._repository.changes_since(since):
            if self._handled.get(change.id) == change.updated_at:
                continue
            self._handled[change.id] = change.updated_at
            self._forget(change.id, [change.key_hash])
            changed += 1
            # Capped at our own clock, so one writer with a fast clock cannot push the
            # watermark past changes that others stamp correctly.
            self._watermark = max(self._watermark, min(change.updated_at, self._now()))
        horizon = self._watermark - self._overlap
        for key_id in [k for k, at in self._handled.items() if at < horizon]:
            del self._handled[key_id]
        return changed

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall(), UTC)

    def _report_poll(self, ok: bool, exc: BaseException | None) -> None:
        before, self._poll_ok = self._poll_ok, ok
        if before == ok:
            return
        if not ok:
            reason = f"{type(exc).__name__}: {exc}" if exc is not None else "?"
            log.warning("key change poll failing (%s); cached keys keep working", reason)
        elif before is not None:
            log.info("key change poll recovered")

    # --- Redis --------------------------------------------------------------------------------

    async def _follow(self) -> None:
        assert self._redis is not None
        pubsub = await self._within(
            subscriber(self._redis, self._channel, ignore_subscribe_messages=True)
        )
        connected = False
        try:
            await self._within(pubsub.subscribe(self._channel))
            connected = self._sharing.connected = True
            self._sharing.set(True)
            self._sharing.attempted.set()
            next_ping = time.monotonic() + self._heartbeat_s
            while True:
                message = await self._within(
                    pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=min(0.25, self._heartbeat_s)
                    ),
                    self._op_timeout_s + self._heartbeat_s,
                )
                if message is not None and message.get("type") == "message":
                    self._on_message(message["data"])
                if time.monotonic() >= next_ping:
                    # An idle subscription cannot tell a dead Redis from a quiet one.
                    await self._within(self._redis.ping())
                    next_ping = time.monotonic() + self._heartbeat_s
        finally:
            with contextlib.suppress(Exception):
                closing = pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
                await self._within(closing)
            if connected and not self._closing:
                self._sharing.set(False, ConnectionError("subscription ended"))

    def _on_message(self, data: bytes) -> None:
        try:
            msg: dict[str, Any] = orjson.loads(data)
            key_id = str(msg["id"])
            hashes = [str(h) for h in msg.get("hashes") or ()]
        except (ValueError, KeyError, TypeError) as exc:
            log.debug("ignoring malformed key message %r: %s", data, exc)
            return
        self._forget(key_id, hashes)

    async def _within(self, awaitable: Awaitable[_V], seconds: float | None = None) -> _V:
        return await within(awaitable, self._op_timeout_s if seconds is None else seconds)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)


def virtual_keys(
    store: KeyStore,
    reads: KeyReads | None,
    redis_url: str | None,
    *,
    open_admin: Callable[[], KeysRepository] | None = None,
    actor: str = "admin-api",
) -> tuple[KeySync | None, KeyAdmin | None]:
    """Wire virtual keys into a gateway; (None, None) without a database
    (FAREBOX_LEDGER_ENABLED=false), where only static keys exist.

    `reads` serve the lookups and the change poll (asyncpg on a Postgres ledger); the admin
    API's SQLAlchemy repository comes from `open_admin`, called on the first admin call
    (None: `reads` is that repository already, as on SQLite)."""
    if reads is None:
        return None, None
    sync = KeySync(store, reads, redis_url)
    # Attached now, not at the first poll: a key created a moment ago must work at once.
    store.attach(RepositoryKeySource(reads))
    if open_admin is None:
        admin_repository = cast("KeysRepository", reads)
        return sync, KeyAdmin(admin_repository, sync, actor=actor)
    return sync, KeyAdmin(None, sync, actor=actor, open_repository=open_admin)


def virtual_keys_on(
    keys: KeyStore, repository: LedgerRepository | None, redis_url: str | None
) -> tuple[KeySync | None, KeyAdmin | None]:
    """virtual_keys on the ledger repository state.py opened: lookups and the change poll on
    its asyncpg pool (Postgres, a ServingLedger) or its engine (SQLite); the admin API's
    SQLAlchemy repository on first use."""
    from_ledger = cast("ServingLedger | LedgerRepository | None", repository)
    if isinstance(from_ledger, ServingLedger):
        ledger = from_ledger

        def open_admin() -> KeysRepository:
            from gateway.ledger.keys_repository import KeysRepository

            return KeysRepository(ledger.sqlalchemy.engine)

        return virtual_keys(keys, PgKeyReads(ledger.pool), redis_url, open_admin=open_admin)
    if from_ledger is None:
        return None, None
    from gateway.ledger.keys_repository import KeysRepository

    return virtual_keys(keys, KeysRepository(from_ledger.engine), redis_url)
