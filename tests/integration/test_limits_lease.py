"""Lease mode against real Redis: requests admitted in process against a replica's slice,
slices that top up, hand back on idle and shutdown, expire when their replica dies, and the
failure policy once a slice is used up with Redis away.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.limits import lease as lease_io
from gateway.limits.limiter import FAIL_CLOSED, LEASE, Limiter
from gateway.runtime.redis import redis_client
from routing.lease import Sizing
from routing.quota import Ask
from tests.integration.test_limits import principal, row
from tests.redis_topologies import on_every_topology


def leased(url: str, prefix: str, **kwargs: Any) -> Limiter:
    kwargs.setdefault("lease_idle_s", 60.0)
    return Limiter(url, key_prefix=prefix, mode=LEASE, **kwargs)


async def wait_for(what: str, check: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.05)  # poll: a condition wait


def budget_keys(prefix: str, key_name: str) -> tuple[str, str]:
    month = datetime.now(UTC).strftime("%Y-%m")
    tag = f"{{{prefix}:lim:{key_name}}}"
    return f"{tag}:budget:{month}", f"{tag}:resv:{month}"


@on_every_topology
def test_requests_are_admitted_against_the_slice_without_a_round_trip(redis_server: Any) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = leased(redis_server.url, prefix)
        who = principal(rpm=600, budget_usd=Decimal("5"))
        try:
            first = await limiter.admit(who, Ask(10, 1_000_000))
            assert first.slice is not None
            calls = 0
            script = limiter._leases._script  # type: ignore[union-attr]

            async def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                return await script(*args, **kwargs)

            limiter._leases._script = counted  # type: ignore[union-attr]
            # The slice holds at least one more request: admitted with no await on Redis.
            admitted = 0
            while first.slice.requests >= 1 and first.slice.free_nano >= 1_000_000:
                task = asyncio.ensure_future(limiter.admit(who, Ask(10, 1_000_000)))
                # Done on the first step: nothing awaited a round trip.
                await asyncio.sleep(0)
                assert task.done()
                task.result().settle(row(10, "0.0005"))
                admitted += 1
                if admitted > 100:
                    break
            assert admitted >= 1
            first.settle(row(10, "0.0005"))
            # The spend settled locally reaches Redis with the next sync (within a second).
            budget, _ = budget_keys(prefix, who.key_name)
            client = redis_client(redis_server.url)

            async def pushed() -> bool:
                spent = int(await client.hget(budget, "spent") or 0)
                return spent == (admitted + 1) * 500_000

            await wait_for("the settled spend in Redis", pushed)
            assert calls >= 1
            await client.aclose()
        finally:
            await limiter.close()

    asyncio.run(scenario())


@on_every_topology
def test_two_replicas_never_exceed_an_rpm_bucket_and_refuse_like_exact_mode(
    redis_server: Any,
) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        a, b = leased(redis_server.url, prefix), leased(redis_server.url, prefix)
        who = principal(rpm=50)
        seen: dict[str, int] = {}
        try:
            for i in range(120):
                try:
                    admission = await (a if i % 2 else b).admit(who, Ask(1, 0))
                    admission.settle(None)
                    seen["ok"] = seen.get("ok", 0) + 1
                except GatewayError as exc:
                    seen[exc.code or ""] = seen.get(exc.code or "", 0) + 1
                    assert exc.status == 429
                    headers = dict(exc.extra_headers)
                    assert b"retry-after-ms" in headers
                    assert headers[b"x-ratelimit-limit-requests"] == b"50"
        finally:
            await a.close()
            await b.close()
        # A bucket of 50 refills 50 a minute: a couple more in the seconds this took.
        assert 50 <= seen["ok"] <= 53, seen
        assert sum(seen.values()) == 120

    asyncio.run(scenario())


@on_every_topology
def test_a_slice_is_returned_on_shutdown_and_on_idle(redis_server: Any) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        who = principal(rpm=600, max_concurrency=8, budget_usd=Decimal("1"))
        budget, reservations = budget_keys(prefix, who.key_name)
        client = redis_client(redis_server.url)
        conc = f"{{{prefix}:lim:{who.key_name}}}:conc"
        limiter = leased(redis_server.url, prefix)
        try:
            admission = await limiter.admit(who, Ask(10, 10_000_000))
            assert int(await client.hget(budget, "reserved") or 0) >= 10_000_000
            assert await client.zcard(conc) >= 1
            admission.settle(row(10, "0.002"))
        finally:
            await limiter.close()
        # Shutdown: nothing held, the spend is in Redis.
        assert int(await client.hget(budget, "reserved") or -1) == 0
        assert int(await client.hget(budget, "spent") or -1) == 2_000_000
        assert await client.zcard(reservations) == 0
        assert await client.zcard(conc) == 0

        idle = leased(redis_server.url, prefix, lease_idle_s=0.3)
        try:
            (await idle.admit(who, Ask(10, 10_000_000))).settle(row(10, "0.001"))
            assert int(await client.hget(budget, "reserved") or 0) > 0

            async def returned() -> bool:
                reserved = int(await client.hget(budget, "reserved") or 0)
                return reserved == 0 and await client.zcard(conc) == 0

            await wait_for("the idle slice handed back", returned)
            assert int(await client.hget(budget, "spent") or -1) == 3_000_000
        finally:
            await idle.close()
            await client.aclose()

    asyncio.run(scenario())


@on_every_topology
def test_a_dead_replicas_slice_expires_and_the_whole_budget_is_usable(
    redis_server: Any,
) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        who = principal(budget_usd=Decimal("0.1"), max_concurrency=4)
        sizing = Sizing(max_share=1.0)
        dead = leased(redis_server.url, prefix, reservation_ttl_s=1.0, lease_sizing=sizing)
        # Held: a request in flight, never settled; the replica "dies" (never closes).
        await dead.admit(who, Ask(10, 20_000_000))
        assert dead._leases is not None
        dead._leases._closed = True
        if dead._leases._task is not None:
            dead._leases._task.cancel()
        expired_before = lease_io.EXPIRED._value.get()
        other = leased(redis_server.url, prefix)
        try:
            started = time.monotonic()
            while True:
                try:
                    admission = await other.admit(who, Ask(10, 100_000_000))
                    break
                except GatewayError as exc:
                    assert exc.code == "insufficient_quota", exc.message
                    assert time.monotonic() - started < 10, "the dead slice expired"
                    await asyncio.sleep(0.1)  # poll: a condition wait
            assert admission.slice is not None
            admission.settle(None)
            assert lease_io.EXPIRED._value.get() > expired_before
        finally:
            await other.close()

    asyncio.run(scenario())


@on_every_topology
@pytest.mark.parametrize("policy", ["fail_open", FAIL_CLOSED])
def test_redis_down_in_lease_mode_serves_the_slice_then_follows_the_policy(
    redis_server: Any, policy: str
) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = leased(
            redis_server.url,
            prefix,
            policies={"default": policy},
            probe_interval_s=0.1,
            lease_sizing=Sizing(max_share=0.5),
        )
        who = principal(rpm=100)
        try:
            for _ in range(10):
                await limiter.admit(who, Ask(1, 0))
            held = limiter._leases._slices[who.key_name]  # type: ignore[union-attr]
            await wait_for("a topped-up slice", _true_when(lambda: held.requests >= 2))
            redis_server.stop()
            # What the slice holds is served in process, with no wait on the dead Redis.
            started = time.monotonic()
            while held.requests >= 1:
                admission = await limiter.admit(who, Ask(1, 0))
                assert admission.slice is held
            assert time.monotonic() - started < 1
            # Used up: the policy answers.
            if policy == FAIL_CLOSED:
                with pytest.raises(GatewayError) as refused:
                    await limiter.admit(who, Ask(1, 0))
                    await limiter.admit(who, Ask(1, 0))
                assert refused.value.status == 503
                assert refused.value.code == "limits_unavailable"
            else:
                for _ in range(3):
                    admission = await limiter.admit(who, Ask(1, 0))
                    assert admission.local == frozenset({"rpm"})
            redis_server.start()
            await wait_for("Redis back", _true_when(lambda: limiter.redis_up))
            admission = await limiter.admit(who, Ask(1, 0))
            assert admission.slice is held
        finally:
            redis_server.start()
            await limiter.close()

    asyncio.run(scenario())


def _true_when(check: Any) -> Any:
    async def probe() -> bool:
        return bool(check())

    return probe
