"""Keeping the rollups (gateway/ledger/models_rollups.py) exact: the writer's increment,
retries on deadlock, the flush before a read, and the rebuild of a window from raw rows.

Exactness rests on one rule: a rollup only ever adds the rows an insert actually wrote,
once. On Postgres the writers (pending_sql.pg_merge for the COPY sinks, `add_pending` for a
batch line's rows written in the caller's transaction) record the rows their insert
returned as pending, in the same transaction, and the compactor
(gateway/ledger/rollup_compactor.py) adds them later, deleting each pending row in the
transaction that adds it. SQLite (one writer, the demo) adds the rows its insert returned
at once (`add_inserted`). A replayed batch inserts nothing, so it adds nothing.

The request-grain rollups read a request together with its attempts: they rely on the writer
handing a request with all its attempts in one batch (LedgerWriter.record takes both, and
spool and journal replays carry whole batches), which the compactor keeps by taking whole
writer transactions. The attempt-grain rollups need nothing.

Whatever reads the rollups as the truth on Postgres flushes first (`flush_pending`: the
reports, gateway/reports/store_base.py; retention; `rebuild_live`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.ledger import rollups_sql
from gateway.ledger.models_rollups import ROLLUP_TABLES
from gateway.ledger.retry import is_retryable as is_retryable
from gateway.ledger.retry import retrying as retrying
from gateway.ledger.rollup_compactor import LOCK_KEY, SESSION, compact_statement
from gateway.ledger.rollup_layout import PENDING

_NEW = {"requests": "farebox_rollup_new_requests", "attempts": "farebox_rollup_new_attempts"}


async def add_pending(
    conn: AsyncConnection, requests: Iterable[tuple[str, datetime]], attempts: Iterable[Any]
) -> None:
    """Postgres: record as pending (for the compactor) the rows with these (id, timestamp),
    which this transaction just inserted (an insert's RETURNING, so never a row that was
    there before), tagged with this transaction's id as pg_merge does."""
    for table, rows in (("requests", list(requests)), ("attempts", list(attempts))):
        if rows:
            pending, at = PENDING[table]
            await conn.execute(
                text(
                    f"INSERT INTO {pending} (txn, id, {at}) "
                    f"VALUES (pg_current_xact_id()::text::bigint, :id, :at)"
                ),
                [{"id": i, "at": when} for i, when in rows],
            )


async def flush_pending(conn: AsyncConnection) -> int:
    """Postgres: compact until every row pending when called is in the rollups (the
    compactor's `flush` on a SQLAlchemy connection, one transaction per chunk: `conn` must
    not be in one). Returns the pending rows added; 0 on SQLite, which has none."""
    if conn.dialect.name != "postgresql":
        return 0
    async with conn.begin():
        # A ledger before migration 0013 has no pending rows to flush.
        found = await conn.scalar(text("SELECT to_regclass(:t)"), {"t": PENDING["requests"][0]})
    if found is None:
        return 0
    total = 0
    while True:
        async with conn.begin():
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            for setting in SESSION:
                await conn.execute(text(setting))
            requests, attempts, complete = (await conn.execute(text(compact_statement()))).one()
        total += int(requests) + int(attempts)
        if complete:
            return total


async def add_inserted(
    conn: AsyncConnection, request_ids: Iterable[str], attempt_ids: Iterable[str]
) -> None:
    """SQLite: add to every rollup the rows with these ids, which this transaction just
    inserted (ids an insert returned, so never a row that was there before)."""
    dialect = conn.dialect.name
    req, att = list(request_ids), list(attempt_ids)
    if not req and not att:
        return
    for table, ids in (("requests", req), ("attempts", att)):
        new = _NEW[table]
        await conn.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {new} (id VARCHAR(128))"))
        await conn.execute(text(f"DELETE FROM {new}"))
        if ids:
            await conn.execute(
                text(f"INSERT INTO {new} (id) VALUES (:id)"), [{"id": i} for i in ids]
            )
    requests = f"(SELECT * FROM requests WHERE id IN (SELECT id FROM {_NEW['requests']}))"
    attempts = f"(SELECT * FROM attempts WHERE id IN (SELECT id FROM {_NEW['attempts']}))"
    for table, select in rollups_sql.selects(dialect, requests, attempts):
        await conn.execute(text(rollups_sql.insert(dialect, table, select)))


