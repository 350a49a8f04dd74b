"""Batched limit checks against real Redis: many concurrent requests share round trips and
connections, yet every admission and settlement counts exactly as if sent alone."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.errors import GatewayError
from gateway.keys.auth import Principal
from gateway.limits.limiter import Limiter
from gateway.limits.lua import BATCH
from gateway.limits.redis_batch import RedisBatch
from gateway.runtime.redis import redis_client
from routing import quota
from routing.quota import Ask
from tests.redis_topologies import on_every_topology

ECHO = """
local out = {}
for i = 1, #ARGV do out[i] = KEYS[1] .. ':' .. ARGV[i] end
return out
"""


def principal(**limits: Any) -> Principal:
    return Principal(key_name=f"k{uuid.uuid4().hex[:10]}", **limits)


@on_every_topology
def test_concurrent_calls_share_round_trips_and_answer_in_order(redis_server: Any) -> None:
    async def scenario() -> None:
        redis = redis_client(redis_server.url)
        batch = RedisBatch(redis, ECHO, max_in_flight=2)
        sent: list[int] = []
        real = batch._pipeline

        async def counted(groups: Any) -> list[Any]:
            sent.append(sum(len(items) for items in groups.values()))
            return await real(groups)

        batch._pipeline = counted  # type: ignore[method-assign]
        try:
            await redis.script_load(ECHO)  # else the first round trip is NOSCRIPT + a rerun
            calls = [batch.call((f"key{i % 3}",), str(i)) for i in range(500)]
            answers = await asyncio.gather(*calls)
            assert answers == [f"key{i % 3}:{i}".encode() for i in range(500)]
            # One loop iteration queued all 500: they went out together, not one by one.
            assert sum(sent) == 500 and len(sent) <= 2, sent
            await batch.drain()
        finally:
            await redis.aclose()

    asyncio.run(scenario())


@on_every_topology
def test_a_flushed_script_cache_is_reloaded(redis_server: Any) -> None:
    async def scenario() -> None:
        redis = redis_client(redis_server.url)
        batch = RedisBatch(redis, ECHO)
        try:
            assert await batch.call(("a",), "1") == b"a:1"
            await redis.script_flush()
            both = await asyncio.gather(batch.call(("a",), "2"), batch.call(("b",), "3"))
            assert list(both) == [b"a:2", b"b:3"]
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_an_unreachable_redis_fails_every_waiter(redis_server: Any) -> None:
    async def scenario() -> None:
        redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        batch = RedisBatch(redis, ECHO)
        try:
            results = await asyncio.gather(
                *(batch.call((f"k{i}",), "x") for i in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, Exception) for r in results)
            assert len({id(r) for r in results}) == 5  # one exception object per waiter
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_hundreds_of_concurrent_admissions_never_run_out_of_connections(
    redis_server: Any,
) -> None:
    """redis-py's pool holds 100 connections: one call per request used to hit
    MaxConnectionsError at this concurrency and fail every limit check closed."""

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = Limiter(redis_server.url, key_prefix=prefix, policies={"default": "fail_closed"})
        who = principal(rpm=600, tpm=10**9, max_concurrency=10**4, budget_usd=Decimal(1000))
        try:

            async def one() -> None:
                admission = await limiter.admit(who, Ask(10, quota.to_nano(Decimal("0.001"))))
                await asyncio.sleep(0)  # one loop turn while the admission is held
                admission.settle(None)

            await asyncio.gather(*(one() for _ in range(600)))
            await limiter.flush()
            assert limiter.redis_up
            redis = redis_client(redis_server.url)
            tag = f"{{{prefix}:lim:{who.key_name}}}"
            assert await redis.zcard(f"{tag}:conc") == 0  # every lease handed back
            budget = next(k for k in await redis.keys(f"{tag}:budget:*"))
            assert await redis.hget(budget, "reserved") == b"0"
            level = float(await redis.hget(f"{tag}:rpm", "level") or 0)
            assert 0 <= level < 20  # all 600 taken from a 600 rpm bucket (it refills 10/s)
            await redis.aclose()
        finally:
            await limiter.close()

    asyncio.run(scenario())


@on_every_topology
def test_budget_holds_exactly_under_batched_concurrency(redis_server: Any) -> None:
    """A $0.10 budget and 0.01 reservations: of 50 concurrent requests exactly 10 fit,
    whichever batch they travel in."""

    async def scenario() -> None:
        limiter = Limiter(redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:8]}")
        who = principal(budget_usd=Decimal("0.10"))
        try:
            results = await asyncio.gather(
                *(limiter.admit(who, Ask(1, quota.to_nano(Decimal("0.01")))) for _ in range(50)),
                return_exceptions=True,
            )
            admitted = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, GatewayError)]
            assert len(admitted) == 10 and len(refused) == 40
            assert {r.code for r in refused} == {"insufficient_quota"}
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_a_cancelled_admission_hands_its_reservation_back(redis_server: Any) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = Limiter(redis_server.url, key_prefix=prefix)
        who = principal(max_concurrency=1)
        try:
            task = asyncio.ensure_future(limiter.admit(who, Ask(1, 0)))
            await asyncio.sleep(0)  # queued in the batch, not answered yet
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await limiter.flush()
            # The script ran and took the only lease; the orphan settle gave it back.
            second = await limiter.admit(who, Ask(1, 0))
            second.settle(None)
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_the_batch_script_loads_under_redis_lua(redis_server: Any) -> None:

    async def scenario() -> None:
        redis = redis_client(redis_server.url)
        try:
            sha = await redis.script_load(BATCH)
            assert sha == RedisBatch(redis, BATCH)._sha
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_settlement_alone_reaches_redis_within_its_lazy_window(redis_server: Any) -> None:
    """Settlements wait for an admission to ride along with, but never longer than 10 ms."""

    async def scenario() -> None:
        limiter = Limiter(redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:8]}")
        who = principal(max_concurrency=1)
        try:
            first = await limiter.admit(who, Ask(1, 0))
            first.settle(None)
            await asyncio.sleep(0.1)  # no flush(): the lazy timer alone must send it
            second = await limiter.admit(who, Ask(1, 0))
            second.settle(None)
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_a_batch_refuses_exactly_what_the_in_process_rules_refuse(redis_server: Any) -> None:
    """Eight requests in one batch (one script call): each item sees the ones before it,
    so the batch admits and refuses exactly as routing/quota.py does one by one."""

    async def outcomes(limiter: Limiter, who: Principal) -> list[str]:
        asks = [Ask(300, quota.to_nano(Decimal("0.02")))] * 8
        results = await asyncio.gather(
            *(limiter.admit(who, ask) for ask in asks), return_exceptions=True
        )
        seen = []
        for result in results:
            if isinstance(result, GatewayError):
                seen.append(f"{result.status}:{result.code}:{result.message.split(' on ')[-1]}")
            else:
                assert not isinstance(result, BaseException), result
                seen.append("ok")
        return seen

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        shared = Limiter(redis_server.url, key_prefix=prefix)
        local = Limiter(None)
        try:
            for limits in (
                {"rpm": 5},
                {"tpm": 1_000},
                {"max_concurrency": 3},
                {"budget_usd": Decimal("0.05")},
                {"rpm": 6, "tpm": 1_500, "max_concurrency": 4, "budget_usd": Decimal("0.07")},
            ):
                who = principal(**limits)
                got_shared = await outcomes(shared, who)
                got_local = await outcomes(local, who)
                assert got_shared == got_local, limits
                assert "ok" in got_shared and any(s.startswith("429") for s in got_shared)
        finally:
            await shared.close()
            await local.close()

    asyncio.run(scenario())
