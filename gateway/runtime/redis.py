"""The one place Farebox makes a Redis client, and the timeout policy every client shares.

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
in-process limiter, a cache miss, the database poll) until it answers again; see
gateway.runtime.redis_health.RedisHealth for the clients that requests depend on.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Drills, schedules, in-flight sync and CLI announcements: nothing a request waits on.
BACKGROUND_TIMEOUT_S = 2.0


def redis_client(
    url: str, *, timeout_s: float = BACKGROUND_TIMEOUT_S, retry_once: bool = False
) -> Redis:
    """A client for `url` (connections are made lazily, on first use)."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1) if retry_once else None,
    )
