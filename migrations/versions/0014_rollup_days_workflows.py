"""rollup days and workflows: rollup_requests per UTC day, and one rollup_workflows row per
workflow (gateway/ledger/models_rollups.py).

- `rollup_requests_daily`: rollup_requests summed per UTC day, so a month's report reads
  ~30 rows per group instead of ~720. Filled from rollup_requests (the same sums), which
  keeps the days whose raw rows retention already dropped.
- `rollup_workflows`: per UTC month × workflow instead of hour × workflow, so a month's
  `farebox lcpr --by workflow` aggregates one row per workflow instead of ranking its hours.
  Made from the hourly rows: a workflow's hours are disjoint in time, so its first call of
  a month is its earliest hour's first and its last call its latest hour's last; calls,
  retries and cost add up.
- A ledger coming from 0011 has empty rollups (0012 no longer fills them: its backfill ran
  the head's rebuild, whose tables that revision does not have): they are all built here
  from the raw rows, with the rebuild `farebox ledger rollup --rebuild` runs.

Downgrade: rollup_requests_daily dropped; rollup_workflows back to hour × workflow, each
workflow's month dated by the hour of its first call that month (calls and cost kept).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COST = sa.Numeric(18, 10)
_NAME = sa.String(255)
_ID = sa.String(128)
_MONEY = frozenset({"cost", "clean_cost", "saved"})
_REQUEST_DIMS = ("route", "workload", "key_id", "final_deployment", "batch")
_REQUEST_MEASURES = (
    "requests",
    "successful",
    "attempts",
    "retries",
    "fallback",
    "gated",
    "passed",
    "input",
    "cached",
    "output",
    "cost",
    "clean",
    "clean_cost",
    "clean_tok",
    "hits",
    "saved",
    "input_uncached",
    "cached_read",
    "cache_write",
    "output_all",
    "reasoning",
    "unpriced",
    "failed",
)
_FLOW_SUMS = ("calls", "ok_calls", "retries", "cost")
_FIRST = ("first_at", "first_id", "first_route", "first_workload")
_LAST = ("last_at", "last_id", "last_ok")


def _measure(name: str) -> sa.Column[object]:
    kind = _COST if name in _MONEY else sa.BigInteger()
    return sa.Column(name, kind, nullable=False, server_default="0")


def _workflows(name: str, bucket: str) -> None:
    op.create_table(
        name,
        sa.Column(bucket, sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", _NAME, nullable=False),
        sa.Column("workflow_id", _ID, nullable=False),
        *(_measure(n) for n in _FLOW_SUMS),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_id", _ID, nullable=False),
        sa.Column("first_route", _NAME, nullable=False),
        sa.Column("first_workload", _NAME, nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_id", _ID, nullable=False),
        sa.Column("last_ok", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(bucket, "key_id", "workflow_id", name=f"pk_{name}"),
    )


def _day(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('day', {column}, 'UTC')"
    return f"strftime('%Y-%m-%d 00:00:00.000000', {column})"


def _month(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('month', {column}, 'UTC')"
    return f"strftime('%Y-%m-01 00:00:00.000000', {column})"


def _hour(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('hour', {column}, 'UTC')"
    return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_table(
        "rollup_requests_daily",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        *(
            sa.Column(n, sa.Integer() if n == "batch" else _NAME, nullable=False)
            for n in _REQUEST_DIMS
        ),
        *(_measure(n) for n in _REQUEST_MEASURES),
        sa.PrimaryKeyConstraint("day", *_REQUEST_DIMS, name="pk_rollup_requests_daily"),
    )
    _workflows("rollup_workflows_flows", "month")
    dims = ", ".join(_REQUEST_DIMS)
    sums = ", ".join(f"SUM({n})" for n in _REQUEST_MEASURES)
    bind.execute(
        sa.text(
            f"INSERT INTO rollup_requests_daily (day, {dims}, {', '.join(_REQUEST_MEASURES)}) "
            f"SELECT {_day(dialect, 'hour')}, {dims}, {sums} FROM rollup_requests "
            f"GROUP BY {_day(dialect, 'hour')}, {dims}"
        )
    )
    month = _month(dialect, "hour")
    flow = "f.key_id = s.key_id AND f.workflow_id = s.workflow_id"
    bind.execute(
        sa.text(
            "INSERT INTO rollup_workflows_flows (month, key_id, workflow_id, "
            f"{', '.join(_FLOW_SUMS + _FIRST + _LAST)}) "
            "SELECT s.month, s.key_id, s.workflow_id, s.calls, s.ok_calls, s.retries, s.cost, "
            + ", ".join(f"f.{n}" for n in _FIRST)
            + ", "
            + ", ".join(f"l.{n}" for n in _LAST)
            + f" FROM (SELECT {month} AS month, key_id, workflow_id, "
            + ", ".join(f"SUM({n}) AS {n}" for n in _FLOW_SUMS)
            + f", MIN(hour) AS h0, MAX(hour) AS h1 FROM rollup_workflows "
            f"GROUP BY {month}, key_id, workflow_id) s "
            f"JOIN rollup_workflows f ON {flow} AND f.hour = s.h0 "
            f"JOIN rollup_workflows l ON {flow.replace('f.', 'l.')} AND l.hour = s.h1"
        )
    )
    op.drop_table("rollup_workflows")
    op.rename_table("rollup_workflows_flows", "rollup_workflows")
    empty = bind.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM rollup_requests)")).scalar()
    raw = bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM requests)")).scalar()
    if empty and raw:
        # From 0011: build every rollup from the raw rows (what a rebuild of all time does).
        from gateway.ledger.rollups import rebuild_statements

        for stmt in rebuild_statements(dialect):
            bind.execute(stmt)


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        # What the writer left pending is added while the tables are this revision's (the
        # compactor's statement is the head's): 0013's downgrade then finds nothing to add.
        from gateway.ledger.pending_sql import pg_compact

        while not bind.execute(sa.text(pg_compact(200_000))).one()[2]:
            pass
    op.drop_table("rollup_requests_daily")
    _workflows("rollup_workflows_hours", "hour")
    names = ", ".join(("key_id", "workflow_id", *_FLOW_SUMS, *_FIRST, *_LAST))
    bind.execute(
        sa.text(
            f"INSERT INTO rollup_workflows_hours (hour, {names}) "
            f"SELECT {_hour(dialect, 'first_at')}, {names} FROM rollup_workflows"
        )
    )
    op.drop_table("rollup_workflows")
    op.rename_table("rollup_workflows_hours", "rollup_workflows")
