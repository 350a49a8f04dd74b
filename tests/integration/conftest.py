"""Real PostgreSQL and Redis for integration tests, started once per session on free ports.

Servers start lazily: a run that never asks for them never starts them. A missing binary is a
failure, not a skip — `make test` installs both via scripts/ensure-services.sh.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from gateway.ledger.migrate import upgrade
from tests.services import PostgresServer, RedisServer, start_postgres, start_redis


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database per test, migrated to head."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres.create_database(name)
    url = postgres.url(name)
    upgrade(url)
    try:
        yield url
    finally:
        # A test may leave the server stopped on purpose (outage tests): bring it back.
        postgres.start()
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()
