"""The batch tier's queries for `farebox lcpr`: requests and attempt spend per workload,
live or batch line, and dedicated busy time split into live and `batch` attempts.

Every read is one GROUP BY over an indexed time range (`requests` by received_at, `attempts`
by started_at) returning one row per group: a few rows per workload × route × deployment,
however many requests the month held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select

from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.success import SUCCESS_FLAG
from gateway.reports import rollup_queries
from gateway.reports.segments import CACHE_HIT
from gateway.reports.store_base import StoreBase, day_of, dec, report_session, utc_bound

# The attempt role of a batch line's upstream calls (retries and fallbacks of a line too).
BATCH_ROLE = "batch"
# Attempts start after their request arrives and end within its timeouts (a batch line's
# attempts within the batch's completion window, at most a day).
_SLACK = timedelta(days=2)


@dataclass(frozen=True, slots=True)
class RequestGroup:
    """Requests received in the window of one workload × route × final deployment, either
    batch lines (`batch`: they carry a batch id) or live requests."""

    workload: str
    route: str
    batch: bool
    final_deployment: str | None
    requests: int
    successful: int


@dataclass(frozen=True, slots=True)
class SpendGroup:
    """Attempts (response-cache hits left out) of deferrable live requests or batch lines,
    per workload × route × deployment × UTC day of the attempt."""

    workload: str
    route: str
    batch: bool
    deployment: str
    provider: str
    provider_kind: str
    upstream_model: str
    day: date
    attempts: int
    input_uncached: int
    cached_read: int
    cache_write: int
    output: int
    cost_usd: Decimal
    unpriced: int  # attempts with no cost (no price known)


@dataclass(frozen=True, slots=True)
class DedicatedBusy:
    """A dedicated deployment's attempts in the window: live (every role but `batch`) or
    batch, and their summed latencies."""

    provider: str
    deployment: str
    batch: bool
    attempts: int
    busy_seconds: Decimal


def _workload(column: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(column, literal("-"))


class BatchQueries(StoreBase):
    async def request_groups(self, start: datetime, end: datetime) -> list[RequestGroup]:
        """Every request of the window, counted per workload × route × live/batch × final
        deployment, with its successes (gateway.ledger.success)."""
        r = requests_table.c
        batch = case((r.batch_id.is_not(None), 1), else_=0)
        workload = _workload(r.workload)
        stmt = (
            select(
                workload, r.route, batch, r.final_deployment, func.count(), func.sum(SUCCESS_FLAG)
            )
            .where(
                r.received_at >= utc_bound(start, self._pg),
                r.received_at < utc_bound(end, self._pg),
            )
            .group_by(workload, r.route, batch, r.final_deployment)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.request_groups(*window)
        async with self.engine.begin() as conn:
            if self._pg:
                await report_session(conn)
            rows = (await conn.execute(stmt)).all()
        return [
            RequestGroup(str(w), str(route), bool(b), dep, int(n or 0), int(ok or 0))
            for w, route, b, dep, n, ok in rows
        ]

    async def spend_groups(
        self, start: datetime, end: datetime, deferrable: Sequence[str]
    ) -> list[SpendGroup]:
        """Attempt tokens and cost of the window's batch lines and of the live requests of
        the deferrable workloads (requests dated by received_at, as everywhere in LCPR)."""
        a, r = attempts_table.c, requests_table.c
        batch = case((r.batch_id.is_not(None), 1), else_=0)
        which: ColumnElement[bool] = r.batch_id.is_not(None)
        if deferrable:
            which = or_(which, and_(r.batch_id.is_(None), r.workload.in_(list(deferrable))))
        lo, hi = utc_bound(start, self._pg), utc_bound(end, self._pg)
        workload = _workload(r.workload)
        day = self._utc_day(a.started_at)
        keys = (workload, r.route, batch, a.deployment, a.provider, a.provider_kind)
        stmt = (
            select(
                *keys,
                a.upstream_model,
                day,
                func.count(),
                func.sum(a.input_uncached_tokens),
                func.sum(a.cached_read_tokens),
                func.sum(a.cache_write_tokens),
                func.sum(a.output_tokens),
                func.sum(a.cost_usd),
                func.sum(case((a.cost_usd.is_(None), 1), else_=0)),
            )
            .select_from(requests_table.join(attempts_table, a.request_id == r.id))
            .where(
                r.received_at >= lo,
                r.received_at < hi,
                # Keeps the attempt side on its started_at index.
                a.started_at >= lo - _SLACK,
                a.started_at < hi + _SLACK,
                a.role != CACHE_HIT,
                which,
            )
            .group_by(*keys, a.upstream_model, day)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.spend_groups(*window, deferrable, self._utc_day)
        async with self.engine.begin() as conn:
            if self._pg:
                await report_session(conn)
            rows = (await conn.execute(stmt)).all()
        return [
            SpendGroup(
                workload=str(row[0]),
                route=str(row[1]),
                batch=bool(row[2]),
                deployment=row[3],
                provider=row[4],
                provider_kind=row[5],
                upstream_model=row[6],
                day=day_of(row[7]),
                attempts=int(row[8] or 0),
                input_uncached=int(row[9] or 0),
                cached_read=int(row[10] or 0),
                cache_write=int(row[11] or 0),
                output=int(row[12] or 0),
                cost_usd=dec(row[13]),
                unpriced=int(row[14] or 0),
            )
            for row in rows
        ]

    async def dedicated_busy(self, start: datetime, end: datetime) -> list[DedicatedBusy]:
        """Busy seconds of every dedicated deployment in the window, live and batch apart."""
        a = attempts_table.c
        batch = case((a.role == BATCH_ROLE, 1), else_=0)
        stmt = (
            select(a.provider, a.deployment, batch, func.count(), func.sum(a.latency_ms))
            .where(
                a.provider_kind == "dedicated",
                a.role != CACHE_HIT,
                a.started_at >= utc_bound(start, self._pg),
                a.started_at < utc_bound(end, self._pg),
            )
            .group_by(a.provider, a.deployment, batch)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.dedicated_busy(*window)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            DedicatedBusy(p, dep, bool(b), int(n or 0), dec(ms) / 1000) for p, dep, b, n, ms in rows
        ]
