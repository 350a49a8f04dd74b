"""Share the load of limited deployments between replicas through Redis.

A dedicated GPU's max_concurrency and a provider account's rpm/tpm are global numbers, but
each replica only sees its own requests. Every `interval_s` each replica writes its counts
(in flight, and requests and input tokens in the last minute) to its own hash (which
expires if the replica dies) and reads the others', so the planner sees the fleet's load.
Nothing here is awaited by a request: a count is at most one interval old, and if Redis
goes away the replica falls back to its own counts until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping

from redis.typing import EncodableT, FieldT

from gateway.runtime.redis import RedisClient, RedisState, redis_client
from routing.live import DeploymentLoad

log = logging.getLogger("farebox.inflight")

PREFIX = "farebox:inflight:"
# Hash fields next to a deployment's in-flight count ("|" cannot appear in a deployment id
# the config accepts unquoted, and is only ever read back by this module).
_REQUESTS = "|rpm"
_TOKENS = "|tpm"


class InFlightSync:
    def __init__(
        self,
        redis_url: str,
        loads: Mapping[str, DeploymentLoad],
        deployments: list[str],
        interval_s: float = 0.2,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = redis_url
        self._loads = loads
        self._deployments = deployments
        self._interval_s = interval_s
        self._clock = clock
        self.replica = replica or f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        self._key = PREFIX + self.replica
        self._redis: RedisClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._state = RedisState(
            log,
            component="inflight_sync",
            up="in-flight sharing through Redis is up",
            down="in-flight sharing through Redis failed (%s); using this replica's counts "
            "only until it is back",
        )
        self.rounds = 0

    def connect(self) -> None:
        """Create the client (connections are made lazily); `start` also syncs forever."""
        if self._redis is None:
            timeout = max(self._interval_s, 0.5)
            self._redis = redis_client(self._url, timeout_s=timeout)

    async def start(self) -> None:
        if self._task is not None or not self._deployments:
            return
        self.connect()
        self._task = asyncio.create_task(self._run(), name="farebox-inflight-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.delete(self._key)  # leave no stale load behind
            await self._redis.aclose()
            self._redis = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
                self._state.set(True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a background loop that must survive: local counts only
                self._state.lost(exc)
                for dep in self._deployments:
                    load = self._loads[dep]
                    load.remote_in_flight = load.remote_requests = load.remote_tokens = 0
            await asyncio.sleep(self._interval_s)

    async def sync_once(self) -> None:
        redis = self._redis
        assert redis is not None
        now = self._clock()
        mine: dict[FieldT, EncodableT] = {}
        for dep in self._deployments:
            load = self._loads[dep]
            mine[dep] = load.in_flight
            mine[f"{dep}{_REQUESTS}"] = load.requests.total(now)
            mine[f"{dep}{_TOKENS}"] = load.tokens.total(now)
        ttl_ms = int(max(self._interval_s * 5, 1.0) * 1000)  # a dead replica's load fades
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._key, mapping=mine)
            pipe.pexpire(self._key, ttl_ms)
            await pipe.execute()
        others = [
            key
            async for key in redis.scan_iter(match=PREFIX + "*", count=100)
            if key.decode() != self._key
        ]
        totals = dict.fromkeys(self._deployments, 0)
        for dep in self._deployments:
            totals[f"{dep}{_REQUESTS}"] = totals[f"{dep}{_TOKENS}"] = 0
        if others:
            async with redis.pipeline(transaction=False) as pipe:
                for key in others:
                    pipe.hgetall(key)
                for counts in await pipe.execute():
                    for raw_dep, raw_n in counts.items():
                        dep = raw_dep.decode()
                        if dep in totals:
                            totals[dep] += int(raw_n)
        for dep in self._deployments:
            load = self._loads[dep]
            load.remote_in_flight = totals[dep]
            load.remote_requests = totals[f"{dep}{_REQUESTS}"]
            load.remote_tokens = totals[f"{dep}{_TOKENS}"]
        self.rounds += 1
