"""Shared fixtures: a real simulator and a real gateway over loopback HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from gateway.ledger.migrate import upgrade
from gateway.settings import Settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.redis_topologies import RedisCluster, start_redis_cluster, sync_client
from tests.services import PostgresServer, RedisServer, start_postgres, start_redis
from tests.simulator import start_simulator

# Property tests check what a function returns, never how fast: no per-example deadline
# (test_cost.py failed once on a loaded machine and passed on every rerun: the default
# 200 ms deadline is the only timing in it).
settings.register_profile("farebox", deadline=None)
settings.load_profile("farebox")

SIM_KEY = "sim-secret-key"
MIGRATED = "farebox_head"  # the session's template database, at the newest migration
CLIENT_KEY = "sk-test-client-0001"

# One deployment per upstream behaviour the tests need; the simulator reads the directive
# after `::` in the upstream model name.
GATEWAY_YAML = """
auth:
  keys:
    - {name: tests, key: "%(client_key)s"}
server:
  max_body_bytes: 65536
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
  sim-badkey: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: wrong-key}
  nowhere: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1", api_key: x}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
  cached@sim: {provider: sim, model: "sim-cached::cached=6,reasoning=3,tokens=12"}
  embed@sim: {provider: sim, model: sim-embed}
  limited@sim: {provider: sim, model: "sim-limited::status=429,retry_after=7"}
  broken@sim: {provider: sim, model: "sim-broken::status=500"}
  overloaded@sim: {provider: sim, model: "sim-overloaded::status=529"}
  hang@sim: {provider: sim, model: "sim-hang::hang"}
  cut@sim: {provider: sim, model: "sim-cut::cut_after=3,tokens=10"}
  midstream@sim: {provider: sim, model: "sim-mid::midstream_error=2,tokens=10"}
  malformed@sim: {provider: sim, model: "sim-malformed::malformed"}
  short-ctx@sim: {provider: sim, model: "sim-short::context_length"}
  badkey@sim-badkey: {provider: sim-badkey, model: sim-small-2}
  down@nowhere: {provider: nowhere, model: nothing}
  twin-a@sim: {provider: sim, model: sim-twin}
  twin-b@sim: {provider: sim, model: sim-twin}
routes:
  chat: {targets: [small@sim], workload: tests}
  cached: {targets: [cached@sim]}
  embeddings: {targets: [embed@sim]}
  limited: {targets: [limited@sim]}
  broken: {targets: [broken@sim]}
  overloaded: {targets: [overloaded@sim]}
  hang: {targets: [hang@sim], timeouts: {ttft_ms: 300, total_ms: 600}}
  cut: {targets: [cut@sim]}
  midstream: {targets: [midstream@sim]}
  malformed: {targets: [malformed@sim]}
  short-ctx: {targets: [short-ctx@sim]}
  badkey: {targets: [badkey@sim-badkey]}
  down: {targets: [down@nowhere], timeouts: {connect_ms: 500, total_ms: 2000}}
"""


@pytest.fixture(scope="session")
def simulator() -> Iterator[str]:
    url, stop = start_simulator(require_key=SIM_KEY)
    try:
        yield url
    finally:
        stop()


def sqlite_settings(directory: Path, **overrides: Any) -> Settings:
    """Settings for a gateway whose ledger is a fresh, migrated SQLite file."""
    url = f"sqlite+aiosqlite:///{directory / 'ledger.db'}"
    upgrade(url)
    # In-process gateways have no metrics listener (`farebox serve` opens it): /metrics on
    # the API port, as FAREBOX_METRICS_ON_API_PORT=open serves it.
    overrides.setdefault("metrics_on_api_port", "open")
    return Settings(
        database_url=url, spool_dir=str(directory / "spool"), master_key=None, **overrides
    )


@pytest.fixture(scope="session")
def gateway(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(
        GATEWAY_YAML % {"client_key": CLIENT_KEY}, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY}
    )
    settings = sqlite_settings(tmp_path_factory.mktemp("gateway"))
    with running_gateway(config, settings) as running:
        yield running


# Real PostgreSQL and Redis, started once per session on free ports, lazily: a run that
# never asks for them never starts them. A missing binary is a failure, not a skip —
# `make test` installs both via scripts/ensure-services.sh.


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    # Migrated once: each test's database is a copy of this one (see pg_url).
    server.create_database(MIGRATED)
    upgrade(server.url(MIGRATED))
    server.make_template(MIGRATED)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database per test, migrated to head (a copy of the session's migrated one)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres.create_database(name, template=MIGRATED)
    url = postgres.url(name)
    try:
        yield url
    finally:
        # A test may leave the server stopped on purpose (outage tests): bring it back.
        postgres.start()
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A local 3-master Redis Cluster (tests/redis_topologies.py), started on first use."""
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    """The worker's Redis — one node, or a cluster for a test marked
    tests.redis_topologies.on_every_topology — without the breakers
    earlier tests left open in it: a gateway adopts those at start-up (a test tripping
    broken@sim's would otherwise change what the next test on this worker sees of its own
    broken@sim)."""
    topology = getattr(request, "param", "node")
    fixture = {"node": "redis_session", "cluster": "redis_cluster_session"}[topology]
    server: RedisServer | RedisCluster = request.getfixturevalue(fixture)
    server.start()  # a test may have left it stopped (outage tests restart it)
    client = sync_client(server.url)
    try:
        # Open breakers are `{prefix:breaker}:<deployment>` (hash-tagged for a cluster);
        # `prefix:breaker:*` was their name before.
        for pattern in ("{farebox:breaker}*", "farebox:breaker*"):
            for key in client.scan_iter(match=pattern):
                client.delete(key)
    finally:
        client.close()
    return server


@pytest.fixture(autouse=True)
def every_upstream_call_is_metered() -> Iterator[None]:
    """Attempts equal upstream calls, always: an in-process gateway that started a call
    (journalled its intent) and never metered it fails whichever test made it happen."""
    from gateway.observability import metrics

    before = metrics.UNMETERED_CALLS._value.get()
    yield
    assert metrics.UNMETERED_CALLS._value.get() == before, "an upstream call got no attempt row"
