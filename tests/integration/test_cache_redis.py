"""The response cache on a real Redis: entries shared by two gateways (replicas), and an
outage that bypasses the cache (requests still served, `x-farebox-cache: BYPASS`, a metric)
until the background probe finds Redis again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.redis_topologies import on_every_topology, sync_client
from tests.services import RedisServer
from tests.simulator import simulator_stats
from tests.waiting import wait_until

KEY = "sk-cache-redis-01"
CONFIG = """
auth:
  keys:
    - {name: redis-cache, key: sk-cache-redis-01}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  r@sim: {provider: sim, model: "sim-cache-redis::tokens=6", price: {input: 1, output: 2}}
routes:
  chat: {targets: [r@sim], cache: {ttl_s: 60}}
"""


@pytest.fixture
def replicas(
    simulator: str, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    redis_url = redis_server.url
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = sqlite_settings(tmp_path / "one", redis_url=redis_url)
    two = sqlite_settings(tmp_path / "two", redis_url=redis_url)
    with running_gateway(config, one) as a, running_gateway(config, two) as b:
        yield a, b


def ask(gw: RunningGateway, messages: Any) -> str:
    c = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=messages, temperature=0
    )
    assert raw.parse().choices[0].message.content
    return raw.headers["x-farebox-cache"]


def upstream(simulator: str) -> int:
    return int(simulator_stats(simulator)["requests"].get("sim-cache-redis", {}).get("total", 0))


def question() -> Any:
    return [{"role": "user", "content": f"Tell me about {uuid.uuid4().hex}"}]


def entries(redis_server: RedisServer) -> int:
    with sync_client(redis_server.url) as r:
        return len(list(r.scan_iter(match="farebox:cache:*")))


def stored(redis_server: RedisServer, before: int) -> None:
    """The store is a background task after the answer went out: wait until it landed."""
    wait_until(lambda: entries(redis_server) > before, "the entry to reach Redis")


def errors() -> float:
    return REGISTRY.get_sample_value("farebox_cache_redis_errors_total") or 0.0


@on_every_topology
def test_replicas_share_entries_through_redis(
    replicas: tuple[RunningGateway, RunningGateway], redis_server: RedisServer, simulator: str
) -> None:
    a, b = replicas
    messages = question()
    before, kept = upstream(simulator), entries(redis_server)
    assert ask(a, messages) == "MISS"
    stored(redis_server, kept)
    assert ask(b, messages) == "HIT"
    assert upstream(simulator) == before + 1


@on_every_topology
def test_redis_down_bypasses_the_cache_then_recovers(
    replicas: tuple[RunningGateway, RunningGateway], redis_server: RedisServer, simulator: str
) -> None:
    a, _ = replicas
    messages = question()
    kept = entries(redis_server)
    assert ask(a, messages) == "MISS"
    stored(redis_server, kept)
    assert ask(a, messages) == "HIT"

    failed_before = errors()
    redis_server.stop()
    try:
        before = upstream(simulator)
        started = time.monotonic()
        states = [ask(a, messages) for _ in range(3)]
        took = time.monotonic() - started
        # Served every time (from upstream), never an error; only the first request waited
        # on Redis (a bounded timeout), the others skipped it while the probe runs.
        assert states == ["BYPASS"] * 3
        assert upstream(simulator) == before + 3
        assert errors() >= failed_before + 1
        assert took < 3.0
        assert REGISTRY.get_sample_value("farebox_cache_redis_up") == 0
    finally:
        redis_server.start()

    wait_until(
        lambda: REGISTRY.get_sample_value("farebox_cache_redis_up") == 1, "the probe to find Redis"
    )
    # Redis restarted empty (no persistence in the test server): a miss, then a hit again.
    assert ask(a, messages) == "MISS"
    stored(redis_server, 0)
    assert ask(a, messages) == "HIT"
