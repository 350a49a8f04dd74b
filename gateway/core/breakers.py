"""Circuit breakers per deployment: the registry the attempt loop asks before every attempt.

`allow` and `record` are synchronous dict operations on the pure machine in routing/breaker.py;
they never wait on the network. With a Redis URL, trips and recoveries (not individual
outcomes) are shared across replicas:

- channel `<prefix>:breakers`                  JSON {event: open|close, deployment, opened_at
                                               (epoch), cooldown_s, trips, origin replica}
- key   `{<prefix>:breaker}:<deployment>`      the last open event; PX = remaining cooldown +
                                               probe timeout, so late (re)connects see the trip
                                               (one hash tag: one Redis Cluster slot, one MGET)
- key   `<prefix>:breaker-probe:<deployment>`  the half-open probe lock (SET NX PX probe timeout)

Failure counting stays local. Sharing it would cost a Redis write per request (successes
reset the consecutive count) to save a few failed attempts: every replica sees the same failure
rate, so the first to reach the threshold trips the deployment for all at about the moment a
single gateway would have.

Redis being down is not an error for callers: breakers fall back to the local machine, report
`shared_ok = False`, and a supervisor keeps reconnecting with jittered backoff for as long as
the process lives, then resubscribes and re-reads the open breakers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

import orjson

from gateway.observability import metrics
from gateway.runtime.background import Background, within
from gateway.runtime.redis import RedisClient, Sharing, publish, redis_client, subscriber
from routing import breaker
from routing.breaker import CLOSED, INITIAL, OPEN, BreakerPolicy, BreakerState, BreakerView

log = logging.getLogger("farebox.breakers")

# Deletes the probe lock only if this replica still holds it: after its TTL another replica may
# own it, and a blind DEL would let a third replica probe alongside.
_RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
# Breaker events are rare (trips and recoveries, not requests); a backlog this deep means Redis
# is hanging, and the reconnect sync repairs whatever is dropped.
_OUTBOX_SIZE = 256
# How long a replica that lost the race for the probe lock waits before asking again.
_LOCK_RETRY_S = 0.5

_V = TypeVar("_V")
# Outbox item: the shared record (key value and channel message), release our probe lock?
_Outgoing = tuple[dict[str, Any], bool]


class _LiveView(Mapping[str, _V]):
    """Registry view computed per lookup (always current, never copied); None = left out."""

    __slots__ = ("_of", "_states")

    def __init__(
        self, states: dict[str, BreakerState], of: Callable[[BreakerState], _V | None]
    ) -> None:
        self._states, self._of = states, of

    def __getitem__(self, deployment: str) -> _V:
        value = self._of(self._states[deployment])
        if value is None:
            raise KeyError(deployment)
        return value

    def get(self, deployment: str, default: Any = None) -> Any:
        # Mapping.get goes through __getitem__ and a KeyError for every deployment that
        # never failed; the planner asks once per candidate per request.
        state = self._states.get(deployment)
        if state is None:
            return default
        value = self._of(state)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return (d for d, s in self._states.items() if self._of(s) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Breakers:
    def __init__(
        self,
        policy: BreakerPolicy,
        redis_url: str | None,
        *,
        key_prefix: str = "farebox",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        heartbeat_s: float = 1.0,
        reconnect_max_s: float = 2.0,
        op_timeout_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.replica_id = uuid.uuid4().hex
        self._redis_url = redis_url
        self._clock, self._wall = clock, wall_clock
        self._heartbeat_s = heartbeat_s
        self._op_timeout_s = op_timeout_s
        # Open breakers' records share one hash tag, so on a Redis Cluster they sit in one slot
        # and a reconnecting replica reads them all with one MGET (a multi-key command must
        # stay in a slot). The probe locks are single-key commands and need no tag.
        self._key = f"{{{key_prefix}:breaker}}:"
        self._lock_key = f"{key_prefix}:breaker-probe:"
        self._channel = f"{key_prefix}:breakers"
        self._states: dict[str, BreakerState] = {}
        self._open_view = _LiveView(self._states, lambda s: breaker.is_open(s, clock()))
        self._failure_view = _LiveView(self._states, lambda s: s.last_failure_at)
        self._sharing = Sharing(
            log,
            component="breakers",
            up="circuit breakers shared through Redis",
            down="Redis unreachable (%s); breakers use local state, reconnecting",
            reconnect_max_s=reconnect_max_s,
        )
        self._permits: dict[str, float] = {}  # deployment -> when our probe lock runs out
        self._lock_wait: dict[str, float] = {}  # deployment -> don't ask for the lock before
        self._acquiring: set[str] = set()
        self._unsynced: set[str] = set()  # opened while Redis was away: publish on reconnect
        self._redis: RedisClient | None = None
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue(_OUTBOX_SIZE)
        self._broken = asyncio.Event()
        self._tasks = Background()

    def allow(self, deployment: str) -> bool:
        state = self._states.get(deployment)
        if state is None or state.state == CLOSED:
            return True
        now = self._clock()
        ok, probing = breaker.allow(state, now, self.policy)
        if probing is state:
            return ok
        if self._sharing.ok:
            # The probe is single across replicas: only the holder of the Redis lock sends it.
            # Taking the lock is a round trip, so it happens in the background and this caller
            # moves on to the next target; a later call finds the permit.
            permit = self._permits.pop(deployment, None)
            if permit is None or permit <= now:
                if deployment not in self._acquiring and self._lock_wait.get(deployment, 0) <= now:
                    self._acquiring.add(deployment)
                    self._spawn(self._acquire_probe_lock(deployment))
                return False
        self._states[deployment] = probing
        return True

    def record(self, deployment: str, success: bool) -> None:
        before = self._states.get(deployment, INITIAL)
        after = breaker.record(before, success, self._clock(), self.policy)
        if after is not before:
            self._states[deployment] = after
            self._changed(deployment, before, after)

    def force_open(self, deployment: str) -> None:
        before = self._states.get(deployment, INITIAL)
        after = breaker.force_open(before, self._clock(), self.policy)
        self._states[deployment] = after
        self._changed(deployment, before, after)

    @property
    def shared_ok(self) -> bool:
        """True while trips and recoveries are being shared through Redis."""
        return self._sharing.ok

    def open_map(self) -> Mapping[str, bool]:
        return self._open_view

    def last_failure_map(self) -> Mapping[str, float]:
        """Last failure per deployment in monotonic seconds; never-failed ones are absent."""
        return self._failure_view

    def snapshot(self) -> dict[str, BreakerView]:
        """Per deployment; `last_failure_at` in epoch seconds."""
        now = self._clock()
        offset = self._wall() - now
        return {dep: breaker.view(s, now, offset) for dep, s in self._states.items()}

    async def start(self) -> None:
        """Connect if configured; returns after the first attempt whether or not it worked."""
        if self._redis_url is None or self._redis is not None:
            return
        self._redis = redis_client(self._redis_url, timeout_s=self._op_timeout_s, retry_once=True)
        self._spawn(self._sharing.supervise(self._follow, self._lost))
        self._spawn(self._publish_loop())
        with contextlib.suppress(TimeoutError):
            await self._within(self._sharing.attempted.wait(), 3 * self._op_timeout_s)

    async def close(self) -> None:
        if self._sharing.ok:  # let the last trips and recoveries out, briefly
            with contextlib.suppress(TimeoutError):
                await self._within(self._outbox.join())
        await self._tasks.cancel()
        self._sharing.ok = False
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _changed(self, deployment: str, before: BreakerState, after: BreakerState) -> None:
        # Leaving a cooled-down breaker ends any probe; the release is a no-op if we hold no lock.
        was_probe = before.state != CLOSED
        if after.trips > before.trips:
            log.warning("breaker %s opened (trip %d)", deployment, after.trips)
            metrics.breaker_tripped(deployment)
            self._permits.pop(deployment, None)
            self._emit(deployment, after, "open", was_probe)
        elif before.state != CLOSED and after.state == CLOSED:
            log.info("breaker %s closed after a successful probe", deployment)
            metrics.breaker_changed(deployment, False)
            self._emit(deployment, after, "close", was_probe)

    def _emit(self, deployment: str, state: BreakerState, kind: str, release: bool) -> None:
        if self._redis_url is None:
            return
        if not self._sharing.ok:
            if kind == "open":
                self._unsynced.add(deployment)
            return
        try:
            self._outbox.put_nowait((self._record_of(deployment, state, kind), release))
        except asyncio.QueueFull:
            self._unsynced.add(deployment)

    def _record_of(self, deployment: str, state: BreakerState, kind: str) -> dict[str, Any]:
        now = self._clock()
        opened = now if state.opened_at is None else state.opened_at
        return {
            "event": kind,
            "deployment": deployment,
            "opened_at": self._wall() - (now - opened),
            "cooldown_s": state.cooldown_s,
            "trips": state.trips,
            "origin": self.replica_id,
        }

    async def _publish_loop(self) -> None:
        # One worker: events from this replica reach Redis in the order they happened, so a
        # close can never overtake the open it ends.
        while True:
            record, release = await self._outbox.get()
            try:
                await self._within(self._publish(record, release))
            except Exception as exc:  # any Redis failure: degrade, the sync repairs it
                if record["event"] == "open":
                    self._unsynced.add(record["deployment"])
                self._lost(exc)
            finally:
                self._outbox.task_done()

    async def _publish(self, record: dict[str, Any], release_lock: bool) -> None:
        assert self._redis is not None
        deployment: str = record["deployment"]
        message = orjson.dumps(record)
        async with self._redis.pipeline(transaction=False) as pipe:
            if record["event"] == "open":
                remaining = record["opened_at"] + record["cooldown_s"] - self._wall()
                ttl_ms = max(1, int((remaining + self.policy.probe_timeout_s) * 1000))
                pipe.set(self._key + deployment, message, px=ttl_ms)
            else:
                pipe.delete(self._key + deployment)
            if release_lock:
                pipe.eval(_RELEASE_LUA, 1, self._lock_key + deployment, self.replica_id)
            await pipe.execute()
        # Published after the record is stored, not in the pipeline: a cluster pipeline cannot
        # carry PUBLISH (redis-py refuses it), and a replica that reconnects and reads the
        # records after this message went by finds this one among them. A trip or recovery is
        # rare, so the second round trip costs nothing that matters.
        await publish(self._redis, self._channel, message)

    async def _acquire_probe_lock(self, deployment: str) -> None:
        assert self._redis is not None
        started, got = self._clock(), False
        px = int(self.policy.probe_timeout_s * 1000)
        try:
            lock = self._redis.set(self._lock_key + deployment, self.replica_id, nx=True, px=px)
            got = bool(await self._within(lock))
        except Exception as exc:  # degrade; local probes take over until Redis is back
            self._lost(exc)
        finally:
            self._acquiring.discard(deployment)
        if got:
            self._permits[deployment] = started + self.policy.probe_timeout_s
        else:
            self._lock_wait[deployment] = self._clock() + _LOCK_RETRY_S

    def _on_message(self, data: bytes) -> None:
        try:
            msg: dict[str, Any] = orjson.loads(data)
            deployment = str(msg["deployment"])
            if msg.get("origin") == self.replica_id:
                return
            if msg["event"] == "open":
                self._adopt_open(deployment, msg)
            elif msg["event"] == "close" and deployment in self._states:
                self._states[deployment] = breaker.adopt_close(self._states[deployment])
                metrics.breaker_changed(deployment, False)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.debug("ignoring malformed breaker message %r: %s", data, exc)
            return
        # Whatever probe this replica was lining up is moot once another replica decided.
        self._permits.pop(deployment, None)
        self._lock_wait.pop(deployment, None)

    def _adopt_open(self, deployment: str, record: Mapping[str, Any]) -> None:
        now = self._clock()
        # Shared timestamps are epoch (monotonic clocks differ per host); convert to ours.
        opened_at = now - (self._wall() - float(record["opened_at"]))
        current = self._states.get(deployment, INITIAL)
        self._states[deployment] = breaker.adopt_open(
            current, now, opened_at, float(record["cooldown_s"]), int(record["trips"])
        )
        metrics.breaker_changed(deployment, True)

    async def _follow(self) -> None:
        """Subscribe, catch up on open breakers, then relay messages until Redis fails."""
        assert self._redis is not None
        pubsub = await self._within(
            subscriber(self._redis, self._channel, ignore_subscribe_messages=True)
        )
        try:
            # Subscribe before reading the keys so no trip can fall between the two.
            self._broken.clear()
            await self._within(pubsub.subscribe(self._channel))
            await self._within(self._sync(), 5 * self._op_timeout_s)
            self._sharing.connected = True
            self._sharing.set(True)
            self._sharing.attempted.set()
            next_ping = self._clock() + self._heartbeat_s
            while not self._broken.is_set():
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(0.25, self._heartbeat_s)
                )
                if message is not None and message.get("type") == "message":
                    self._on_message(message["data"])
                if self._clock() >= next_ping:
                    # An idle subscription cannot tell a silent Redis from a quiet one.
                    await self._within(self._redis.ping())
                    next_ping = self._clock() + self._heartbeat_s
            raise ConnectionError("a Redis operation failed")
        finally:
            with contextlib.suppress(Exception):
                closing = pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
                await self._within(closing)

    async def _sync(self) -> None:
        assert self._redis is not None
        keys = [key async for key in self._redis.scan_iter(match=self._key + "*", count=500)]
        values = await self._redis.mget(keys) if keys else []
        for raw in values:
            if raw is None:
                continue
            # A garbage key must not keep every reconnect failing: skip it.
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                record: dict[str, Any] = orjson.loads(raw)
                # Our own records describe trips we already hold locally (or have since
                # closed while Redis was away); adopting them could only reopen a breaker.
                if record.get("origin") != self.replica_id:
                    self._adopt_open(str(record["deployment"]), record)
        for deployment in list(self._unsynced):
            state = self._states.get(deployment)
            if state is not None and state.state == OPEN and breaker.is_open(state, self._clock()):
                await self._publish(self._record_of(deployment, state, "open"), False)
            self._unsynced.discard(deployment)

    def _lost(self, exc: BaseException) -> None:
        self._broken.set()
        self._permits.clear()
        self._sharing.set(False, exc)

    async def _within(self, awaitable: Awaitable[_V], seconds: float | None = None) -> _V:
        return await within(awaitable, self._op_timeout_s if seconds is None else seconds)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)
