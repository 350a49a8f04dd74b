"""Rollup tables: the ledger summed per UTC hour, kept exact by the writer (gateway/ledger/
rollups.py) so that reports read thousands of rows instead of a month of attempts.

Seven tables, one per way the reports date and group rows (docs/ledger.md, "Rollups"):

- `rollup_requests`: requests per hour of received_at × route × workload × key × final
  deployment × batch line or live, with the sums of each request's attempts (every report
  that groups by request: LCPR by route/workload/key, `farebox usage`, answered requests).
- `rollup_deployments`: the attempts of each deployment × request, dated by the hour of the
  first attempt there (LCPR by model, where the fallback measure is one per deployment ×
  request, not a sum of attempts).
- `rollup_attempts`: attempts per hour of started_at × provider × deployment × upstream
  model × role × price version × batch path (reconciliation's ledger days and their
  provider-batch slice, spend by role, dedicated use, price versions with their first use).
- `rollup_dedicated`: tokens served by dedicated providers, per request dims (hour of
  received_at × route × workload × key × provider): LCPR's share of a GPU per segment.
- `rollup_requests_daily`: rollup_requests per UTC day, for the whole days of a window.
- `rollup_workflows`: per workflow (key × workflow id) × UTC month, its calls that month
  and the first and last of them (`farebox lcpr --by workflow` of a month).
- `rollup_spend`: attempts per hour of their request's received_at × hour of their own
  started_at × route × workload × batch line or live × deployment (the batch tier's spend).

Nullable dimensions are stored as '' (never a valid route, workload, key, deployment or price
version name), so each table's primary key is its dimensions on SQLite and on any Postgres.
Money is NUMERIC exact (the ledger's COST); counts are BIGINT.

On Postgres the writer leaves its rows pending (`rollup_pending_requests` / `_attempts`,
PENDING_TABLES) and the compactor adds them (gateway/ledger/rollup_compactor.py).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, Numeric, Table

from gateway.ledger.base import COST, ID, NAME, TAG, Base

# The measure names and NONE are the layout's (SQLAlchemy-free); re-exported from here.
from gateway.ledger.rollup_layout import ATTEMPT_MEASURES as ATTEMPT_MEASURES
from gateway.ledger.rollup_layout import LCPR_MEASURES as LCPR_MEASURES
from gateway.ledger.rollup_layout import MONEY, PENDING
from gateway.ledger.rollup_layout import NONE as NONE
from gateway.ledger.rollup_layout import SPEND_MEASURES as SPEND_MEASURES
from gateway.ledger.rollup_layout import USAGE_MEASURES as USAGE_MEASURES

#: Sums of latency milliseconds (unconstrained NUMERIC: no rounding of the float's digits).
MILLIS = Numeric()


def _count(name: str) -> Column[object]:
    return Column(name, BigInteger, nullable=False, server_default="0")


def _money(name: str) -> Column[object]:
    return Column(name, COST, nullable=False, server_default="0")


def _dim(name: str, type_: object = NAME) -> Column[object]:
    return Column(name, type_, primary_key=True)  # type: ignore[arg-type]


def _hour() -> Column[object]:
    return Column("hour", DateTime(timezone=True), primary_key=True)


def _measures(names: tuple[str, ...]) -> list[Column[object]]:
    return [_money(n) if n in MONEY else _count(n) for n in names]


def _requests(name: str, bucket: str) -> Table:
    """rollup_requests' shape, summed per `bucket` (hour or day)."""
    return Table(
        name,
        Base.metadata,
        Column(bucket, DateTime(timezone=True), primary_key=True),
        _dim("route"),
        _dim("workload"),
        _dim("key_id"),
        _dim("final_deployment"),
        _dim("batch", Integer),
        _count("requests"),
        _count("successful"),
        *_measures(LCPR_MEASURES),
        *_measures(USAGE_MEASURES),
    )


rollup_requests_table = _requests("rollup_requests", "hour")
#: rollup_requests per UTC day (`day`: the day's 00:00 UTC), kept by the same writes: a
#: report reads it for the whole days of its window and rollup_requests for the hours left.
rollup_requests_daily_table = _requests("rollup_requests_daily", "day")

rollup_deployments_table = Table(
    "rollup_deployments",
    Base.metadata,
    _hour(),
    _dim("deployment"),
    *_measures(LCPR_MEASURES),
)


rollup_attempts_table = Table(
    "rollup_attempts",
    Base.metadata,
    _hour(),
    _dim("provider"),
    _dim("provider_kind", TAG),
    _dim("deployment"),
    _dim("upstream_model"),
    _dim("role", TAG),
    _dim("price_version"),
    # The path of a batch line's batch (role `batch` only; '' otherwise): reconciliation
    # bills provider-batch attempts apart.
    _dim("batch_path", TAG),
    *_measures(ATTEMPT_MEASURES),
    Column("busy_ms", MILLIS, nullable=False, server_default="0"),
    # The earliest attempt in the row: a price version's first use in a window.
    Column("first_at", DateTime(timezone=True), nullable=False),
)

rollup_dedicated_table = Table(
    "rollup_dedicated",
    Base.metadata,
    _hour(),
    _dim("route"),
    _dim("workload"),
    _dim("key_id"),
    _dim("provider"),
    _count("tokens"),
)


rollup_spend_table = Table(
    "rollup_spend",
    Base.metadata,
    _hour(),
    Column("started_hour", DateTime(timezone=True), primary_key=True),
    _dim("route"),
    _dim("workload"),
    _dim("batch", Integer),
    _dim("deployment"),
    _dim("provider"),
    _dim("provider_kind", TAG),
    _dim("upstream_model"),
    *_measures(SPEND_MEASURES),
)

#: Per workflow (key × workflow id) × UTC month (`month`: its first day's 00:00): its calls
#: that month, and the first and last of them (by received_at, then id) with what
#: `farebox lcpr --by workflow` reads of them for a month.
rollup_workflows_table = Table(
    "rollup_workflows",
    Base.metadata,
    Column("month", DateTime(timezone=True), primary_key=True),
    _dim("key_id"),
    _dim("workflow_id", ID),
    _count("calls"),
    _count("ok_calls"),
    _count("retries"),
    _money("cost"),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("first_id", ID, nullable=False),
    Column("first_route", NAME, nullable=False),
    Column("first_workload", NAME, nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    Column("last_id", ID, nullable=False),
    Column("last_ok", Integer, nullable=False),
)

ROLLUP_TABLES = (
    rollup_requests_table,
    rollup_requests_daily_table,
    rollup_deployments_table,
    rollup_attempts_table,
    rollup_dedicated_table,
    rollup_workflows_table,
    rollup_spend_table,
)


def _pending(name: str, at: str) -> Table:
    # No key, no index: the writer only appends, the compactor deletes what it takes
    # (gateway/ledger/rollup_compactor.py, migration 0013).
    return Table(
        name,
        Base.metadata,
        Column("txn", BigInteger, nullable=False),
        Column("id", ID, nullable=False),
        Column(at, DateTime(timezone=True), nullable=False),
    )


#: The Postgres writer's rows not yet in the rollups (PENDING: raw table -> pending table).
PENDING_TABLES = tuple(_pending(name, at) for name, at in PENDING.values())
