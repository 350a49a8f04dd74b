"""The one place Farebox makes a Redis client, and the timeout policy every client shares.

The URL's scheme picks the topology (gateway/runtime/redis_url.py): one node (`redis://`,
`rediss://`), a Redis Cluster (`redis+cluster://`, a `RedisCluster` routing each command by
its keys' hash slot) or a Sentinel-managed master (`redis+sentinel://`, a `Redis` whose
connections ask the sentinels where the master is). The policy below holds for all three.

Policy, the same for the eight users (limits, response cache, breakers, key sync, in-flight
sync, drill board, drill schedule, CLI announcements):

- One timeout per client, for connecting and for every operation: a Redis that does not answer
  within it counts as down for that call. Components that answer requests from Redis (limits,
  cache) pass a short one from their config; background work takes `BACKGROUND_TIMEOUT_S`.
- No retry on a timeout: a request never waits twice on a slow Redis, and background loops
  retry on their own schedule.
- `retry_once`: one immediate retry on a fresh connection, for the long-lived subscribers
  (breakers, key sync) whose pooled connection may have been dropped while idle.

Health follows one rule too: the first failure marks Redis down and callers fall back (the
in-process limiter, a cache miss, local breakers, local drill counts, local in-flight counts,
the database poll, no scheduled drill) until it answers again, and each change is logged once:
gateway.runtime.redis_health.RedisHealth for the clients that requests depend on (it probes),
`Sharing` below for the pub/sub subscribers (breakers, key sync, drill board), `RedisState`
for background work that simply tries again on its own schedule (in-flight sync, drill
schedule). `farebox_redis_up{component}` exports the last two.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.runtime.redis_url import CLUSTER, SINGLE, RedisTarget, parse_redis_url

# Drills, schedules, in-flight sync and CLI announcements: nothing a request waits on.
BACKGROUND_TIMEOUT_S = 2.0

# What `redis_client` returns. A Sentinel-found master is a plain `Redis` whose connections
# ask the sentinels where the master is; a cluster client routes each command by its keys'
# hash slot (every multi-key command and script of Farebox keeps its keys in one slot:
# docs/deploy.md, "Redis Cluster and Sentinel").
RedisClient = Redis | RedisCluster


def redis_client(
    url: str, *, timeout_s: float = BACKGROUND_TIMEOUT_S, retry_once: bool = False
) -> RedisClient:
    """A client for `url` — one node, a cluster or a Sentinel-managed master, whichever the
    scheme names (gateway/runtime/redis_url.py) — under the policy above. Connections are made
    lazily, on first use; a URL Farebox cannot use raises ValueError here."""
    target = parse_redis_url(url)
    if target.kind == SINGLE:
        return Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 1) if retry_once else None,
        )
    if target.kind == CLUSTER:
        return _cluster(target, timeout_s, retry_once)
    return _sentinel_master(target, timeout_s, retry_once)


def _connection_kwargs(target: RedisTarget, timeout_s: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "username": target.username,
        "password": target.password,
        **target.options,
    }
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


def _cluster(target: RedisTarget, timeout_s: float, retry_once: bool) -> RedisCluster:
    # The cluster client retries at its own level (a node's connection never does): on a
    # connection error or timeout it refreshes the slot map and tries again. The same policy
    # as one node — no retry, or exactly one for the subscribers — so a request never waits
    # twice on a slow node; the refreshed map serves the next call, which is how a failover
    # is followed. MOVED/ASK redirects (slots migrating) are not retries and always followed.
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        retry=Retry(NoBackoff(), 1 if retry_once else 0),
        **_connection_kwargs(target, timeout_s),
    )


class SentinelMaster(Redis):
    """The master of a Sentinel service. Closing it closes its connections to the sentinels
    too (redis-py leaves them to the `Sentinel` object, which nothing else here holds)."""

    # Not `sentinel`: that name is redis-py's SENTINEL command method.
    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            await self.sentinel_manager.aclose()


def _sentinel_master(target: RedisTarget, timeout_s: float, retry_once: bool) -> Redis:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # unannotated upstream
        list(target.hosts), sentinel_kwargs=sentinel_kwargs
    )
    # After a failover the old master's connections fail (or answer READONLY, which redis-py
    # turns into a connection error); the next connection asks the sentinels again, so the
    # health probe and retries already in place follow the promoted replica.
    master = sentinel.master_for(
        target.service,
        redis_class=SentinelMaster,
        db=target.db,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1) if retry_once else None,
        **_connection_kwargs(target, timeout_s),
    )
    assert isinstance(master, SentinelMaster)
    master.sentinel_manager = sentinel
    return master


# Pub/sub on a cluster: channels are classic (SUBSCRIBE/PUBLISH), and publisher and
# subscribers meet on the master that owns the channel's hash slot: `subscriber` connects there
# and `publish` sends there, so a message does not depend on the cluster bus relaying it (a
# node that just restarted drops what the bus relays until its links are back).
#
# The subscription has a connection pool of its own rather than redis-py's cluster pub/sub,
# which borrows the node's pool: the cluster client marks every connection of a node for
# reconnection when one command on it fails (a pooled connection that went stale across a
# restart, say), and the pub/sub then reconnected and resubscribed silently, losing the
# messages of that gap without the subscriber knowing to re-read the state. Here the
# connection does not retry: a lost subscription raises, and the subscriber's own loop
# (`Sharing`) resubscribes and catches up, as on one node after any failure.


class _NodePubSub(PubSub):
    """A subscription on one cluster node over its own pool, closed with it."""

    async def aclose(self) -> None:
        await super().aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
        await self.connection_pool.disconnect()


async def subscriber(
    client: RedisClient, channel: str, *, ignore_subscribe_messages: bool = False
) -> PubSub:
    """A pub/sub connection for `channel` (not yet subscribed): `client`'s own on one node or
    behind Sentinel; on a cluster, one to the master that owns `channel`'s slot, after
    loading the slot map (a no-op once loaded, a refresh after a node failed)."""
    if not isinstance(client, RedisCluster):
        return client.pubsub(ignore_subscribe_messages=ignore_subscribe_messages)
    await client.initialize()
    node = client.get_node_from_key(channel)
    assert node is not None  # initialize() raises unless every slot has a master
    pool = ConnectionPool(
        connection_class=node.connection_class,
        **{**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)},
    )
    return _NodePubSub(pool, ignore_subscribe_messages=ignore_subscribe_messages)


async def publish(client: RedisClient, channel: str, message: bytes) -> None:
    """PUBLISH `message`; on a cluster, on the master that owns `channel`'s slot, where the
    subscribers are (see `subscriber`)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(channel)
        await client.publish(channel, message, target_nodes=node)
    else:
        await client.publish(channel, message)


