"""The only module that speaks SQL to the ledger (reports/ aside).

Writes are idempotent by primary key: the batch writer may replay a spooled batch any number
of times. Every database error propagates so the caller can spool the batch to disk.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    case,
    cast,
    event,
    func,
    inspect,
    literal_column,
    null,
    select,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.ledger.events import PROVIDER, AttemptRow, RequestRow
from gateway.ledger.models import COST, attempts_table, requests_table
from gateway.ledger.success import SUCCESS_FLAG, SUCCESSFUL

_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRow))
_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(AttemptRow))
# One C-level call per row instead of a Python loop over ~25 attributes.
_GETTERS = {
    "requests": operator.attrgetter(*_REQUEST_FIELDS),
    "attempts": operator.attrgetter(*_ATTEMPT_FIELDS),
}
_TOKEN_COLUMNS = (
    "input_uncached_tokens",
    "cached_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One row of `farebox usage`.

    `group` is the route, key id or deployment (None for requests made without a key, or,
    by deployment, requests no deployment answered). Token and cost totals cover every
    attempt (retries, fallbacks, hedges are all billed). `cost_usd` sums only priced
    attempts; `unpriced_attempts` says how many were left out, so an unknown price never
    silently reads as $0.

    By deployment, attempts, tokens and cost are the deployment's own attempts, while
    `requests` and `successful` count the requests it answered (their final deployment):
    `requests` and `successful` then sum to the same totals in every grouping.
    """

    group: str | None
    requests: int
    attempts: int
    input_uncached_tokens: int
    cached_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal
    unpriced_attempts: int
    # Successful requests (gateway.ledger.success); by deployment, those it answered.
    successful: int = 0
    # Attempts that failed (any error class): the attempt-level error rate, not the
    # complement of `successful`.
    failed_attempts: int = 0

    @property
    def cost_per_success(self) -> Decimal | None:
        """Spend divided by successes: what one good answer really costs (failed and
        escalated attempts included)."""
        if not self.successful:
            return None
        return self.cost_usd / self.successful


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
    def create(cls, url: str, *, pool_size: int = 5) -> LedgerRepository:
        if make_url(url).get_backend_name() == "sqlite":
            ensure_sqlite_directory(url)
            engine = create_async_engine(url, pool_pre_ping=True)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(
                url,
                pool_pre_ping=True,
                pool_size=pool_size,
                max_overflow=pool_size,
                # Recycle before typical load-balancer / pgbouncer idle cuts.
                pool_recycle=1800,
                # Fail fast when the database is down so the writer spools instead of stalling.
                pool_timeout=10,
                connect_args={"timeout": 5, "command_timeout": 60},
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
            await self._copy_batch(batches)
            return
        async with self.engine.begin() as conn:
            for table, fields, items in batches:
                rows = [_row(item, fields) for item in items]
                await conn.execute(self._insert_ignore(table).on_conflict_do_nothing(), rows)

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
                    for table, _, _ in batches
                )
            )
            for table, fields, items in batches:
                records = list(map(_GETTERS[table.name], items))
                await raw.copy_records_to_table(
                    _stage(table), records=records, columns=list(fields)
                )
            await raw.execute(
                ";".join(
                    f"INSERT INTO {table.name} ({', '.join(fields)}) "
                    f"SELECT {', '.join(fields)} FROM {_stage(table)} "
                    "ON CONFLICT (id) DO NOTHING"
                    for table, fields, _ in batches
                )
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
        return _decimal(total)

    async def usage(self, since: datetime, by: str) -> list[UsageLine]:
        """Totals since `since`, grouped by route, key or deployment, most expensive first."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        # SQLite stores timestamps as text without an offset, so compare in UTC everywhere.
        since = since.astimezone(UTC)
        if by in ("route", "key"):
            stmt = _usage_by_request(since, by)
        elif by == "deployment":
            stmt = _usage_by_deployment(since)
        else:
            raise ValueError(f"by must be route, key or deployment, not {by!r}")
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            rows = result.all()
        return [
            UsageLine(
                group=row[0],
                requests=int(row[1] or 0),
                attempts=int(row[2] or 0),
                input_uncached_tokens=int(row[3] or 0),
                cached_read_tokens=int(row[4] or 0),
                cache_write_tokens=int(row[5] or 0),
                output_tokens=int(row[6] or 0),
                reasoning_tokens=int(row[7] or 0),
                cost_usd=_decimal(row[8]),
                unpriced_attempts=int(row[9] or 0),
                successful=int(row[10] or 0),
                failed_attempts=int(row[11] or 0),
            )
            for row in rows
        ]


def _stage(table: Table) -> str:
    return f"farebox_stage_{table.name}"


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


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    # SQLite sums NUMERIC as REAL; go through str so the float's repr, not its binary
    # expansion, becomes the Decimal.
    return Decimal(str(value))


def _attempt_aggregates(
    group: ColumnElement[Any], requests: ColumnElement[Any], successful: ColumnElement[Any]
) -> tuple[list[ColumnElement[Any]], ColumnElement[Any]]:
    """Select list for the per-request groupings, plus the expression to rank groups by cost."""
    a = attempts_table.c
    tokens = [func.coalesce(func.sum(a[name]), 0) for name in _TOKEN_COLUMNS]
    cost = func.sum(a.cost_usd)
    # a.id is NULL for a request without attempts (LEFT JOIN): that is not an unpriced attempt.
    unpriced = func.coalesce(
        func.sum(case((a.id.is_not(None) & a.cost_usd.is_(None), 1), else_=0)), 0
    )
    failed = func.coalesce(func.sum(case((a.error_class.is_not(None), 1), else_=0)), 0)
    columns = [
        group,
        requests,
        func.count(a.id),
        *tokens,
        type_coerce(cost, COST),
        unpriced,
        successful,
        failed,
    ]
    return columns, func.coalesce(cost, 0).desc()


def _usage_by_request(since: datetime, by: str) -> Select[Any]:
    r = requests_table.c
    group = r.route if by == "route" else r.key_id
    successful = func.count(func.distinct(case((SUCCESSFUL, r.id))))
    columns, by_cost = _attempt_aggregates(group, func.count(func.distinct(r.id)), successful)
    # LEFT JOIN keeps requests that never reached an upstream (rejected, no route) in the count.
    return (
        select(*columns)
        .select_from(requests_table.outerjoin(attempts_table, attempts_table.c.request_id == r.id))
        .where(r.received_at >= since)
        .group_by(group)
        .order_by(by_cost, group)
    )


def _usage_by_deployment(since: datetime) -> Select[Any]:
    """Attempts, tokens and cost where they were spent (each attempt's deployment); requests
    and successes where they were answered (each request's final deployment, None when no
    deployment answered). So the requests and successes of every grouping add up to the same
    totals, while a deployment's cost still includes its failed attempts."""
    a, r = attempts_table.c, requests_table.c
    zero: ColumnElement[Any] = literal_column("0")
    no_cost = cast(null(), COST)
    spent = (
        select(
            a.deployment.label("grp"),
            zero.label("requests"),
            zero.label("successful"),
            func.count().label("attempts"),
            *(func.sum(a[name]).label(name) for name in _TOKEN_COLUMNS),
            func.sum(a.cost_usd).label("cost"),
            func.sum(case((a.cost_usd.is_(None), 1), else_=0)).label("unpriced"),
            func.sum(case((a.error_class.is_not(None), 1), else_=0)).label("failed"),
        )
        .where(a.started_at >= since)
        .group_by(a.deployment)
    )
    answered = (
        select(
            r.final_deployment.label("grp"),
            func.count().label("requests"),
            func.sum(SUCCESS_FLAG).label("successful"),
            zero.label("attempts"),
            *(zero.label(name) for name in _TOKEN_COLUMNS),
            no_cost.label("cost"),
            zero.label("unpriced"),
            zero.label("failed"),
        )
        .where(r.received_at >= since)
        .group_by(r.final_deployment)
    )
    u = union_all(spent, answered).subquery()
    cost = func.sum(u.c.cost)

    def total(name: str) -> ColumnElement[Any]:
        return func.coalesce(func.sum(u.c[name]), 0)

    return (
        select(
            u.c.grp,
            total("requests"),
            total("attempts"),
            *(total(name) for name in _TOKEN_COLUMNS),
            type_coerce(cost, COST),
            total("unpriced"),
            total("successful"),
            total("failed"),
        )
        .group_by(u.c.grp)
        .order_by(func.coalesce(cost, 0).desc(), u.c.grp)
    )
