"""LCPR's queries: per-segment month totals, daily rates for the trend flags, and dedicated
GPU tokens per segment (segment = model, route, workload or key)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    func,
    literal,
    select,
)

from gateway.ledger.models import attempts_table, requests_table
from gateway.reports import rollup_queries
from gateway.reports.segments import CACHE_HIT, SEGMENTS, segment_query
from gateway.reports.store_base import ZERO, StoreBase, day_of, dec, report_session, utc_bound
from routing.lcpr import SegmentTotals
from routing.red_flags import DailyRates


class SegmentQueries(StoreBase):
    async def _segment_days(self, by: str, start: datetime, end: datetime) -> list[Any]:
        window = await self._rollup_window(start, end)
        if window is not None:
            if by not in SEGMENTS:
                raise ValueError(f"by must be one of {', '.join(SEGMENTS)}, not {by!r}")
            query = rollup_queries.segment_days(by, *window, self._utc_day)
        else:
            query = segment_query(
                by, utc_bound(start, self._pg), utc_bound(end, self._pg), self._utc_day
            )
        async with self.engine.begin() as conn:
            if self._pg:
                await report_session(conn)
            return list((await conn.execute(query)).all())

    async def segment_report(
        self, by: str, start: datetime, end: datetime
    ) -> tuple[list[SegmentTotals], list[DailyRates]]:
        """Month totals per segment and the same counts per UTC day (for trend flags), from
        one aggregate query (segments × days rows)."""
        rows = await self._segment_days(by, start, end)
        dedicated = await self._dedicated_by_segment(by, start, end)
        daily = []
        counts: dict[str, list[int]] = {}
        money: dict[str, list[Decimal]] = {}
        hits: dict[str, list[Any]] = {}
        for row in rows:
            seg = str(row[0])
            # requests, successful, attempts, retries, fallback, gated, passed, input, cached,
            # output, clean attempts, clean tokens; then token cost and clean-attempt cost
            n = [int(v or 0) for v in (*row[2:12], row[13], row[15])]
            usd = [dec(row[12]), dec(row[14])]
            acc = counts.setdefault(seg, [0] * len(n))
            for i, v in enumerate(n):
                acc[i] += v
            dollars = money.setdefault(seg, [ZERO, ZERO])
            dollars[0] += usd[0]
            dollars[1] += usd[1]
            cached = hits.setdefault(seg, [0, ZERO])  # response-cache hits, their savings
            cached[0] += int(row[16] or 0)
            cached[1] += dec(row[17])
            daily.append(DailyRates(seg, day_of(row[1]), n[0], n[3], n[5], n[6], n[7], n[8]))
        totals = [
            SegmentTotals(
                segment=seg,
                requests=v[0],
                successful=v[1],
                attempts=v[2],
                retries=v[3],
                fallback_requests=v[4],
                gated=v[5],
                gate_passed=v[6],
                input_tokens=v[7],
                cached_tokens=v[8],
                output_tokens=v[9],
                token_cost_usd=money[seg][0],
                clean_attempts=v[10],
                clean_attempt_cost_usd=money[seg][1],
                clean_attempt_tokens=v[11],
                dedicated_tokens=dedicated.get(seg, {}),
                cache_hits=hits[seg][0],
                saved_usd=hits[seg][1],
            )
            for seg, v in counts.items()
        ]
        return totals, daily

    async def _dedicated_by_segment(
        self, by: str, start: datetime, end: datetime
    ) -> dict[str, dict[str, int]]:
        window = await self._rollup_window(start, end)
        if window is not None:
            async with self.engine.connect() as conn:
                found = (await conn.execute(rollup_queries.dedicated_by_segment(by, *window))).all()
            return _by_segment(found)
        a, r = attempts_table.c, requests_table.c
        tokens = (
            a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens + a.output_tokens
        )
        if by == "model":
            segment: ColumnElement[Any] = a.deployment
            source: Any = attempts_table
            when = a.started_at
        else:
            column = {"route": r.route, "workload": r.workload, "key": r.key_id}[by]
            segment = func.coalesce(column, literal("-"))
            source = requests_table.join(attempts_table, a.request_id == r.id)
            when = r.received_at
        stmt = (
            select(segment, a.provider, func.sum(tokens))
            .select_from(source)
            .where(
                a.provider_kind == "dedicated",
                a.role != CACHE_HIT,
                when >= utc_bound(start, self._pg),
                when < utc_bound(end, self._pg),
            )
            .group_by(segment, a.provider)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return _by_segment(rows)


def _by_segment(rows: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for seg, provider, n in rows:
        out.setdefault(str(seg), {})[provider] = int(n or 0)
    return out
