"""Scheduled drills (`drills:` in the YAML) on real Postgres and Redis: exactly one replica
starts them (the Redis lease), and `every` is respected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from gateway.config.drills import DrillSchedule
from gateway.drills.schedule import LOCK_KEY, DrillScheduler
from gateway.ledger.drills_repository import DrillsRepository
from tests.drill_env import drill_env
from tests.ledger_reads import sql_rows
from tests.services import RedisServer
from tests.waiting import until

WEEKLY = DrillSchedule(route="chat", to="alt@sim", every="7d", percent=10, minutes=15)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis with no scheduler lease left over from another test."""
    client = redis.Redis.from_url(redis_server.url)
    client.delete(LOCK_KEY)
    try:
        yield redis_server.url
    finally:
        client.delete(LOCK_KEY)
        client.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def drills(pg_url: str) -> list[tuple[str, str | None, str | None]]:
    rows = sql_rows(pg_url, "SELECT id, schedule, created_by FROM drills ORDER BY started_at")
    return [(r[0], r[1], r[2]) for r in rows]


def test_two_replicas_start_exactly_one_drill(pg_url: str, redis_url: str) -> None:
    async def main() -> None:
        repo_a, repo_b = DrillsRepository.create(pg_url), DrillsRepository.create(pg_url)
        a = DrillScheduler([WEEKLY], repo_a, redis_url, interval_s=0.2, lock_ttl_s=5)
        b = DrillScheduler([WEEKLY], repo_b, redis_url, interval_s=0.2, lock_ttl_s=5)
        try:
            first = await asyncio.gather(a.tick(), b.tick())
            assert sorted(len(started) for started in first) == [0, 1]
            assert [a.leader, b.leader].count(True) == 1
            # While the leader's lease holds, the other never leads, and nothing is due.
            for _ in range(3):
                again = await asyncio.gather(a.tick(), b.tick())
                assert again[0] == [] and again[1] == []
                assert [a.leader, b.leader].count(True) == 1
        finally:
            await a.close()
            await b.close()
            await repo_a.close()
            await repo_b.close()

    asyncio.run(main())
    (row,) = drills(pg_url)
    assert row[1:] == ("chat->alt@sim", "scheduler")


def test_every_is_respected(pg_url: str, redis_url: str) -> None:
    clock = Clock()

    async def main() -> None:
        repo = DrillsRepository.create(pg_url)
        scheduler = DrillScheduler([WEEKLY], repo, redis_url, clock=clock)
        try:
            (first,) = await scheduler.tick()
            assert first.started_at == clock.now and first.schedule == "chat->alt@sim"
            # Still running: not started twice, however much time passes.
            clock.now += timedelta(days=8)
            assert await scheduler.tick() == []
            assert await repo.move(first.id, ("running",), "completed")
            clock.now = first.started_at + timedelta(days=7) - timedelta(seconds=1)
            assert await scheduler.tick() == []
            clock.now += timedelta(seconds=2)
            (second,) = await scheduler.tick()
            assert second.started_at == clock.now
        finally:
            await scheduler.close()
            await repo.close()

    asyncio.run(main())
    assert len(drills(pg_url)) == 2


def test_a_route_with_a_drill_running_is_skipped(pg_url: str, redis_url: str) -> None:
    async def main() -> None:
        repo = DrillsRepository.create(pg_url)
        await repo.start("chat", "alt@sim", 5, 15, created_by="cli:ops")
        scheduler = DrillScheduler([WEEKLY], repo, redis_url)
        try:
            assert await scheduler.tick() == []
        finally:
            await scheduler.close()
            await repo.close()

    asyncio.run(main())
    assert [r[2] for r in drills(pg_url)] == ["cli:ops"]


def test_the_lease_passes_on_expiry_or_release(pg_url: str, redis_url: str) -> None:
    async def main() -> None:
        repo = DrillsRepository.create(pg_url)
        a = DrillScheduler([], repo, redis_url, interval_s=0.1, lock_ttl_s=0.6)
        b = DrillScheduler([], repo, redis_url, interval_s=0.1, lock_ttl_s=0.6)
        c = DrillScheduler([], repo, redis_url, interval_s=0.1, lock_ttl_s=0.6)
        try:
            await a.tick()
            assert a.leader
            await b.tick()
            assert not b.leader

            # `a` stops checking (a replica that died): its lease lapses and `b` takes over.
            async def b_leads() -> bool:
                await b.tick()
                return b.leader

            await until(b_leads, "b to take over the lapsed lease", within_s=5)
            # `a` comes back: it cannot renew a lease that is now b's.
            await a.tick()
            assert not a.leader and b.leader
            # A clean shutdown hands the lease over at once.
            await b.close()
            await c.tick()
            assert c.leader
        finally:
            await a.close()
            await c.close()
            await repo.close()

    asyncio.run(main())


def test_without_redis_a_single_replica_runs_unlocked(pg_url: str) -> None:
    async def main() -> None:
        repo = DrillsRepository.create(pg_url)
        scheduler = DrillScheduler([WEEKLY], repo, None)
        try:
            assert scheduler.leader
            assert len(await scheduler.tick()) == 1
            assert await scheduler.tick() == []
        finally:
            await scheduler.close()
            await repo.close()

    asyncio.run(main())


def test_unreachable_redis_starts_nothing(pg_url: str) -> None:
    async def main() -> None:
        repo = DrillsRepository.create(pg_url)
        scheduler = DrillScheduler([WEEKLY], repo, "redis://127.0.0.1:9/0")
        try:
            assert await scheduler.tick() == []
            assert not scheduler.leader
        finally:
            await scheduler.close()
            await repo.close()

    asyncio.run(main())
    assert drills(pg_url) == []


def test_lease_must_outlast_the_interval(pg_url: str) -> None:
    repo = DrillsRepository.create(pg_url)
    with pytest.raises(ValueError, match="lock_ttl_s"):
        DrillScheduler([WEEKLY], repo, None, interval_s=30, lock_ttl_s=30)


def test_the_gateway_runs_its_schedules(
    simulator: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    schedule = (
        "drills:\n"
        "  - {name: monthly-chat, route: chat, to: alt@sim, percent: 100, minutes: 5,"
        " every: 30d}\n"
    )
    with drill_env(
        simulator,
        pg_url,
        redis_url,
        tmp_path,
        extra_yaml=schedule,
        drill_schedule_interval_s=0.2,
    ) as env:
        deadline = time.monotonic() + 10
        while not drills(pg_url) and time.monotonic() < deadline:
            time.sleep(0.1)  # poll: a condition wait
        ((drill_id, name, by),) = drills(pg_url)
        assert (name, by) == ("monthly-chat", "scheduler")
        # The scheduler announced it: the board applies it.
        deadline = time.monotonic() + 5
        while env.chat(1)[0].headers.get("x-farebox-drill") != drill_id:
            assert time.monotonic() < deadline, "the scheduled drill was never applied"
            time.sleep(0.1)  # poll: a condition wait
        time.sleep(0.5)  # a few more checks: still one drill
        assert len(drills(pg_url)) == 1
        assert redis.Redis.from_url(redis_url).exists(LOCK_KEY)
    # Shut down: the lease is released for the next replica.
    assert not redis.Redis.from_url(redis_url).exists(LOCK_KEY)
