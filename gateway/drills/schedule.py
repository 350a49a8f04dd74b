"""Scheduled failover drills (`drills:` in the YAML), started by exactly one replica.

Every replica runs a DrillScheduler; each check (every `interval_s`, 30 s by default) the one
holding the Redis lock `farebox:drill-scheduler` starts the drills that are due: a schedule
is due when its last drill (found by schedule name in `drills`) started more than `every`
ago, and its route has no drill running. The lock is a leader lease: taken with SET NX PX,
renewed by its holder on each check (compare-and-extend, so a holder that lost it never
extends someone else's), released on shutdown (compare-and-delete); a replica that dies
holds it for at most `lock_ttl_s`. A check is bounded to half the lease, so a leader stalled
on the database cannot act after its lease has passed to another replica.

Without Redis the gateway is assumed to be a single replica (that is what running without
shared state means everywhere else too), and the scheduler runs unlocked. With Redis
configured but unreachable it starts nothing: two replicas that cannot see the lock could
both start the same drill, and a drill skipped for a minute costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.config.drills import DrillSchedule
from gateway.ledger.drills_records import DrillRow
from gateway.runtime.redis import RedisState, redis_client
from gateway.runtime.redis_health import REDIS_ERRORS

if TYPE_CHECKING:  # SQLAlchemy; a serving worker on Postgres passes ServingDrills
    from gateway.ledger.drills_repository import DrillsRepository

log = logging.getLogger("farebox.drills")

LOCK_KEY = "farebox:drill-scheduler"

# KEYS[1] the lock, ARGV[1] our token, ARGV[2] the lease in ms.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _now() -> datetime:
    return datetime.now(UTC)


class DrillScheduler:
    def __init__(
        self,
        schedules: Sequence[DrillSchedule],
        repository: DrillsRepository,
        redis_url: str | None,
        announce: Callable[[], Awaitable[None]] | None = None,
        *,
        interval_s: float = 30.0,
        lock_ttl_s: float = 60.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if lock_ttl_s <= interval_s:
            # The holder renews once per check: a shorter lease would lapse between checks.
            raise ValueError("lock_ttl_s must be longer than interval_s")
        self.schedules = tuple(schedules)
        self._repo = repository
        self._announce = announce
        self._interval_s = interval_s
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._clock = clock
        self._token = uuid.uuid4().hex
        self._redis = redis_client(redis_url) if redis_url else None
        self._task: asyncio.Task[None] | None = None
        self._holding = False
        self._warned = False  # the last check failed (the database, or Redis mid-check)
        self._state = RedisState(
            log,
            component="drill_scheduler",
            up="drill scheduler: Redis reachable, competing for the lock",
            down="drill scheduler: Redis unreachable (%s); starting no drills",
        )

    @property
    def leader(self) -> bool:
        """Whether this replica held the lock at its last check (always, without Redis)."""
        return self._redis is None or self._holding

    async def start(self) -> None:
        if self.schedules:
            self._task = asyncio.create_task(self._run(), name="farebox-drill-scheduler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            if self._holding:
                # Hand the lease over now rather than after it expires.
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._redis.eval(_RELEASE, 1, LOCK_KEY, self._token)
                self._holding = False
            await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            # First check one interval after start-up: a replica that is still warming up
            # does not start drills, and a rolling deploy does not start one per restart.
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.wait_for(self.tick(), self._lock_ttl_ms / 2000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or Redis away: try again next interval
                if not self._warned:
                    log.warning("drill scheduler check failed (%s); retrying", type(exc).__name__)
                self._warned = True
            else:
                self._warned = False

    async def tick(self) -> list[DrillRow]:
        """One check: the drills it started (none unless this replica holds the lock)."""
        if not await self._lead():
            return []
        started: list[DrillRow] = []
        for schedule in self.schedules:
            row = await self._start_if_due(schedule)
            if row is not None:
                started.append(row)
        if started and self._announce is not None:
            await self._announce()
        return started

    async def _lead(self) -> bool:
        if self._redis is None:
            return True  # no shared state: a single replica, nobody to race with
        try:
            if self._holding and await self._redis.eval(
                _RENEW, 1, LOCK_KEY, self._token, str(self._lock_ttl_ms)
            ):
                return True
            self._holding = bool(
                await self._redis.set(LOCK_KEY, self._token, nx=True, px=self._lock_ttl_ms)
            )
        except REDIS_ERRORS as exc:
            self._state.lost(exc)
            self._holding = False
            return False
        self._state.set(True)
        return self._holding

    async def _start_if_due(self, schedule: DrillSchedule) -> DrillRow | None:
        name = schedule.schedule_name
        now = self._clock()
        last = await self._repo.last_started(name)
        if last is not None and (now - last).total_seconds() < schedule.every_s:
            return None
        try:
            row = await self._repo.start(
                schedule.route,
                schedule.to,
                schedule.percent,
                schedule.minutes,
                simulate_outage=schedule.simulate_outage,
                abort_after_errors=schedule.abort_after_errors,
                abort_error_rate=schedule.abort_error_rate,
                created_by="scheduler",
                schedule=name,
                now=now,
            )
        except ValueError:
            # The route has a drill running (started by hand, or a schedule on the same
            # route): this one waits for the next check rather than stacking on it.
            return None
        log.warning(
            "drill %s started by schedule %s: %g %% of %s to %s for %g min",
            row.id,
            name,
            schedule.percent,
            schedule.route,
            schedule.to,
            schedule.minutes,
        )
        return row
