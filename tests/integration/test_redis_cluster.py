"""Farebox on Redis beyond one node: what the node/cluster runs of the limits, breakers, keys
and cache tests (tests.redis_topologies.on_every_topology) do not show on their own.

- Redis Cluster: the budget reconciler finds every key's counters wherever their slot lives
  (SCAN runs on each master), and a key's scripts never cross a slot.
- Sentinel: the master dies, the sentinels promote the replica, and the gateway's limiter
  finds the new master by itself and keeps limiting — shared between replicas, with the
  budget it seeded before the failover (replicated, not re-read from the ledger).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from gateway.errors import GatewayError
from gateway.keys.auth import Principal
from gateway.limits.limiter import Limiter
from gateway.limits.lua import limit_keys
from gateway.runtime.redis import redis_client
from routing import quota
from routing.quota import Ask
from tests.redis_topologies import RedisCluster as LocalCluster
from tests.redis_topologies import SentinelSet, start_sentinel_set, sync_client
from tests.waiting import until


def test_the_reconciler_corrects_budgets_on_every_cluster_node(
    redis_cluster_session: LocalCluster,
) -> None:
    """Twelve keys' budget counters, spread over the three masters, all $0.05 behind the
    ledger: one reconciliation (two looks, as the reconciler requires a shortfall to
    persist) corrects every one of them, whichever node holds it."""
    url = redis_cluster_session.url
    names = [f"k{i}" for i in range(12)]

    async def ledger(key_name: str, since: datetime) -> Decimal:
        return Decimal("0.25")

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = Limiter(url, key_prefix=prefix, spend_source=ledger)
        store = redis_client(url)
        assert isinstance(store, RedisCluster)
        month = datetime.now(UTC).strftime("%Y-%m")
        budgets = [limit_keys(prefix, name, month)[3] for name in names]
        for budget in budgets:
            await store.hset(budget, mapping={"spent": 200_000_000, "reserved": 0})
        holders = {getattr(store.get_node_from_key(b), "name", None) for b in budgets}
        assert len(holders) == 3, "the keys must spread over every master for this to prove it"
        try:
            reconciler = limiter._reconciler
            assert reconciler is not None
            assert await reconciler.run_once() == 0  # first look: records the shortfalls
            assert await reconciler.run_once() == len(names)
            for budget in budgets:
                assert await store.hget(budget, "spent") == b"250000000"
        finally:
            await store.aclose()
            await limiter.close()

    asyncio.run(scenario())


def test_one_keys_limit_entries_share_a_slot() -> None:
    """Every script of a key (admission, lease, seed, repair) names only these keys; one slot
    each, whatever the key's name, or a Redis Cluster refuses the script (CROSSSLOT)."""
    month = datetime.now(UTC).strftime("%Y-%m")
    for name in ("k1", "team:alpha", "{odd}", "x" * 200):
        keys = limit_keys("farebox", name, month)
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    """A fresh sentinel set per test: a failover test leaves its master dead."""
    group = start_sentinel_set(tmp_path)
    try:
        yield group
    finally:
        group.close()


def test_the_limiter_follows_a_sentinel_failover_and_keeps_limiting(
    sentinels: SentinelSet,
) -> None:
    url = sentinels.url
    seeds: list[str] = []

    async def ledger(key_name: str, since: datetime) -> Decimal:
        seeds.append(key_name)
        return Decimal("0.90")

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        a = Limiter(url, key_prefix=prefix, spend_source=ledger, probe_interval_s=0.1)
        b = Limiter(url, key_prefix=prefix, spend_source=ledger, probe_interval_s=0.1)
        budgeted = Principal(key_name="budgeted", budget_usd=Decimal("1.00"))
        reserve = quota.to_nano(Decimal("0.04"))
        try:
            # Before: $0.90 seeded from the ledger, $0.04 reserved through replica a.
            first = await a.admit(budgeted, Ask(1, reserve))
            assert first.local == frozenset()
            master = sync_client(url)
            assert master.wait(1, 5000) == 1, "the replica has everything before the master dies"
            master.close()

            sentinels.master.stop()
            await until(
                lambda: sentinels.master_port() == sentinels.replica.port,
                "the sentinels to promote the replica",
                within_s=30,
            )

            # The first call after the failover may find its old connection dead (and count
            # Redis down for a moment); the probe then reconnects through the sentinels.
            warm = Principal(key_name="warm", rpm=100_000)

            async def both_on_redis() -> bool:
                for limiter in (a, b):
                    with_redis = await limiter.admit(warm, Ask(1, 0))
                    if with_redis.local or not limiter.redis_up:
                        return False
                return True

            await until(both_on_redis, "both replicas limiting through the new master")

            # The budget moved with the data: $0.90 spent + $0.04 reserved, so one more
            # $0.04 fits and a third does not — whichever replica asks, with no new seed.
            await b.admit(budgeted, Ask(1, reserve))
            with pytest.raises(GatewayError) as refused:
                await a.admit(budgeted, Ask(1, reserve))
            assert refused.value.code == "insufficient_quota"
            assert seeds == ["budgeted"], "the budget came from the replica, not the ledger"

            # A fresh rpm bucket is shared: 2 a minute across both replicas, not 2 each.
            paced = Principal(key_name="paced", rpm=2)
            await a.admit(paced, Ask(1, 0))
            await b.admit(paced, Ask(1, 0))
            with pytest.raises(GatewayError) as limited:
                await a.admit(paced, Ask(1, 0))
            assert limited.value.status == 429

            promoted = sync_client(url)
            try:
                assert promoted.connection_pool.get_master_address()[1] == sentinels.replica.port
                assert promoted.exists(f"{{{prefix}:lim:paced}}:rpm")
            finally:
                promoted.close()
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
