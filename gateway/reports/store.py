"""SQL for the reports: invoice imports, ledger aggregates, reconciliation runs.

Every read aggregates in the database (GROUP BY over indexed time ranges: `attempts` by
started_at, `requests` by received_at, `invoice_lines` by provider + period_start) and returns
one row per group, never raw ledger rows, so a 50M-attempt month costs the client a few
thousand rows. Day buckets are UTC on both dialects.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    and_,
    case,
    delete,
    func,
    select,
)

from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.models_batches import batches_table
from gateway.ledger.models_reports import invoice_lines_table, reconciliations_table
from gateway.ledger.success import SUCCESS_FLAG
from gateway.reports import rollup_queries
from gateway.reports.importers import ImportedFile
from gateway.reports.segments import CACHE_HIT, SEGMENTS
from gateway.reports.store_base import day_of, dec, opt_dec, utc_bound
from gateway.reports.store_batch import BatchQueries
from gateway.reports.store_segments import SegmentQueries
from gateway.reports.store_workflows import WorkflowQueries
from routing.batch_paths import BATCH_ROLE, PROVIDER_BATCH

# SEGMENTS and CACHE_HIT are re-exported: callers have always imported them from here.
__all__ = ["CACHE_HIT", "SEGMENTS", "AnsweredBy", "LedgerDay", "ReportStore"]


@dataclass(frozen=True, slots=True)
class LedgerDay:
    """Attempts of one deployment on one UTC day."""

    provider: str
    provider_kind: str
    deployment: str
    upstream_model: str
    day: date
    attempts: int
    failed: int
    input_uncached: int
    cached_read: int
    cache_write: int
    output: int
    cost_usd: Decimal
    unpriced: int
    retries: int = 0
    fallbacks: int = 0
    gated: int = 0
    gate_passed: int = 0
    busy_seconds: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class InvoiceDay:
    provider: str
    model: str
    day: date
    token_type: str
    tokens: Decimal | None
    amount_usd: Decimal | None
    requests: int | None


@dataclass(frozen=True, slots=True)
class DedicatedUse:
    provider: str
    busy_seconds: Decimal
    tokens: int


@dataclass(frozen=True, slots=True)
class AnsweredBy:
    """Requests whose answer came from one deployment (None: no deployment answered)."""

    deployment: str | None
    requests: int
    successful: int


class ReportStore(SegmentQueries, WorkflowQueries, BatchQueries):
    """Invoices, ledger aggregates and reconciliation runs; the LCPR segment queries are
    in store_segments.py, the workflow histogram in store_workflows.py, the batch tier's
    in store_batch.py, the engine and shared helpers in store_base.py."""

    # --- invoices ----------------------------------------------------------------------------

    async def save_imports(self, files: Sequence[ImportedFile]) -> int:
        """Store every file in one transaction; a file imported before is replaced by itself
        (same import id), so running the same reconcile twice never doubles an invoice."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
            {
                "id": f"{f.import_id}:{n}",
                "import_id": f.import_id,
                "provider": line.provider,
                "period_start": line.period_start,
                "period_end": line.period_end,
                "model": line.model,
                "token_type": line.token_type,
                "tokens": line.tokens,
                "amount_usd": line.amount_usd,
                "requests": line.requests,
                "line_item": line.line_item[:512],
                "source_file": f.source_file[-1024:],
                "source_format": f.format,
                "imported_at": now,
            }
            for f in files
            for n, line in enumerate(f.lines)
        ]
        if not self._pg:  # SQLite keeps timestamps as offset-less text: store UTC
            for row in rows:
                for key in ("period_start", "period_end", "imported_at"):
                    row[key] = row[key].astimezone(UTC).replace(tzinfo=None)
        ids = sorted({f.import_id for f in files})
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(invoice_lines_table).where(invoice_lines_table.c.import_id.in_(ids))
            )
            for start in range(0, len(rows), 5000):
                await conn.execute(invoice_lines_table.insert(), rows[start : start + 5000])
        return len(rows)

    async def invoice_days(
        self, import_ids: Sequence[str], start: datetime, end: datetime
    ) -> list[InvoiceDay]:
        i = invoice_lines_table.c
        day = self._utc_day(i.period_start)
        stmt = (
            select(
                i.provider,
                i.model,
                day,
                i.token_type,
                func.sum(i.tokens),
                func.sum(i.amount_usd),
                func.sum(i.requests),
            )
            .where(
                i.import_id.in_(list(import_ids)),
                i.period_start >= utc_bound(start, self._pg),
                i.period_start < utc_bound(end, self._pg),
            )
            .group_by(i.provider, i.model, day, i.token_type)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            InvoiceDay(
                provider=p,
                model=m,
                day=day_of(d),
                token_type=tt,
                tokens=opt_dec(tok),
                amount_usd=opt_dec(usd),
                requests=None if req is None else int(req),
            )
            for p, m, d, tt, tok, usd, req in rows
        ]

    async def paid_gpu_hours(self, start: datetime, end: datetime) -> dict[str, Decimal]:
        """GPU hours billed per provider in the window, from the newest import that has any
        (older imports of the same bill would otherwise add up)."""
        i = invoice_lines_table.c
        window = and_(
            i.token_type == "gpu_hours",
            i.period_start >= utc_bound(start, self._pg),
            i.period_start < utc_bound(end, self._pg),
        )
        latest = (
            select(i.provider, i.import_id, func.max(i.imported_at).label("at"))
            .where(window)
            .group_by(i.provider, i.import_id)
        ).subquery()
        newest = (
            select(latest.c.provider, func.max(latest.c.at).label("at")).group_by(latest.c.provider)
        ).subquery()
        stmt = (
            select(i.provider, func.sum(i.tokens))
            .select_from(
                invoice_lines_table.join(
                    latest, and_(latest.c.import_id == i.import_id, latest.c.provider == i.provider)
                ).join(newest, and_(newest.c.provider == i.provider, newest.c.at == latest.c.at))
            )
            .where(window)
            .group_by(i.provider)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {p: dec(h) for p, h in rows}

    # --- ledger ------------------------------------------------------------------------------

    async def ledger_days(
        self, start: datetime, end: datetime, *, provider_batch: bool = False
    ) -> list[LedgerDay]:
        """Attempts per deployment and UTC day; with `provider_batch`, only those billed
        through a provider's batch API (role batch, their batch's path provider_batch)."""
        a = attempts_table.c
        day = self._utc_day(a.started_at)
        source: Any = attempts_table
        # Response-cache hits carry their answer's tokens, but no provider served (or
        # bills) them: the metered side of reconciliation leaves them out.
        only = [a.role != CACHE_HIT]
        if provider_batch:
            r, b = requests_table.c, batches_table.c
            source = attempts_table.join(requests_table, r.id == a.request_id).join(
                batches_table, b.id == r.batch_id
            )
            only = [a.role == BATCH_ROLE, b.path == PROVIDER_BATCH]
        stmt = (
            select(
                a.provider,
                a.provider_kind,
                a.deployment,
                a.upstream_model,
                day,
                func.count(),
                func.sum(case((a.error_class.is_not(None), 1), else_=0)),
                func.sum(a.input_uncached_tokens),
                func.sum(a.cached_read_tokens),
                func.sum(a.cache_write_tokens),
                func.sum(a.output_tokens),
                func.sum(a.cost_usd),
                func.sum(case((a.cost_usd.is_(None), 1), else_=0)),
                # For the red flags, in the same scan.
                func.sum(case((a.role == "retry", 1), else_=0)),
                func.sum(case((a.role == "fallback", 1), else_=0)),
                func.sum(case((a.gate_outcome.is_not(None), 1), else_=0)),
                func.sum(case((a.gate_outcome == "pass", 1), else_=0)),
                func.sum(a.latency_ms),
            )
            .select_from(source)
            .where(
                a.started_at >= utc_bound(start, self._pg),
                a.started_at < utc_bound(end, self._pg),
                *only,
            )
            .group_by(a.provider, a.provider_kind, a.deployment, a.upstream_model, day)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.ledger_days(*window, self._utc_day, provider_batch)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            LedgerDay(
                provider=r[0],
                provider_kind=r[1],
                deployment=r[2],
                upstream_model=r[3],
                day=day_of(r[4]),
                attempts=int(r[5] or 0),
                failed=int(r[6] or 0),
                input_uncached=int(r[7] or 0),
                cached_read=int(r[8] or 0),
                cache_write=int(r[9] or 0),
                output=int(r[10] or 0),
                cost_usd=dec(r[11]),
                unpriced=int(r[12] or 0),
                retries=int(r[13] or 0),
                fallbacks=int(r[14] or 0),
                gated=int(r[15] or 0),
                gate_passed=int(r[16] or 0),
                busy_seconds=dec(r[17]) / 1000,
            )
            for r in rows
        ]

    async def spend_by_role(
        self, start: datetime, end: datetime
    ) -> list[tuple[str, str, int, Decimal]]:
        """(provider, attempt role, attempts, metered USD): where the money goes."""
        a = attempts_table.c
        stmt = (
            select(a.provider, a.role, func.count(), func.sum(a.cost_usd))
            .where(
                a.started_at >= utc_bound(start, self._pg),
                a.started_at < utc_bound(end, self._pg),
                a.role != CACHE_HIT,
            )
            .group_by(a.provider, a.role)
            .order_by(a.provider, a.role)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.spend_by_role(*window)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(p, role, int(n), dec(usd)) for p, role, n, usd in rows]

    async def price_versions(
        self, start: datetime, end: datetime
    ) -> list[tuple[str, str, list[str]]]:
        """(provider, deployment, price versions in first-use order) for the window."""
        a = attempts_table.c
        stmt = (
            select(a.provider, a.deployment, a.price_version, func.min(a.started_at))
            .where(
                a.started_at >= utc_bound(start, self._pg),
                a.started_at < utc_bound(end, self._pg),
                a.price_version.is_not(None),
            )
            .group_by(a.provider, a.deployment, a.price_version)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.price_versions(*window)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        grouped: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for provider, deployment, version, first in rows:
            grouped.setdefault((provider, deployment), []).append((str(first), version))
        return [(p, d, [v for _, v in sorted(vs)]) for (p, d), vs in sorted(grouped.items())]

    async def dedicated_use(self, start: datetime, end: datetime) -> list[DedicatedUse]:
        a = attempts_table.c
        stmt = (
            select(
                a.provider,
                func.sum(a.latency_ms),
                func.sum(
                    a.input_uncached_tokens
                    + a.cached_read_tokens
                    + a.cache_write_tokens
                    + a.output_tokens
                ),
            )
            .where(
                a.provider_kind == "dedicated",
                a.role != CACHE_HIT,
                a.started_at >= utc_bound(start, self._pg),
                a.started_at < utc_bound(end, self._pg),
            )
            .group_by(a.provider)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.dedicated_use(*window)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [DedicatedUse(p, dec(ms) / 1000, int(tok or 0)) for p, ms, tok in rows]

    async def answered_requests(self, start: datetime, end: datetime) -> list[AnsweredBy]:
        """Requests received in the window per final deployment (None: none answered), with
        how many were successful (gateway.ledger.success): the same requests and successes
        `farebox lcpr` divides by."""
        r = requests_table.c
        stmt = (
            select(r.final_deployment, func.count(), func.sum(SUCCESS_FLAG))
            .where(
                r.received_at >= utc_bound(start, self._pg),
                r.received_at < utc_bound(end, self._pg),
            )
            .group_by(r.final_deployment)
        )
        if (window := await self._rollup_window(start, end)) is not None:
            stmt = rollup_queries.answered_requests(*window)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        found = [AnsweredBy(dep, int(n or 0), int(ok or 0)) for dep, n, ok in rows]
        return sorted(found, key=lambda x: (x.deployment is None, x.deployment or ""))

    # --- reconciliation runs -----------------------------------------------------------------

    async def save_reconciliation(self, row: dict[str, Any]) -> str:
        row = dict(row)
        row.setdefault("id", "rec_" + uuid.uuid4().hex)
        row.setdefault("created_at", datetime.now(UTC))
        if not self._pg:
            row["created_at"] = row["created_at"].astimezone(UTC).replace(tzinfo=None)
        async with self.engine.begin() as conn:
            await conn.execute(reconciliations_table.insert(), [row])
        return str(row["id"])

    async def latest_reconciliation(self, month: str) -> dict[str, Any] | None:
        t = reconciliations_table.c
        stmt = select(reconciliations_table).where(t.month == month)
        stmt = stmt.order_by(t.created_at.desc()).limit(1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else dict(row)
