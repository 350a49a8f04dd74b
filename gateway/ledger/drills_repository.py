"""SQL for failover drills: the `drills` table, and the attempt aggregates a verdict needs.

Status moves running → (stopping) → finishing → completed | stopped | aborted. The move to
`finishing` is a conditional UPDATE, so exactly one replica writes the verdict however many
notice the end at once.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, insert, literal, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.ledger.drills_records import (
    EARLIER,
    FINAL,
    FINISHING,
    GATE_FAILED,
    NOT_DELIVERED,
    RUNNING,
    STOPPING,
    DrillRow,
    aware_utc,
    row_of,
)
from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.models_drills import drills_table
from gateway.ledger.success import ANSWERED_CLIENT, gate_passed
from routing.drills import Side
from routing.guard_trial import TrialCounts

__all__ = [
    "FINAL",
    "FINISHING",
    "GATE_FAILED",
    "NOT_DELIVERED",
    "RUNNING",
    "STOPPING",
    "DrillRow",
    "DrillsRepository",
]


def _row(raw: Any) -> DrillRow:
    return row_of(raw._mapping)


class DrillsRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def create(cls, url: str) -> DrillsRepository:
        kwargs: dict[str, Any] = {}
        if make_url(url).get_backend_name() == "postgresql":
            kwargs = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True}
        return cls(create_async_engine(url, **kwargs))

    async def close(self) -> None:
        await self.engine.dispose()

    async def start(
        self,
        route: str,
        target: str | None,
        percent: float,
        minutes: float,
        *,
        simulate_outage: bool = False,
        abort_after_errors: int = 10,
        abort_error_rate: float = 0.5,
        created_by: str | None = None,
        schedule: str | None = None,
        guard: list[dict[str, Any]] | None = None,
        now: datetime | None = None,
    ) -> DrillRow:
        """A new running drill; refuses (ValueError) while the route has one running."""
        now = now or datetime.now(UTC)
        drill_id = f"drill_{uuid.uuid4().hex[:12]}"
        values = {
            "id": drill_id,
            "route": route,
            "target": target or "",  # "": a guard trial only
            "percent": percent,
            "simulate_outage": simulate_outage,
            "started_at": now,
            "ends_at": datetime.fromtimestamp(now.timestamp() + minutes * 60, UTC),
            "status": RUNNING,
            "abort_after_errors": abort_after_errors,
            "abort_error_rate": abort_error_rate,
            "created_by": created_by,
            "schedule": schedule,
            "finished_at": None,
            "result": None,
            "verdict": None,
            "report": None,
            "updated_at": now,
            "guard": guard,
        }
        d = drills_table.c
        async with self.engine.begin() as conn:
            busy = await conn.scalar(
                select(d.id).where(d.route == route, d.status.in_((RUNNING, STOPPING, FINISHING)))
            )
            if busy is not None:
                raise ValueError(f"route {route!r} already has drill {busy} running")
            await conn.execute(insert(drills_table).values(**values))
        return DrillRow(**values)  # type: ignore[arg-type]

    async def get(self, drill_id: str) -> DrillRow | None:
        async with self.engine.connect() as conn:
            raw = (
                await conn.execute(select(drills_table).where(drills_table.c.id == drill_id))
            ).first()
        return _row(raw) if raw is not None else None

    async def recent(
        self, limit: int = 50, statuses: tuple[str, ...] | None = None
    ) -> list[DrillRow]:
        d = drills_table.c
        stmt = select(drills_table).order_by(d.started_at.desc()).limit(limit)
        if statuses is not None:
            stmt = stmt.where(d.status.in_(statuses))
        async with self.engine.connect() as conn:
            return [_row(r) for r in (await conn.execute(stmt)).all()]

    async def active(self) -> list[DrillRow]:
        return await self.recent(limit=1000, statuses=(RUNNING,))

    async def unfinished(self) -> list[DrillRow]:
        return await self.recent(limit=1000, statuses=(RUNNING, STOPPING))

    async def move(self, drill_id: str, from_statuses: tuple[str, ...], to: str) -> bool:
        """Conditional status change; True for the one caller that made it."""
        d = drills_table.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(drills_table)
                .where(d.id == drill_id, d.status.in_(from_statuses))
                .values(status=to, updated_at=datetime.now(UTC))
            )
        return bool(result.rowcount)

    async def finish(
        self, drill_id: str, status: str, result: str, verdict: dict[str, Any], report: str
    ) -> None:
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(drills_table)
                .where(drills_table.c.id == drill_id)
                .values(
                    status=status,
                    result=result,
                    verdict=verdict,
                    report=report,
                    finished_at=now,
                    updated_at=now,
                )
            )

    async def last_started(self, schedule: str) -> datetime | None:
        d = drills_table.c
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.max(d.started_at)).where(d.schedule == schedule))
        return aware_utc(value)

    async def side(
        self,
        *,
        drill_id: str | None,
        deployment: str | None,
        role: str,
        since: datetime,
        until: datetime,
        route: str | None = None,
    ) -> Side:
        """One side of a verdict, aggregated in SQL: the drill's own attempts on its target
        (drill_id set), or the primary's untouched attempts on the same route over the same
        window (the deployment may serve other routes, whose traffic is not comparable).

        An attempt is a success when its answer is the one that made its request successful
        (gateway.ledger.success.ANSWERED_CLIENT): an answer cut mid-stream, one that failed the
        gate, or one the client never got (the request was answered by another deployment)
        is not. Attempts whose request row is missing count, as failures.
        """
        a, r = attempts_table.c, requests_table.c
        where = [a.role == role, a.started_at >= since, a.started_at <= until]
        if route is not None:
            # A request is received before its attempts start: bound it by time too.
            where += [r.route == route, r.received_at >= since - EARLIER]
        if drill_id is not None:
            where.append(a.drill_id == drill_id)
        else:
            where.append(a.drill_id.is_(None))
        if deployment is not None:
            where.append(a.deployment == deployment)
        joined = attempts_table.outerjoin(requests_table, r.id == a.request_id)
        ok = ANSWERED_CLIENT
        # Why an attempt was not a success: its own error class, else the gate, else that
        # its answer did not reach the client whole (the request failed or went elsewhere).
        why = case(
            (a.error_class.is_not(None), a.error_class),
            (~gate_passed(a.gate_outcome), literal(GATE_FAILED)),
            else_=literal(NOT_DELIVERED),
        )
        totals = (
            select(
                func.count(),
                func.sum(case((ok, 1), else_=0)),
                func.sum(case((ok, a.cost_usd), else_=None)),
                func.count(a.gate_outcome),
                func.sum(case((a.gate_outcome == "pass", 1), else_=0)),
            )
            .select_from(joined)
            .where(*where)
        )
        # NULL-safe "not ok": a missing request row makes ANSWERED_CLIENT NULL, not false.
        failed = case((ok, False), else_=True)
        errors = select(why, func.count()).select_from(joined).where(*where, failed).group_by(why)
        async with self.engine.connect() as conn:
            n, good, cost, gated, passed = (await conn.execute(totals)).one()
            by_class = {str(c): int(k) for c, k in (await conn.execute(errors)).all()}
            good = int(good or 0)
            p50 = await _percentile(conn, joined, where, ok, good, 0.50)
            p95 = await _percentile(conn, joined, where, ok, good, 0.95)
        return Side(
            attempts=int(n or 0),
            successes=good,
            p50_ms=p50,
            p95_ms=p95,
            cost_per_success=float(cost) / good if good and cost is not None else None,
            gate_checked=int(gated or 0),
            gate_passed=int(passed or 0),
            errors=by_class,
        )

    async def guard_trial(self, drill_id: str, *, since: datetime, until: datetime) -> TrialCounts:
        """The drill cohort's requests (those with an attempt tagged with the drill) and
        what its trial checks would have done to them, from their `requests.guard`."""
        a, r = attempts_table.c, requests_table.c
        stmt = (
            select(r.guard, func.count(func.distinct(r.id)))
            .select_from(attempts_table.join(requests_table, r.id == a.request_id))
            .where(
                a.drill_id == drill_id,
                a.started_at >= since,
                a.started_at <= until,
                r.received_at >= since - EARLIER,  # bounds the partitions read
            )
            .group_by(r.guard)
        )
        counts = TrialCounts()
        async with self.engine.connect() as conn:
            for summary, requests in (await conn.execute(stmt)).all():
                counts.add(summary, int(requests))
        return counts


async def _percentile(
    conn: Any, source: Any, where: list[Any], ok: Any, count: int, q: float
) -> float | None:
    """Nearest-rank percentile of successful latencies, by ORDER BY … OFFSET (works on
    SQLite and Postgres alike and reads one row)."""
    if count == 0:
        return None
    a = attempts_table.c
    rank = max(0, math.ceil(q * count) - 1)
    stmt = (
        select(a.latency_ms)
        .select_from(source)
        .where(*where, ok)
        .order_by(a.latency_ms)
        .offset(rank)
        .limit(1)
    )
    value = await conn.scalar(stmt)
    return float(value) if value is not None else None