def _bound(when: datetime | None, dialect: str) -> datetime | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("rollup windows must be timezone-aware")
    when = when.astimezone(UTC)
    if (when.minute, when.second, when.microsecond) != (0, 0, 0):
        raise ValueError(f"rollup windows are whole UTC hours, not {when.isoformat()}")
    return when if dialect == "postgresql" else when.replace(tzinfo=None)


class RawRowsGone(Exception):
    """A rebuild window holds hours whose rollups have requests but whose raw rows are gone
    (retention dropped them): rebuilding would erase that history."""

    def __init__(self, hours: list[Any]) -> None:
        self.hours = hours
        shown = ", ".join(str(h)[:13] for h in hours[:5]) + (" …" if len(hours) > 5 else "")
        super().__init__(
            f"{len(hours)} hours have rollups but no raw rows (dropped by retention?): "
            f"{shown}; rebuild a window that leaves them out"
        )


async def rebuild(
    conn: AsyncConnection, start: datetime | None = None, end: datetime | None = None
) -> None:
    """Recompute every rollup row of the hours in [start, end) (all time when a bound is
    None) from the raw rows, in the caller's transaction: delete, then insert.

    Refuses (RawRowsGone) when an hour of the window has requests in its rollups but none
    in `requests`: the rollups are then the only record of that hour."""
    dialect = conn.dialect.name
    lo, hi = _bound(start, dialect), _bound(end, dialect)
    params = {k: v for k, v in (("lo", lo), ("hi", hi)) if v is not None}

    def window(column: str) -> str:
        parts = [f"{column} >= :lo" if lo is not None else "", f"{column} < :hi" if hi else ""]
        return " AND ".join(p for p in parts if p) or "1 = 1"

    gone = _bind(
        text(
            f"SELECT hour FROM rollup_requests WHERE {window('hour')} GROUP BY hour "
            f"EXCEPT SELECT {rollups_sql.hour_of(dialect, 'received_at')} FROM requests "
            f"WHERE {window('received_at')} ORDER BY 1"
        ),
        params,
    )
    hours = [row[0] for row in await conn.execute(gone)]
    if hours:
        raise RawRowsGone(hours)
    for stmt in rebuild_statements(dialect, start, end):
        await conn.execute(stmt)


