"""FAREBOX_REDIS_URL's three forms (gateway/runtime/redis_url.py) and the client each makes."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis, RedisCluster

from gateway.runtime.redis import SentinelMaster, redis_client
from gateway.runtime.redis_url import CLUSTER, SENTINEL, SINGLE, parse_redis_url


def test_single_node_urls_are_left_to_redis_py() -> None:
    for url in ("redis://localhost:6379/2", "rediss://u:p@h:6380/0", "unix:///tmp/r.sock"):
        target = parse_redis_url(url)
        assert target.kind == SINGLE and target.url == url


def test_a_cluster_url_lists_start_up_nodes() -> None:
    target = parse_redis_url("redis+cluster://user:s%3Acret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert target.kind == CLUSTER
    assert target.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (target.username, target.password) == ("user", "s:cret")
    assert not target.tls
    assert parse_redis_url("rediss+cluster://h:1/0").tls


def test_a_sentinel_url_names_the_service_and_database() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:26379,s2/mymaster/3?sentinel_password=sp")
    assert target.kind == SENTINEL
    assert target.hosts == (("s1", 26379), ("s2", 26379))
    assert (target.service, target.db) == ("mymaster", 3)
    assert (target.username, target.password) == (None, "pw")
    assert target.sentinel_password == "sp"
    assert parse_redis_url("redis+sentinel://s1/mymaster").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "no scheme"),
        ("redis+shard://h:1", "unknown Redis URL scheme"),
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster:///", "names no host"),
        ("redis+cluster://h:port", "not a port number"),
        ("redis+sentinel://s1:26379", "names the master's service"),
        ("redis+sentinel://s1/m/x", "not a database number"),
        ("redis+cluster://h:1?timeout=3", "unsupported option"),
    ],
)
def test_unusable_urls_fail_with_a_reason(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)


def test_the_client_matches_the_topology_and_keeps_the_timeout_policy() -> None:
    async def made() -> None:
        single = redis_client("redis://127.0.0.1:1/0", timeout_s=0.25)
        assert isinstance(single, Redis)
        cluster = redis_client("redis+cluster://127.0.0.1:1,127.0.0.1:2", timeout_s=0.25)
        assert isinstance(cluster, RedisCluster)
        assert cluster.retry.get_retries() == 0  # no retry: a request never waits twice
        subscriber = redis_client("redis+cluster://127.0.0.1:1", retry_once=True)
        assert isinstance(subscriber, RedisCluster) and subscriber.retry.get_retries() == 1
        master = redis_client("redis+sentinel://127.0.0.1:1/svc/2", timeout_s=0.25)
        assert isinstance(master, SentinelMaster)
        kwargs = master.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25 and kwargs["db"] == 2
        for client in (single, cluster, subscriber, master):
            await client.aclose()

    asyncio.run(made())
