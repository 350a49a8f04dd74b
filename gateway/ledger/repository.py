"""The only module that speaks SQL to the ledger (reports/ aside; the `farebox usage`
queries are built in gateway.ledger.usage and run here).

Writes are idempotent by primary key: the batch writer may replay a spooled batch any number
of times. Every database error propagates so the caller can spool the batch to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Table,
    case,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.pending_sql import pg_merge
from gateway.ledger.rollup_layout import PENDING
from gateway.ledger.rollups import add_inserted, add_pending, flush_pending, retrying
from gateway.ledger.rollups_usage import merged, next_hour, usage_rollup_query
from gateway.ledger.usage import UsageLine, decimal_of, usage_line, usage_query
from gateway.ledger_rows import ATTEMPT_FIELDS, PROVIDER, REQUEST_FIELDS, AttemptRow, RequestRow

# The rows are tuples in these columns' order (gateway/ledger_rows.py): COPY takes them as
# they are.
_REQUEST_FIELDS = REQUEST_FIELDS
_ATTEMPT_FIELDS = ATTEMPT_FIELDS


def ensure_sqlite_directory(url: str) -> None:
    """SQLite will not create missing directories, and the default URL points into var/."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets report queries read while the batch writer writes; NORMAL is durable enough
    # under WAL (a crash may lose the last commit, never corrupt) and much faster than FULL.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


class LedgerRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self._copy = dialect.name == "postgresql" and dialect.driver == "asyncpg"
        self._insert_ignore = pg_insert if dialect.name == "postgresql" else sqlite_insert

    @classmethod
    def create(
        cls, url: str, *, pool_size: int = 5, command_timeout_s: float | None = 60
    ) -> LedgerRepository:
        # hide_parameters: statement parameters appear in neither SQLAlchemy's log lines (a
        # root logger at DEBUG turns them on) nor its exception messages. This engine also
        # writes stored Responses, whose parameters are the conversations themselves.
        if make_url(url).get_backend_name() == "sqlite":
            ensure_sqlite_directory(url)
            engine = create_async_engine(url, pool_pre_ping=True, hide_parameters=True)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(
                url,
                pool_pre_ping=True,
                hide_parameters=True,
                pool_size=pool_size,
                max_overflow=pool_size,
                # Recycle before typical load-balancer / pgbouncer idle cuts.
                pool_recycle=1800,
                # Fail fast when the database is down so the writer spools instead of stalling.
                pool_timeout=10,
                connect_args={"timeout": 5, "command_timeout": command_timeout_s},
            )
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def missing_tables(self) -> list[str]:
        """Ledger tables the database lacks (i.e. `farebox migrate` has not run)."""

        def check(sync_conn: Any) -> list[str]:
            inspector = inspect(sync_conn)
            return [
                t.name for t in (requests_table, attempts_table) if not inspector.has_table(t.name)
            ]

        async with self.engine.connect() as conn:
            return await conn.run_sync(check)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def write_batch(
        self, requests: Sequence[RequestRow], attempts: Sequence[AttemptRow]
    ) -> None:
        """Insert both kinds of rows in one transaction; rows whose id exists are skipped."""
        if not requests and not attempts:
            return
        batches = [
            (table, fields, items)
            for table, fields, items in (
                (requests_table, _REQUEST_FIELDS, requests),
                (attempts_table, _ATTEMPT_FIELDS, attempts),
            )
            if items
        ]
        if self._copy:
            await retrying(lambda: self._copy_batch(batches))
            return
        # One transaction: the rows, then the rollups of exactly the rows it inserted.
        async with self.engine.begin() as conn:
            await self._insert_counted(conn, batches)

    async def _copy_batch(
        self, batches: list[tuple[Table, tuple[str, ...], Sequence[Any]]]
    ) -> None:
        # COPY into a per-connection staging table, then one INSERT ... SELECT ... ON CONFLICT
        # DO NOTHING. Measured against SQLAlchemy executemany at 500-row batches: ~1.5x the
        # rows/s and half the client CPU per row, which matters because the writer shares the
        # gateway's event loop. Staging tables are created once per connection and emptied on
        # commit, so no catalog churn per batch; explicit column lists keep a stale staging
        # table harmless after a migration adds columns.
        async with self.engine.connect() as conn:
            try:
                await self._copy_on(conn, batches)
            except BaseException:
                # A COPY cut by a dying server can leave asyncpg mid-protocol; never hand
                # that connection to the next batch.
                await conn.invalidate()
                raise

    async def _copy_on(
        self, conn: AsyncConnection, batches: list[tuple[Table, tuple[str, ...], Sequence[Any]]]
    ) -> None:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        # asyncpg's own transaction: SQLAlchemy has not begun one on this connection (it
        # begins lazily on its first statement), so the two never nest.
        async with raw.transaction():
            await raw.execute(
                ";".join(
                    f"CREATE TEMP TABLE IF NOT EXISTS {_stage(table)} "
                    f"(LIKE {table.name}) ON COMMIT DELETE ROWS"
                    for table in (requests_table, attempts_table)
                )
            )
            for table, fields, items in batches:
                await raw.copy_records_to_table(_stage(table), records=items, columns=list(fields))
            # Both staging tables exist and are read (an empty one adds nothing): one
            # statement inserts the rows and leaves what it inserted pending for the
            # rollups' compactor (pending_sql.pg_merge).
            await raw.fetchrow(_PG_MERGE)  # prepared and cached (see pg_sink)

    async def insert_on(
        self,
        conn: AsyncConnection,
        requests: Sequence[RequestRow],
        attempts: Sequence[AttemptRow],
    ) -> None:
        """Insert ledger rows inside the caller's transaction (rows whose id exists are
        skipped): for writes that must commit together with other state, such as a batch
        line's rows and the line's answer (gateway/ledger/batches_repository.py). The rows
        it inserted are, in the same transaction, added to the rollups (SQLite) or left
        pending for the compactor (Postgres), as the batch writer does."""
        await self._insert_counted(
            conn,
            [
                (table, fields, items)
                for table, fields, items in (
                    (requests_table, _REQUEST_FIELDS, requests),
                    (attempts_table, _ATTEMPT_FIELDS, attempts),
                )
                if items
            ],
        )

    async def _insert_counted(
        self, conn: AsyncConnection, batches: list[tuple[Table, tuple[str, ...], Sequence[Any]]]
    ) -> None:
        """Insert (rows whose id exists skipped), then add to the rollups exactly the rows
        the insert returned (Postgres: leave them pending for the compactor, never holding
        rollup rows' locks in the caller's transaction): a replayed row is not returned, so
        it adds nothing."""
        inserted: dict[str, list[Any]] = {"requests": [], "attempts": []}
        for table, fields, items in batches:
            rows = [_row(item, fields) for item in items]
            at = table.c[PENDING[table.name][1]]
            stmt = self._insert_ignore(table).on_conflict_do_nothing().returning(table.c.id, at)
            inserted[table.name] = [tuple(row) for row in await conn.execute(stmt, rows)]
        if conn.dialect.name == "postgresql":
            await add_pending(conn, inserted["requests"], inserted["attempts"])
        else:
            await add_inserted(
                conn, (i for i, _ in inserted["requests"]), (i for i, _ in inserted["attempts"])
            )

    async def counts(self) -> tuple[int, int]:
        async with self.engine.connect() as conn:
            n_requests = await conn.scalar(select(func.count()).select_from(requests_table))
            n_attempts = await conn.scalar(select(func.count()).select_from(attempts_table))
        return int(n_requests or 0), int(n_attempts or 0)

    async def gate_history(
        self, since: datetime, band_edges: Sequence[int], band_names: Sequence[str]
    ) -> list[tuple[str, str, str, bool, datetime, int]]:
        """Gated attempts since `since`: (route, deployment, input band, passed, day, count).

        Counted per UTC day so the caller can decay them by age; the band comes from the
        attempt's own input tokens, the same bands the router uses.
        """
        a, r = attempts_table.c, requests_table.c
        tokens = a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens
        band = case(
            *((tokens < edge, name) for edge, name in zip(band_edges, band_names, strict=False)),
            else_=band_names[-1],
        )
        passed = a.gate_outcome == "pass"
        day = func.date(a.started_at)
        stmt = (
            select(r.route, a.deployment, band, passed, day, func.count())
            .select_from(attempts_table.join(requests_table, r.id == a.request_id))
            .where(a.gate_outcome.is_not(None), a.started_at >= since)
            .group_by(r.route, a.deployment, band, passed, day)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out = []
        for route, deployment, band_name, ok, when, count in rows:
            if isinstance(when, str):  # SQLite's date() is text
                when = datetime.fromisoformat(when)
            elif not isinstance(when, datetime):  # Postgres: a date
                when = datetime(when.year, when.month, when.day)
            out.append((route, deployment, band_name, bool(ok), when.replace(tzinfo=UTC), count))
        return out

    async def token_sums_by_model(self) -> dict[str, dict[str, int]]:
        """Provider-reported token totals per upstream model, in the OpenAI usage vocabulary.

        Estimated rows are left out so the totals can be compared with what providers counted.
        """
        a = attempts_table.c
        stmt = (
            select(
                a.upstream_model,
                func.sum(a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens),
                func.sum(a.cached_read_tokens),
                func.sum(a.cache_write_tokens),
                func.sum(a.output_tokens),
                func.sum(a.reasoning_tokens),
            )
            .where(a.token_source == PROVIDER)
            .group_by(a.upstream_model)
        )
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            rows = result.all()
        return {
            model: {
                "prompt": int(prompt or 0),
                "cached": int(cached or 0),
                "cache_write": int(cache_write or 0),
                "completion": int(completion or 0),
                "reasoning": int(reasoning or 0),
            }
            for model, prompt, cached, cache_write, completion, reasoning in rows
        }

    async def key_spend_since(self, key_id: str, since: datetime) -> Decimal:
        """A key's metered spend since `since` (seeds its budget counter for the month)."""
        r = requests_table.c
        stmt = select(func.coalesce(func.sum(r.cost_usd), 0)).where(
            r.key_id == key_id, r.received_at >= since.astimezone(UTC)
        )
        async with self.engine.connect() as conn:
            total = (await conn.execute(stmt)).scalar_one()
        return decimal_of(total)

    async def usage(self, since: datetime, by: str, *, rollups: bool = True) -> list[UsageLine]:
        """Totals since `since`, grouped by route, key or deployment, most expensive first:
        the whole hours from the rollups, the ragged first one from the raw rows
        (gateway/ledger/rollups_usage.py); `rollups=False` reads raw rows only."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        # SQLite stores timestamps as text without an offset, so compare in UTC everywhere.
        since = since.astimezone(UTC)
        if not rollups:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(usage_query(since, by))).all()
            return [usage_line(row) for row in rows]
        cut = next_hour(since)
        async with self.engine.connect() as conn:
            await flush_pending(conn)  # the rollups as exact as the raw rows (Postgres)
            ragged = (await conn.execute(usage_query(since, by, until=cut))).all()
            whole = (await conn.execute(usage_rollup_query(cut, by))).all()
        return merged(usage_line(row) for row in (*ragged, *whole))


def _stage(table: Table) -> str:
    return f"farebox_stage_{table.name}"


_PG_MERGE = pg_merge(
    *(
        (table.name, _stage(table), list(fields))
        for table, fields in ((requests_table, _REQUEST_FIELDS), (attempts_table, _ATTEMPT_FIELDS))
    )
)


def _row(item: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    # dataclasses.asdict deep-copies every value; a flat getattr is several times cheaper.
    row = {name: getattr(item, name) for name in fields}
    # SQLite keeps timestamps as offset-less text: store UTC so comparisons stay correct.
    # (A naive value is already taken as UTC; astimezone would read it as local time.)
    for name in ("received_at", "started_at"):
        value = row.get(name)
        if value is not None and value.tzinfo is not None:
            row[name] = value.astimezone(UTC)
    return row
