"""Whether a Redis that requests depend on is up, and the background work that writes to it.

Shared by the per-key limiter and the response cache: both answer requests from Redis while
it is up, and must never make a request wait on one that is down. The first failure marks
it down (`went_down`); from then on callers skip Redis until a probe, running every
`probe_interval_s`, gets a PING through (and `on_recover`, if given, has run), which marks it
up again. Writes that no request awaits go through `spawn`, so shutdown can wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import Gauge
from redis.exceptions import RedisClusterException, RedisError

from gateway.runtime.background import Background
from gateway.runtime.redis import RedisClient

log = logging.getLogger("farebox.redis")

# What a Redis that is away or too slow raises. A cluster client adds its own family, which
# redis-py does not derive from RedisError: "cannot be connected" when no start-up node
# answers, SlotNotCoveredError while a slot has no live master.
REDIS_ERRORS = (RedisError, OSError, RedisClusterException)


class RedisHealth:
    def __init__(
        self,
        redis: RedisClient,
        *,
        what: str,
        gauge: Gauge,
        probe_interval_s: float,
        on_recover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self._what = what
        self._gauge = gauge
        self._probe_s = probe_interval_s
        self._on_recover = on_recover
        self._probe: asyncio.Task[None] | None = None
        self._tasks = Background()
        self.up = True
        gauge.set(1)

    def went_down(self, exc: BaseException, detail: str = "") -> None:
        if self.up:
            log.error("%s unreachable (%s)%s", self._what, type(exc).__name__, detail)
        self.up = False
        self._gauge.set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self._probe_s)
            try:
                await self.redis.ping()
                if self._on_recover is not None:
                    await self._on_recover()
            except REDIS_ERRORS:
                continue
            log.warning("%s reachable again", self._what)
            self.up = True
            self._gauge.set(1)
            return

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(work)

    async def flush(self) -> None:
        """Wait for background writes still on their way (tests, shutdown)."""
        await self._tasks.wait(2)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.flush()
        await self.redis.aclose()
