"""rollup_requests as a report reads it: the whole UTC days of a window from
rollup_requests_daily, the hours around them from rollup_requests (gateway/ledger/
models_rollups.py). Both hold the same sums, kept by the same writes, so the union is the
hourly table's rows for the window, with ~24 times fewer of them over a month.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, union_all

from gateway.ledger.models_rollups import rollup_requests_daily_table, rollup_requests_table

_h = rollup_requests_table.c
_d = rollup_requests_daily_table.c


def _next_day(when: datetime) -> datetime:
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if day == when else day + timedelta(days=1)


def tiered_requests(lo: datetime, hi: datetime | None = None) -> Any:
    """rollup_requests' rows of the hours in [lo, hi) (from lo on when hi is None: a day
    row holds what has been written of its day) as a subquery with its columns; `hour` of
    a day row is the day's 00:00. lo and hi are whole hours in the form the dialect
    compares."""
    first = _next_day(lo)  # the first whole day
    last = None if hi is None else hi.replace(hour=0)  # the end of the last whole day
    if last is not None and last <= first:
        return select(*_h).where(_h.hour >= lo, _h.hour < hi).subquery("rollup_requests_in")
    edges = [and_(_h.hour >= lo, _h.hour < first)]
    if last is not None and hi is not None:
        edges.append(and_(_h.hour >= last, _h.hour < hi))
    hours = select(*_h).where(or_(*edges))
    whole = [_d.day >= first] + ([] if last is None else [_d.day < last])
    days = select(_d.day.label("hour"), *(c for c in _d if c.name != "day")).where(*whole)
    return union_all(days, hours).subquery("rollup_requests_in")