UP = Gauge(
    "farebox_redis_up",
    "1 while the component's last Redis operation got through (background users of Redis)",
    ["component"],
    multiprocess_mode="livemin",  # one worker cut off from Redis is worth seeing
)


class RedisState:
    """Whether a background user of Redis got through last time: `set` after each try, and a
    change of state is logged once (and exported as `farebox_redis_up{component}`), not on
    every failed try. `down` is a format string taking the reason."""

    def __init__(self, log: logging.Logger, *, component: str, up: str, down: str) -> None:
        self.ok = False
        self._log, self._up, self._down = log, up, down
        self._reported: bool | None = None
        self._gauge = UP.labels(component)

    def set(self, ok: bool, exc: BaseException | None = None) -> None:
        self.ok = ok
        if self._reported == ok:
            return
        self._reported = ok
        self._gauge.set(1 if ok else 0)
        if ok:
            self._log.info("%s", self._up)
        else:
            reason = f"{type(exc).__name__}: {exc}" if exc is not None else "?"
            self._log.warning(self._down, reason)

    def lost(self, exc: BaseException) -> None:
        self.set(False, exc)


class Sharing(RedisState):
    """Whether a component shares its state through a Redis subscription right now, and the
    loop that keeps that subscription up (gateway.core.breakers, gateway.keys.sync,
    gateway.drills.board).

    `follow` subscribes, sets `connected` once it is in, and relays messages until Redis
    fails; the loop then reconnects with exponential backoff and equal jitter, so replicas that
    lost Redis together do not reconnect in lockstep, capped low so sharing resumes within
    seconds. A change of state is logged once, not on every failed reconnect.
    """

    def __init__(
        self, log: logging.Logger, *, component: str, up: str, down: str, reconnect_max_s: float
    ) -> None:
        super().__init__(log, component=component, up=up, down=down)
        self.connected = False  # this round's `follow` got its subscription
        self.attempted = asyncio.Event()  # set after the first round, whatever its outcome
        self._reconnect_max_s = reconnect_max_s

    async def supervise(
        self, follow: Callable[[], Awaitable[object]], lost: Callable[[BaseException], None]
    ) -> None:
        failures = 0
        while True:
            self.connected = False
            try:
                await follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything Redis throws means: degrade and retry
                lost(exc)
            self.attempted.set()
            failures = 0 if self.connected else failures + 1
            ceiling = min(self._reconnect_max_s, 0.1 * 2 ** min(failures, 10))
            await asyncio.sleep(ceiling / 2 + random.uniform(0, ceiling / 2))
