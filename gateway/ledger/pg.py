"""asyncpg, directly, for what a serving worker reads and writes on a Postgres ledger.

The serving worker must not import SQLAlchemy (issue #25: ~18 MB of resident memory per
worker): key lookups and the key-change poll, drill reads, the stored-Responses reads and
writes, the budget seed and the readiness ping run here on one small asyncpg pool. The admin
API, reports, files and batches keep their SQLAlchemy repositories, imported on first use.

The URL is the one `FAREBOX_DATABASE_URL` gives SQLAlchemy (`postgresql+asyncpg://…`); SQLite
ledgers keep SQLAlchemy everywhere (`is_postgres` tells them apart).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import orjson

# What the driver itself raises when the database (not the caller) is at fault; the
# SQLAlchemy-free half of gateway.ledger.db_errors.database_errors().
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    # Refused, reset, DNS; and TimeoutError (a subclass) from a connect or asyncio.timeout.
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    # aiosqlite re-raises sqlite3's own errors.
    sqlite3.Error,
)

# SQLAlchemy-only URL options that asyncpg would otherwise send to the server as settings.
_SQLALCHEMY_ONLY = frozenset({"prepared_statement_cache_size", "async_fallback"})


def is_postgres(url: str) -> bool:
    scheme = url.split(":", 1)[0].lower()
    return scheme.split("+", 1)[0] in ("postgresql", "postgres")


def asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://u:p@h:5432/db?x=y` -> `postgresql://u:p@h:5432/db?x=y`."""
    if not is_postgres(url):
        raise ValueError("not a PostgreSQL URL")
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _SQLALCHEMY_ONLY]
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), parts.fragment))


async def _init_connection(conn: Any) -> None:
    # JSON columns (SQLAlchemy's JSON type) in and out as Python values, as SQLAlchemy does.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class PgPool:
    """A lazily opened asyncpg pool: building it costs no connection, so `build_state` stays
    synchronous and a database that is down at start-up only fails the first query."""

    def __init__(
        self,
        url: str,
        *,
        # As many as the SQLAlchemy engine this replaces allowed (pool_size 5 + overflow 5):
        # key lookups on a cache miss and stored-Responses reads are on the request path.
        # min_size is 0, so an idle worker holds none open.
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 60.0,
    ) -> None:
        self.dsn = asyncpg_dsn(url)
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise asyncpg.InterfaceError("pool is closed")
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=self._max_size,
                    timeout=self._connect_timeout_s,
                    command_timeout=self._command_timeout_s,
                    # A connection a rare overlap of background reads opened is closed after a
                    # minute idle: a fleet of workers holds only what it uses (the 1 s polls
                    # keep theirs), and well before load-balancer / pgbouncer idle cuts.
                    max_inactive_connection_lifetime=60,
                    init=_init_connection,
                )
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        pool = await self.pool()
        conn = await pool.acquire(timeout=10)
        try:
            yield conn
        except BaseException:
            # A query cut short (a deadline, a cancelled request) leaves the connection in
            # the middle of a command: asyncpg's release would reset it and wait for the
            # server — which may be the very thing that hangs (a frozen database kept key
            # lookups past their 3 s deadline). Dropped instead; the pool opens another.
            conn.terminate()
            raise
        finally:
            await pool.release(conn, timeout=5)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.connection() as conn:
            status: str = await conn.execute(sql, *args)
            return status

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    async def missing_tables(self, names: Sequence[str]) -> list[str]:
        """Which of `names` the database lacks (in the connection's search path)."""
        found = await self.fetch(
            "SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NULL", list(names)
        )
        return [row[0] for row in found]

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def rowcount(status: str) -> int:
    """Rows an UPDATE/DELETE touched, from asyncpg's command tag ("UPDATE 3")."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
