"""Share in-flight counts of capacity-limited deployments between replicas through Redis.

A dedicated GPU's max_concurrency is a global number, but each replica only sees its own
requests. Every `interval_s` each replica writes its counts to its own hash (which expires
if the replica dies) and reads the others', so the planner sees the whole fleet's load.
Nothing here is awaited by a request: a count is at most one interval old, and if Redis
goes away the replica falls back to its own counts until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from routing.live import DeploymentLoad

log = logging.getLogger("farebox.inflight")

PREFIX = "farebox:inflight:"


class InFlightSync:
    def __init__(
        self,
        redis_url: str,
        loads: Mapping[str, DeploymentLoad],
        deployments: list[str],
        interval_s: float = 0.2,
        replica: str | None = None,
    ) -> None:
        self._url = redis_url
        self._loads = loads
        self._deployments = deployments
        self._interval_s = interval_s
        self.replica = replica or f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        self._key = PREFIX + self.replica
        self._redis: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self.rounds = 0

    def connect(self) -> None:
        """Create the client (connections are made lazily); `start` also syncs forever."""
        if self._redis is None:
            timeout = max(self._interval_s, 0.5)
            self._redis = Redis.from_url(
                self._url, socket_timeout=timeout, socket_connect_timeout=timeout
            )

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
                if not self._healthy:
                    log.warning("in-flight sharing through Redis is back")
                self._healthy = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything Redis throws: use local counts only
                if self._healthy:
                    log.warning(
                        "in-flight sharing through Redis failed (%s); using this replica's "
                        "counts only until it is back",
                        type(exc).__name__,
                    )
                self._healthy = False
                for dep in self._deployments:
                    self._loads[dep].remote_in_flight = 0
            await asyncio.sleep(self._interval_s)

    async def sync_once(self) -> None:
        redis = self._redis
        assert redis is not None
        mine: dict[FieldT, EncodableT] = {
            dep: self._loads[dep].in_flight for dep in self._deployments
        }
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
        if others:
            async with redis.pipeline(transaction=False) as pipe:
                for key in others:
                    pipe.hgetall(key)
                for counts in await pipe.execute():
                    for raw_dep, raw_n in counts.items():
                        dep = raw_dep.decode()
                        if dep in totals:
                            totals[dep] += int(raw_n)
        for dep, total in totals.items():
            self._loads[dep].remote_in_flight = total
        self.rounds += 1