@contextlib.asynccontextmanager
async def compacted_snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction in which the rollups and the raw rows agree and stay put: for a rebuild
    (`rebuild_live`) or a repair by hand, exact while writers write and compactors compact.

    Postgres: one REPEATABLE READ transaction holding the compactor's lock, which first
    compacts every pending row it sees; what the caller then reads of the raw rows is the
    same snapshot. A row committed before the snapshot is counted once: by the compaction,
    or by the caller's rebuild of its window, which replaces what the compaction added there.
    A row committed after it is invisible to both, and its pending row stays for the
    compactor: counted once, later. The lock is the session's, taken before the transaction
    begins: its snapshot must come after the compaction it may have waited for committed
    (a REPEATABLE READ snapshot is taken at the transaction's first statement, which would
    be the wait). SQLite: a plain transaction (one writer, nothing pending).
    """
    if engine.dialect.name != "postgresql":
        async with engine.begin() as conn:
            yield conn
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        await conn.commit()
        try:
            snap = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with snap.begin():
                for setting in SESSION:
                    await snap.execute(text(setting))
                while not (await snap.execute(text(compact_statement()))).one()[2]:
                    pass  # a chunk at a time, until nothing it sees is pending
                # The caller's reads (a rebuild's) scan whole partitions: SESSION's
                # probe-only setting was for the compaction.
                await snap.execute(text("SET LOCAL enable_seqscan = on"))
                yield snap
        finally:
            # A connection that died released it with itself.
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                await conn.commit()


async def rebuild_live(
    engine: AsyncEngine, start: datetime | None = None, end: datetime | None = None
) -> None:
    """`rebuild` [start, end) in a `compacted_snapshot` of its own: exact with a live writer
    (`farebox ledger rollup --rebuild`)."""
    async with compacted_snapshot(engine) as conn:
        await rebuild(conn, start, end)


def rebuild_statements(
    dialect: str, start: datetime | None = None, end: datetime | None = None
) -> list[Any]:
    """The statements of a rebuild (see `rebuild`; migration 0014 runs them to backfill).

    Each table takes the raw rows that date into the window its own way: requests by
    received_at (with all their attempts), attempts by started_at, deployment × request
    groups by their first attempt (any of whose attempts falls in the window is a candidate).
    rollup_requests_daily recomputes the whole UTC days the window touches (summing the
    hourly rows just rebuilt when the window is whole days), and
    rollup_workflows every workflow with a call in the window, in the UTC months it touches.
    """
    lo, hi = _bound(start, dialect), _bound(end, dialect)

    def window(column: str, low: str = ":lo", high: str = ":hi") -> str:
        parts = [
            f"{column} >= {low}" if lo is not None else "",
            f"{column} < {high}" if hi is not None else "",
        ]
        return " AND ".join(p for p in parts if p) or "1 = 1"

    def of(requests_in: str, since: str) -> str:
        # An attempt starts after its request arrives, so the attempts of the window's
        # requests start at or after its start: that bound lets Postgres skip partitions.
        return (
            f"(SELECT * FROM attempts WHERE {since}request_id IN (SELECT id FROM {requests_in} q))"
        )

    requests = f"(SELECT * FROM requests WHERE {window('received_at')})"
    of_requests = of(requests, "started_at >= :lo AND " if lo is not None else "")
    days = f"(SELECT * FROM requests WHERE {window('received_at', ':dlo', ':dhi')})"
    of_days = of(days, "started_at >= :dlo AND " if lo is not None else "")
    started = f"(SELECT * FROM attempts WHERE {window('started_at')})"
    # A batch line's request, for its batch's path: on the batch_id index, whatever its day.
    batch_lines = "(SELECT id, batch_id FROM requests WHERE batch_id IS NOT NULL)"
    # The workflows with a call in the window (by id: a same id under another key is
    # recomputed too, harmlessly), and all their calls in the months the window touches.
    ids = (
        f"SELECT workflow_id FROM requests WHERE {window('received_at')} "
        "AND workflow_id IS NOT NULL"
    )
    months = window("received_at", ":mlo", ":mhi")
    whole_months = lo is not None and hi is not None and _month_start(lo) and _month_start(hi)
    if whole_months:
        # Every workflow of those months has its calls there: all their tagged requests.
        flows = f"(SELECT * FROM requests WHERE workflow_id IS NOT NULL AND {months})"
    elif dialect == "postgresql" and hi is not None and lo is not None and hi - lo <= _FEW_DAYS:
        # A few days' workflows: an array, so each partition's workflow_id index is probed
        # for them. (Not for longer windows: the planner cannot count an array built at run
        # time, guesses it small, and then probes every attempt partition per request; a
        # month's 8.5M workflow calls ran for over 15 minutes that way.)
        flows = f"(SELECT * FROM requests WHERE workflow_id = ANY(ARRAY({ids})) AND {months})"
    else:
        flows = f"(SELECT * FROM requests WHERE workflow_id IN ({ids}) AND {months})"
    of_flows = of(flows, "started_at >= :mlo AND " if lo is not None else "")
    if lo is None and hi is None:
        # All time (the migration's backfill): the whole tables. An attempt whose request
        # is missing drops out of the request-grain joins as it does above.
        requests, of_requests, days, of_days, flows, of_flows = ("requests", "attempts") * 3
        started, touched, having = "attempts", "attempts", ""
    else:
        # Every attempt of the requests concerned: a group that began before the window
        # must keep its earlier attempts, or HAVING would take it for one that began inside.
        touched = (
            "(SELECT * FROM attempts WHERE request_id IN "
            f"(SELECT request_id FROM attempts WHERE {window('started_at')}))"
        )
        having = f"HAVING {window('MIN(a.started_at)')}"
    if (lo is None or _midnight(lo)) and (hi is None or _midnight(hi)):
        # Whole days (the CLI's windows, and all time): the hourly rows the statement
        # before rebuilt from the raw rows are each day's, so the day is their sum (one
        # pass over a month's requests instead of two: ~5 minutes at 50M attempts).
        hours = f"(SELECT * FROM rollup_requests WHERE {window('hour', ':dlo', ':dhi')})"
        daily = rollups_sql.daily_from_hourly(dialect, hours)
    else:
        daily = rollups_sql.requests_select(dialect, days, of_days, daily=True)
    selects = [
        ("rollup_requests", rollups_sql.requests_select(dialect, requests, of_requests)),
        ("rollup_requests_daily", daily),
        ("rollup_deployments", rollups_sql.deployments_select(dialect, touched, having)),
        ("rollup_attempts", rollups_sql.attempts_select(dialect, started, batch_lines)),
        ("rollup_dedicated", rollups_sql.dedicated_select(dialect, requests, of_requests)),
        ("rollup_workflows", rollups_sql.workflows_select(dialect, flows, of_flows)),
        ("rollup_spend", rollups_sql.spend_select(dialect, requests, of_requests)),
    ]
    params = {k: v for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    if lo is not None:
        params["dlo"] = lo.replace(hour=0)
    if hi is not None:
        params["dhi"] = hi if hi.hour == 0 else hi.replace(hour=0) + timedelta(days=1)
    if lo is not None:
        params["mlo"] = params["dlo"].replace(day=1)
    if hi is not None:
        end = params["dhi"] - timedelta(days=1)  # the last day of the window
        params["mhi"] = (end.replace(day=1) + timedelta(days=32)).replace(day=1)
    deletes = {
        "rollup_requests_daily": window("day", ":dlo", ":dhi"),
        "rollup_workflows": (
            "1 = 1"
            if lo is None and hi is None
            else window("month", ":mlo", ":mhi")
            if whole_months
            else f"workflow_id IN ({ids}) AND {window('month', ':mlo', ':mhi')}"
        ),
    }
    out = [
        _bind(text(f"DELETE FROM {t.name} WHERE {deletes.get(t.name, window('hour'))}"), params)
        for t in ROLLUP_TABLES
    ]
    for table, select in selects:
        cols = ", ".join(rollups_sql.columns(table))
        out.append(_bind(text(f"INSERT INTO {table} ({cols}) {select}"), params))
    return out


#: The longest rebuild window whose workflows are looked up as an array (see above).
_FEW_DAYS = timedelta(days=7)


def _month_start(at: datetime) -> bool:
    return at.day == 1 and _midnight(at)


def _midnight(at: datetime) -> bool:
    return (at.hour, at.minute, at.second, at.microsecond) == (0, 0, 0, 0)


def _bind(stmt: Any, params: dict[str, datetime]) -> Any:
    # Typed binds: SQLite then gets SQLAlchemy's own timestamp text format, so comparisons
    # with the stored text are exact.
    # Only the parameters the statement names (a rebuild's share lo/hi/dlo/dhi).
    params = {k: v for k, v in params.items() if re.search(rf":{k}\b", stmt.text)}
    stmt = stmt.bindparams(*(bindparam(k, type_=DateTime(timezone=True)) for k in params))
    return stmt.params(**params) if params else stmt
