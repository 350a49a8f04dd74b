"""Where response-cache entries live: Redis when configured, a bounded in-process LRU otherwise.

Reads are awaited (one GET); writes are background tasks, so a miss's answer is never held
back by its own store. Redis trouble is never an error for a request: the cache is
bypassed, a metric says so, and a probe (as in gateway/limits/limiter.py) re-checks Redis every
`probe_interval_s` without any request waiting on it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from gateway.runtime.redis import redis_client
from gateway.runtime.redis_health import REDIS_ERRORS, RedisHealth

log = logging.getLogger("farebox.cache")

REDIS_UP = Gauge(
    "farebox_cache_redis_up",
    "1 while the shared response cache answers",
    multiprocess_mode="livemin",  # one worker cut off from Redis is worth seeing
)
REDIS_ERRORS_TOTAL = Counter(
    "farebox_cache_redis_errors_total",
    "Response-cache reads or writes that failed on Redis (the cache was bypassed)",
)


class Unavailable(Exception):
    """The store cannot answer now: bypass the cache for this request."""


class LocalStore:
    """Least-recently-used entries with their expiry, bounded by count and total bytes.

    One per cached route, so a busy route cannot evict a quiet one's entries.
    """

    def __init__(
        self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (self._clock() + ttl_s, value)
        self.bytes += len(value)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value)


class RedisStore:
    """Entries in Redis with `SET … EX ttl`: Redis expires them, and its own `maxmemory`
    policy bounds their size (entries are volatile, so `volatile-lru` evicts them first)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "farebox:cache:",
        timeout_s: float = 0.25,
        probe_interval_s: float = 0.5,
    ) -> None:
        # A cache read must be quick to give up: a miss is cheaper than a stalled request.
        redis = redis_client(url, timeout_s=timeout_s)
        self._redis = redis
        self._prefix = prefix
        self.health = RedisHealth(
            redis, what="response cache", gauge=REDIS_UP, probe_interval_s=probe_interval_s
        )

    @property
    def up(self) -> bool:
        return self.health.up

    async def get(self, key: str) -> bytes | None:
        if not self.up:
            raise Unavailable
        try:
            value = await self._redis.get(self._prefix + key)
        except REDIS_ERRORS as exc:
            self._went_down(exc)
            raise Unavailable from None
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        if self.up:
            self.health.spawn(self._put(key, value, ttl_s))

    async def _put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._redis.set(self._prefix + key, value, ex=ttl_s)
        except REDIS_ERRORS as exc:
            self._went_down(exc)

    async def flush(self) -> None:
        """Wait for stores still on their way (tests, shutdown)."""
        await self.health.flush()

    async def close(self) -> None:
        await self.health.close()

    def _went_down(self, exc: BaseException) -> None:
        REDIS_ERRORS_TOTAL.inc()
        self.health.went_down(exc, ": serving without it")
