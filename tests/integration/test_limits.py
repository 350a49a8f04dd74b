"""The limiter against real Redis: the Lua scripts answer like the in-process rules, budgets
seed from the ledger, and a Redis outage follows the configured failure policy."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.keys.auth import Principal
from gateway.ledger_rows import RequestRow
from gateway.limits.limiter import FAIL_CLOSED, Limiter
from gateway.runtime.redis import redis_client
from routing import quota
from routing.quota import Ask
from tests.redis_topologies import on_every_topology


def principal(**limits: Any) -> Principal:
    return Principal(key_name=f"k{uuid.uuid4().hex[:10]}", **limits)


def row(tokens: int, cost: str) -> RequestRow:
    """A settled request as the ledger writes it (only the fields settle reads matter)."""
    return RequestRow(
        id="r",
        received_at=datetime.now(),
        key_id="k",
        route="chat",
        requested_model="chat",
        endpoint="chat/completions",
        workload=None,
        stream=False,
        final_status=200,
        error_class=None,
        final_deployment="d",
        attempts=1,
        input_uncached_tokens=tokens // 2,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=tokens - tokens // 2,
        reasoning_tokens=0,
        cost_usd=Decimal(cost),
        latency_ms=1.0,
        ttft_ms=None,
        decision=None,
        gate_outcome=None,
    )


async def outcomes(limiter: Limiter, who: Principal, asks: list[Ask]) -> list[str]:
    seen = []
    for ask in asks:
        try:
            admission = await limiter.admit(who, ask)
        except GatewayError as exc:
            seen.append(f"{exc.status}:{exc.code}")
            continue
        seen.append("ok")
        admission.settle(row(ask.tokens, "0.01"))
        await limiter.flush()  # Redis settlements run in the background
    return seen


@on_every_topology
def test_redis_and_in_process_limiters_agree(redis_server: Any) -> None:
    """Same key limits, same requests: the Lua scripts and routing/quota answer alike."""

    async def scenario() -> None:
        shared = Limiter(redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:8]}")
        local = Limiter(None)
        try:
            for limits in (
                {"rpm": 5},
                {"tpm": 1_000},
                {"budget_usd": Decimal("0.05")},
                {"rpm": 4, "tpm": 700, "budget_usd": Decimal("0.10")},
            ):
                asks = [Ask(300, quota.to_nano(Decimal("0.02")))] * 8
                who = principal(**limits)
                got_shared = await outcomes(shared, who, asks)
                got_local = await outcomes(local, who, asks)
                assert got_shared == got_local, limits
                assert "ok" in got_shared and any(s.startswith("429") for s in got_shared)
        finally:
            await shared.close()
            await local.close()

    asyncio.run(scenario())


@on_every_topology
def test_concurrency_lease_is_freed_by_settle(redis_server: Any) -> None:
    async def scenario() -> None:
        limiter = Limiter(redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:8]}")
        who = principal(max_concurrency=2)
        try:
            first = await limiter.admit(who, Ask(1, 0))
            await limiter.admit(who, Ask(1, 0))
            with pytest.raises(GatewayError) as refused:
                await limiter.admit(who, Ask(1, 0))
            assert refused.value.status == 429
            assert "concurrent requests: Limit 2" in refused.value.message
            first.settle(None)
            await limiter.flush()
            await limiter.admit(who, Ask(1, 0))
        finally:
            await limiter.close()

    asyncio.run(scenario())


@on_every_topology
def test_budget_seeds_from_the_ledger_once_per_month(redis_server: Any) -> None:
    calls: list[str] = []

    async def spend(key: str, since: datetime) -> Decimal:
        calls.append(key)
        assert since.day == 1 and since.hour == 0
        return Decimal("0.95")

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = Limiter(redis_server.url, key_prefix=prefix, spend_source=spend)
        other = Limiter(redis_server.url, key_prefix=prefix, spend_source=spend)
        who = principal(budget_usd=Decimal("1.00"))
        try:
            ok = await limiter.admit(who, Ask(10, quota.to_nano(Decimal("0.04"))))
            assert ok.verdict.spent_nano == quota.to_nano(Decimal("0.95"))
            # 0.95 spent + 0.04 reserved: a second 0.04 does not fit, on either replica.
            with pytest.raises(GatewayError) as refused:
                await other.admit(who, Ask(10, quota.to_nano(Decimal("0.04"))))
            assert refused.value.status == 429 and refused.value.code == "insufficient_quota"
            assert refused.value.error_type == "insufficient_quota"
            assert (b"x-should-retry", b"false") in refused.value.extra_headers
            assert calls == [who.key_name]  # the second replica found it seeded
        finally:
            await limiter.close()
            await other.close()

    asyncio.run(scenario())


@on_every_topology
def test_redis_outage_fails_open_or_closed_and_recovers(redis_server: Any) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        open_ = Limiter(redis_server.url, key_prefix=prefix, probe_interval_s=0.1)
        closed = Limiter(
            redis_server.url,
            key_prefix=prefix,
            policies={"default": "fail_open", "budget": FAIL_CLOSED},
            probe_interval_s=0.1,
        )
        rpm_only = principal(rpm=1_000)
        with_budget = principal(rpm=1_000, budget_usd=Decimal("5"))
        try:
            await open_.admit(rpm_only, Ask(1, 0))
            redis_server.stop()
            started = time.monotonic()
            # Fail open: served, counted in process.
            for _ in range(3):
                admission = await open_.admit(rpm_only, Ask(1, 0))
                assert admission.local == frozenset({quota.RPM})
            assert time.monotonic() - started < 2, "no request waits out a dead Redis"
            # Fail closed for the budget check: 503 with a clear message.
            with pytest.raises(GatewayError) as refused:
                await closed.admit(with_budget, Ask(1, 0))
                await closed.admit(with_budget, Ask(1, 0))
            assert refused.value.status == 503 and refused.value.code == "limits_unavailable"
            assert "budget" in refused.value.message
            # A fail-open check on the same limiter still serves.
            await closed.admit(rpm_only, Ask(1, 0))

            redis_server.start()
            back = time.monotonic()
            while not (open_.redis_up and closed.redis_up):
                assert time.monotonic() - back < 5, "enforcement back within 5 s"
                await asyncio.sleep(0.05)  # poll: a condition wait
            admission = await closed.admit(with_budget, Ask(1, 0))
            assert admission.local == frozenset()
            client = redis_client(redis_server.url)
            assert await client.exists(f"{{{prefix}:lim:{with_budget.key_name}}}:rpm")
            await client.aclose()
        finally:
            redis_server.start()
            await open_.close()
            await closed.close()

    asyncio.run(scenario())
