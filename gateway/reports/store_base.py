"""The report store's engine and the helpers its queries share: UTC day buckets on both
dialects, window bounds, Decimal conversion and the Postgres report session settings."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Self

from sqlalchemy import (
    ColumnElement,
    Date,
    cast,
    func,
    inspect,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.repository import LedgerRepository
from gateway.ledger.rollups import flush_pending

ZERO = Decimal(0)


def dec(value: Any) -> Decimal:
    if value is None:
        return ZERO
    return value if isinstance(value, Decimal) else Decimal(str(value))


def opt_dec(value: Any) -> Decimal | None:
    return None if value is None else dec(value)


def day_of(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])  # SQLite's date() is text


def utc_bound(when: datetime, pg: bool) -> datetime:
    if when.tzinfo is None:
        raise ValueError("report windows must be timezone-aware")
    when = when.astimezone(UTC)
    # SQLite compares offset-less UTC text; Postgres compares instants.
    return when if pg else when.replace(tzinfo=None)


async def report_session(conn: Any) -> None:
    """Settings for one report transaction on Postgres (SET LOCAL: gone at commit).

    Measured on a 1M-attempt month: the default 4 MB work_mem makes the per-request
    aggregation sort on disk, and JIT compilation alone cost ~2 s of a 5 s query; with these
    the planner hashes in memory instead. A report is one batch query, so a larger work_mem
    for its few sort/hash nodes is safe where it would not be for the hot path.
    """
    await conn.execute(text("SET LOCAL work_mem = '128MB'"))
    await conn.execute(text("SET LOCAL jit = off"))


class StoreBase:
    """An engine on the ledger database, opened with the gateway's own engine settings."""

    def __init__(self, engine: AsyncEngine, *, rollups: bool = True) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"
        # Read the hourly rollups (gateway/reports/rollup_queries.py) for hour-aligned
        # windows; False reads the raw rows (drill-down, and the tests that compare both).
        self.rollups = rollups
        # A store is one report's: it flushes the Postgres writer's pending rows into the
        # rollups before its first rollup read (flush_rollups), once, not per query.
        self._flushed = False

    @classmethod
    def create(cls, url: str, *, rollups: bool = True) -> Self:
        # Same engine settings (SQLite pragmas, pool timeouts) as the gateway's ledger.
        return cls(LedgerRepository.create(url, pool_size=2).engine, rollups=rollups)

    async def _rollup_window(
        self, start: datetime, end: datetime
    ) -> tuple[datetime, datetime] | None:
        """The window's bounds when the rollups can answer it (whole UTC hours), else None:
        the raw rows answer a ragged window. The store's first rollup read flushes."""
        if not self.rollups:
            return None
        lo, hi = utc_bound(start, self._pg), utc_bound(end, self._pg)
        if any((t.minute, t.second, t.microsecond) != (0, 0, 0) for t in (lo, hi)):
            return None
        if not self._flushed:
            await self.flush_rollups()
        return lo, hi

    async def flush_rollups(self) -> None:
        """Add every row the Postgres writer has left pending to the rollups
        (gateway/ledger/rollup_compactor.py), so they are as exact as the raw rows: called
        by the store's first rollup read, or again by a caller that keeps the store across
        writes. Nothing to do on SQLite, whose writer adds to the rollups at once."""
        if self._pg:
            async with self.engine.connect() as conn:
                await flush_pending(conn)
        self._flushed = True

    async def close(self) -> None:
        await self.engine.dispose()

    def _utc_day(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        if self._pg:
            # date() of a timestamptz follows the session time zone; pin it to UTC.
            return cast(func.timezone("UTC", column), Date)
        return func.date(column)  # SQLite stores UTC text already

    async def missing_tables(self) -> list[str]:
        names = ("requests", "attempts", "invoice_lines", "reconciliations")

        def check(sync_conn: Any) -> list[str]:
            inspector = inspect(sync_conn)
            return [n for n in names if not inspector.has_table(n)]

        async with self.engine.connect() as conn:
            return await conn.run_sync(check)
