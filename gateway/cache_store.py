"""Where response-cache entries live: Redis when configured, a bounded in-process LRU otherwise.

Reads are awaited (one GET); writes are background tasks, so a miss's answer is never held
back by its own store. Redis trouble is never an error for a request: the cache is
bypassed, a metric says so, and a probe (as in gateway/limits.py) re-checks Redis every
`probe_interval_s` without any request waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("farebox.cache")

REDIS_UP = Gauge("farebox_cache_redis_up", "1 while the shared response cache answers")
REDIS_ERRORS = Counter(
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
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
        )
        self._prefix = prefix
        self._probe_s = probe_interval_s
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.up = True
        REDIS_UP.set(1)

    async def get(self, key: str) -> bytes | None:
        if not self.up:
            raise Unavailable
        try:
            value = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            raise Unavailable from None
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        if not self.up:
            return
        task = asyncio.get_running_loop().create_task(self._put(key, value, ttl_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._redis.set(self._prefix + key, value, ex=ttl_s)
        except (RedisError, OSError) as exc:
            self._went_down(exc)

    async def flush(self) -> None:
        """Wait for stores still on their way (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.flush()
        await self._redis.aclose()

    def _went_down(self, exc: BaseException) -> None:
        REDIS_ERRORS.inc()
        if self.up:
            log.error("response cache unreachable (%s): serving without it", type(exc).__name__)
        self.up = False
        REDIS_UP.set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self._probe_s)
            try:
                await self._redis.ping()
            except (RedisError, OSError):
                continue
            log.warning("response cache reachable again")
            self.up = True
            REDIS_UP.set(1)
            return
