"""Keeping the rollups (gateway/ledger/models_rollups.py) exact: the writer's increment,
retries on deadlock, and the rebuild of a window from raw rows.

Exactness rests on one rule: a rollup only ever adds the rows an insert actually wrote. The
Postgres sinks get them from their insert's RETURNING inside one statement
(rollups_sql.pg_merge); the other paths (SQLite's write_batch, a batch line's rows written in
the caller's transaction) get the ids their insert returned and add those rows from the raw
tables in the same transaction. A replayed batch inserts nothing, so it adds nothing.

The request-grain rollups read a request together with its attempts: they rely on the writer
handing a request with all its attempts in one batch (LedgerWriter.record takes both, and
spool and journal replays carry whole batches). The attempt-grain rollups need nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ledger import rollups_sql
from gateway.ledger.models_rollups import ROLLUP_TABLES
from gateway.ledger.retry import is_retryable as is_retryable
from gateway.ledger.retry import retrying as retrying

_NEW = {"requests": "farebox_rollup_new_requests", "attempts": "farebox_rollup_new_attempts"}


async def add_inserted(
    conn: AsyncConnection, request_ids: Iterable[str], attempt_ids: Iterable[str]
) -> None:
    """Add to every rollup the rows with these ids, which this transaction just inserted
    (ids an insert returned, so never a row that was there before)."""
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


def rebuild_statements(
    dialect: str, start: datetime | None = None, end: datetime | None = None
) -> list[Any]:
    """The statements of a rebuild (see `rebuild`; migration 0012 runs them to backfill).

    Each table takes the raw rows that date into the window its own way: requests by
    received_at (with all their attempts), attempts by started_at, deployment × request
    groups by their first attempt (any of whose attempts falls in the window is a candidate).
    """
    lo, hi = _bound(start, dialect), _bound(end, dialect)

    def window(column: str) -> str:
        parts = [
            f"{column} >= :lo" if lo is not None else "",
            f"{column} < :hi" if hi is not None else "",
        ]
        return " AND ".join(p for p in parts if p) or "1 = 1"

    # An attempt starts after its request arrives, so the attempts of the window's requests
    # start at or after its start: that bound lets Postgres skip the earlier partitions.
    since = "started_at >= :lo AND " if lo is not None else ""
    requests = f"(SELECT * FROM requests WHERE {window('received_at')})"
    of_requests = (
        f"(SELECT * FROM attempts WHERE {since}request_id IN "
        f"(SELECT id FROM requests WHERE {window('received_at')}))"
    )
    started = f"(SELECT * FROM attempts WHERE {window('started_at')})"
    # A batch line's request, for its batch's path: on the batch_id index, whatever its day.
    batch_lines = "(SELECT id, batch_id FROM requests WHERE batch_id IS NOT NULL)"
    if lo is None and hi is None:
        # All time (the migration's backfill): the whole tables. An attempt whose request
        # is missing drops out of the request-grain joins as it does above.
        requests, of_requests, started, touched, having = (
            "requests",
            "attempts",
            "attempts",
            "attempts",
            "",
        )
    else:
        # Every attempt of the requests concerned: a group that began before the window
        # must keep its earlier attempts, or HAVING would take it for one that began inside.
        touched = (
            "(SELECT * FROM attempts WHERE request_id IN "
            f"(SELECT request_id FROM attempts WHERE {window('started_at')}))"
        )
        having = f"HAVING {window('MIN(a.started_at)')}"
    selects = [
        ("rollup_requests", rollups_sql.requests_select(dialect, requests, of_requests)),
        ("rollup_deployments", rollups_sql.deployments_select(dialect, touched, having)),
        ("rollup_attempts", rollups_sql.attempts_select(dialect, started, batch_lines)),
        ("rollup_dedicated", rollups_sql.dedicated_select(dialect, requests, of_requests)),
        ("rollup_workflows", rollups_sql.workflows_select(dialect, requests, of_requests)),
        ("rollup_spend", rollups_sql.spend_select(dialect, requests, of_requests)),
    ]
    params = {k: v for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    out = [
        _bind(text(f"DELETE FROM {t.name} WHERE {window('hour')}"), params) for t in ROLLUP_TABLES
    ]
    for table, select in selects:
        cols = ", ".join(rollups_sql.columns(table))
        out.append(_bind(text(f"INSERT INTO {table} ({cols}) {select}"), params))
    return out


def _bind(stmt: Any, params: dict[str, datetime]) -> Any:
    # Typed binds: SQLite then gets SQLAlchemy's own timestamp text format, so comparisons
    # with the stored text are exact.
    stmt = stmt.bindparams(*(bindparam(k, type_=DateTime(timezone=True)) for k in params))
    return stmt.params(**params) if params else stmt
