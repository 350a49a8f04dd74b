"""partitions: `requests` and `attempts` become PARTITION BY RANGE on their timestamp, one
partition per UTC day, plus a DEFAULT partition (Postgres only; SQLite keeps plain tables).

The tables are converted in place, rows and index names kept: the old table is renamed
aside, a partitioned parent with the same columns (same order, so COPY and `INSERT … SELECT
*` line up) is created, day partitions are made from the first of last month through a week
ahead (older rows get one partition per month that has rows, `requests_m202609`), the rows
are copied, the indexes are recreated under their old names and the old table is dropped.
Postgres requires the partition key in every unique constraint, so the primary keys become
(id, received_at) and (id, started_at); an id is still unique in practice because a row's
timestamp never changes between replays.

The partition names (`requests_p20261207`, `requests_m202609`, `requests_default`) are the
ones gateway/ledger/partitions.py lists, creates and drops; they are spelt out here rather
than imported so this revision keeps meaning what it meant when it ran.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, partition key). Both are NOT NULL since 0001, as a primary key column must be.
_TABLES = (("requests", "received_at"), ("attempts", "started_at"))
# Day partitions run from the first day of last month (the months reports and invoices are
# still about) through a week ahead, every day, rows or not: a journal replayed after an
# outage lands in its day rather than in DEFAULT. Older rows get one partition per month that
# has rows. Every partition this migration creates holds ~9 locks until it commits (table,
# TOAST, indexes) out of max_locks_per_transaction × max_connections (6,400 by default):
# a day per partition over a year of history would not fit, a month per old partition does
# (ten years: ~200 partitions a table).
_AHEAD_DAYS = 7


def _partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _month_name(table: str, month: date) -> str:
    return f"{table}_m{month:%Y%m}"


def _next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def _bounds(start: date, end: date) -> str:
    # Explicit +00 offsets: the bounds mean UTC days whatever the session's TimeZone is.
    return f"FROM ('{start.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"


def _partition(table: str, key: str) -> None:
    bind = op.get_bind()
    old = f"{table}_unpartitioned"
    # Capture every secondary index as written (operators' own indexes included), then drop
    # them so their names are free for the parent. The primary key is rebuilt with the key.
    index_defs = [
        (name, sql)
        for name, sql in bind.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename = :t AND indexname <> :pk "
                "ORDER BY indexname"
            ),
            {"t": table, "pk": f"pk_{table}"},
        )
    ]
    for name, _ in index_defs:
        op.execute(f'DROP INDEX "{name}"')
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        f"INCLUDING COMMENTS) PARTITION BY RANGE ({key})"
    )
    days: set[date] = {
        row[0]
        for row in bind.execute(
            sa.text(f"SELECT DISTINCT ({key} AT TIME ZONE 'UTC')::date FROM {old}")
        )
    }
    today = bind.execute(sa.text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
    daily_from = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    months = sorted({day.replace(day=1) for day in days if day < daily_from})
    for month in months:
        op.execute(
            f"CREATE TABLE {_month_name(table, month)} PARTITION OF {table} "
            f"FOR VALUES {_bounds(month, _next_month(month))}"
        )
    # A young ledger's days start at its first row; far-future rows (a clock off by years)
    # get their own days.
    start = min(max(min(days, default=today), daily_from), today)
    daily = {day for day in days if day >= daily_from}
    daily.update(start + timedelta(days=n) for n in range((today - start).days + _AHEAD_DAYS + 1))
    for day in sorted(daily):
        op.execute(
            f"CREATE TABLE {_partition_name(table, day)} PARTITION OF {table} "
            f"FOR VALUES {_bounds(day, day + timedelta(days=1))}"
        )
    # The safety net: a row for a day without a partition (clock skew, a replay of a day
    # retention already dropped) is kept rather than refused.
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    # Rows first, indexes after: one sorted build per partition beats maintaining them row
    # by row while 50M rows stream in.
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id, {key})")
    for _, sql in index_defs:
        # pg_indexes names the table it was captured on, which is the parent's name now.
        op.execute(sql)
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ANALYZE {table}")


def _unpartition(table: str, key: str) -> None:
    bind = op.get_bind()
    old = f"{table}_partitioned"
    index_defs = [
        (name, sql)
        for name, sql in bind.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename = :t AND indexname <> :pk "
                "ORDER BY indexname"
            ),
            {"t": table, "pk": f"pk_{table}"},
        )
    ]
    for name, _ in index_defs:
        op.execute(f'DROP INDEX "{name}"')
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING COMMENTS)"
    )
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    # Added after the copy: two rows sharing an id under different timestamps (which the
    # partitioned key admits) make the downgrade fail loudly instead of dropping one.
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
    for _, sql in index_defs:
        op.execute(sql.replace(" ONLY ", " "))
    # Dropping the parent drops every partition with it.
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ANALYZE {table}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    if op.get_context().as_sql:
        # The partitions depend on the days the rows fall on, read from the database.
        raise RuntimeError("revision 0011 cannot be rendered as SQL: run `farebox migrate`")
    for table, key in _TABLES:
        _partition(table, key)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, key in _TABLES:
        _unpartition(table, key)
