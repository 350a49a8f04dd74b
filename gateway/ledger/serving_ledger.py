"""`state.repository` of a serving worker on a Postgres ledger, without SQLAlchemy until needed.

What runs at start-up or on the request path goes straight to asyncpg (gateway/ledger/pg.py):
the readiness ping, the missing-tables check, a key's month-to-date spend (the budget seed)
and the quality gate history. Everything else a LedgerRepository offers (usage and reports,
`engine` for files and batches, `farebox usage`) is the SQLAlchemy repository, created on
first use; the SQL below is the same as its (gateway/ledger/repository.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.ledger.pg import PgPool

if TYPE_CHECKING:
    from gateway.ledger.repository import LedgerRepository

LEDGER_TABLES = ("requests", "attempts")


class ServingLedger:
    def __init__(self, url: str, pool: PgPool, *, pool_size: int = 5) -> None:
        self.url = url
        self.pool = pool
        self._pool_size = pool_size
        self._repository: LedgerRepository | None = None

    @property
    def loaded(self) -> bool:
        """Whether the SQLAlchemy repository (and SQLAlchemy) has been loaded."""
        return self._repository is not None

    @property
    def sqlalchemy(self) -> LedgerRepository:
        if self._repository is None:
            from gateway.ledger.repository import LedgerRepository

            self._repository = LedgerRepository.create(self.url, pool_size=self._pool_size)
        return self._repository

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not define: usage, counts, engine, ….
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.sqlalchemy, name)

    async def ping(self) -> None:
        await self.pool.ping()

    async def missing_tables(self) -> list[str]:
        """Ledger tables the database lacks (i.e. `farebox migrate` has not run)."""
        return await self.pool.missing_tables(LEDGER_TABLES)

    async def key_spend_since(self, key_id: str, since: datetime) -> Decimal:
        """A key's metered spend since `since` (seeds its budget counter for the month)."""
        total = await self.pool.fetchval(
            "SELECT coalesce(sum(cost_usd), 0) FROM requests"
            " WHERE key_id = $1 AND received_at >= $2",
            key_id,
            since.astimezone(UTC),
        )
        return Decimal(total)

    async def gate_history(
        self, since: datetime, band_edges: Sequence[int], band_names: Sequence[str]
    ) -> list[tuple[str, str, str, bool, datetime, int]]:
        """Gated attempts since `since`: (route, deployment, input band, passed, day, count)."""
        args: list[Any] = [since.astimezone(UTC)]
        whens = []
        for edge, name in zip(band_edges, band_names, strict=False):
            args += [edge, name]
            whens.append(f"WHEN t.tokens < ${len(args) - 1}::bigint THEN ${len(args)}::text")
        args.append(band_names[-1])
        band = f"CASE {' '.join(whens)} ELSE ${len(args)}::text END"
        rows = await self.pool.fetch(
            f"SELECT t.route, t.deployment, {band} AS band, t.passed, t.day, count(*)"
            " FROM (SELECT r.route, a.deployment,"
            " a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens AS tokens,"
            " a.gate_outcome = 'pass' AS passed, date(a.started_at) AS day"
            " FROM attempts AS a JOIN requests AS r ON r.id = a.request_id"
            " WHERE a.gate_outcome IS NOT NULL AND a.started_at >= $1) AS t"
            " GROUP BY t.route, t.deployment, band, t.passed, t.day",
            *args,
        )
        return [
            (
                route,
                deployment,
                band_name,
                bool(ok),
                datetime(day.year, day.month, day.day, tzinfo=UTC),
                int(count),
            )
            for route, deployment, band_name, ok, day, count in rows
        ]

    async def close(self) -> None:
        """Last of the state's parts: the keys, drills and Responses reads share the pool."""
        if self._repository is not None:
            await self._repository.close()
        await self.pool.close()
