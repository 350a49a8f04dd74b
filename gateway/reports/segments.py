"""The LCPR report's aggregate: requests, successes and attempt measures per segment × UTC
day, as one SQL statement (ReportStore.segment_report runs it)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    select,
    union_all,
)

from gateway.ledger.models import COST, attempts_table, requests_table
from gateway.ledger.rollup_layout import LCPR_MEASURES, MONEY
from gateway.ledger.success import SUCCESS_FLAG, gate_passed

SEGMENTS = ("model", "route", "workload", "key")
# The attempt role of an answer served from the response cache (gateway/cache/response.py).
CACHE_HIT = "cache_hit"
# Attempts start after their request arrives and end within its timeouts.
_SLACK = timedelta(days=1)


def segment_query(
    by: str,
    lo: datetime,
    hi: datetime,
    utc_day: Callable[[ColumnElement[Any]], ColumnElement[Any]],
) -> Any:
    """Per segment × UTC day, in two GROUP BYs: attempts per request first (a hash
    aggregate, no COUNT(DISTINCT) sort over the month), then per segment.

    Requests and successes (gateway.ledger.success) always come from `requests`, dated
    by received_at, so every segmentation counts the same requests and successes. For
    `model` a request belongs to its final deployment (the one whose answer the client
    got; "-" when none answered), while the attempt measures (tokens, cost, retries…)
    belong to the deployment that spent them, per deployment × request and dated by the
    first attempt there (all its attempts with it). Otherwise everything is per request,
    joined to `requests`.
    Each request (or deployment × request) falls on exactly one day, so summing the days
    gives exact month totals.
    """
    a, r = attempts_table.c, requests_table.c
    if by not in SEGMENTS:
        raise ValueError(f"by must be one of {', '.join(SEGMENTS)}, not {by!r}")
    input_tokens = a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens
    # A clean attempt is attempt-level (the list price of one good first try), not a
    # successful request.
    clean = (a.role == "primary") & a.error_class.is_(None) & gate_passed(a.gate_outcome)
    # A response-cache hit reached the client (a success) but no provider served its
    # tokens: they stay out of the token sums (and its cost is 0).
    hit = a.role == CACHE_HIT

    def flag(cond: ColumnElement[bool]) -> ColumnElement[Any]:
        return case((cond, 1), else_=0)

    def served(tokens: ColumnElement[Any]) -> ColumnElement[Any]:
        return case((hit, 0), else_=tokens)

    measures = [
        func.count(a.id).label("attempts"),
        func.sum(flag(a.role == "retry")).label("retries"),
        func.max(flag(a.role == "fallback")).label("fallback"),
        func.sum(flag(a.gate_outcome.is_not(None))).label("gated"),
        func.sum(flag(a.gate_outcome == "pass")).label("passed"),
        func.sum(served(input_tokens)).label("input"),
        func.sum(served(a.cached_read_tokens)).label("cached"),
        func.sum(served(a.output_tokens)).label("output"),
        func.sum(a.cost_usd).label("cost"),
        func.sum(flag(clean)).label("clean"),
        func.sum(case((clean, a.cost_usd))).label("clean_cost"),
        func.sum(case((clean, input_tokens + a.output_tokens), else_=0)).label("clean_tok"),
        func.sum(flag(hit)).label("hits"),
        func.sum(a.saved_usd).label("saved"),
    ]
    received = [r.received_at >= lo, r.received_at < hi]
    if by != "model":
        # Attempts start after their request arrives and end within its timeouts: a day
        # of slack on both sides keeps the attempt scan on the started_at index.
        per = (
            select(a.request_id.label("rid"), *measures)
            .where(a.started_at >= lo - _SLACK, a.started_at < hi + _SLACK)
            .group_by(a.request_id)
        ).subquery()
        column = {"route": r.route, "workload": r.workload, "key": r.key_id}[by]
        segment = func.coalesce(column, literal("-"))
        day = utc_day(r.received_at)
        # LEFT JOIN keeps requests that never reached an upstream (rejected, no route).
        return (
            select(segment, day, func.count(), func.sum(SUCCESS_FLAG), *_measure_sums(per))
            .select_from(requests_table.outerjoin(per, per.c.rid == r.id))
            .where(*received)
            .group_by(segment, day)
        )
    per = (
        select(
            a.deployment.label("segment"),
            func.min(a.started_at).label("first"),
            *measures,
        )
        # A deployment × request belongs wholly to the hour of its first attempt there (as in
        # the rollups, gateway/ledger/models_rollups.py), even when a retry on it crosses
        # the window's end; the slack only keeps the scan on the started_at index.
        .where(a.started_at >= lo - _SLACK, a.started_at < hi + _SLACK)
        .group_by(a.deployment, a.request_id)
        .having(func.min(a.started_at) >= lo, func.min(a.started_at) < hi)
    ).subquery()
    spent_day = utc_day(per.c.first)
    zero: ColumnElement[Any] = literal_column("0")
    spent = select(
        per.c.segment.label("segment"),
        spent_day.label("day"),
        zero.label("requests"),
        zero.label("ok"),
        *(m.label(name) for name, m in zip(_MEASURES, _measure_sums(per), strict=True)),
    ).group_by(per.c.segment, spent_day)
    answered_by = func.coalesce(r.final_deployment, literal("-"))
    answered_day = utc_day(r.received_at)
    answered = (
        select(
            answered_by.label("segment"),
            answered_day.label("day"),
            func.count().label("requests"),
            func.sum(SUCCESS_FLAG).label("ok"),
            *((cast(null(), COST) if name in _MONEY else zero).label(name) for name in _MEASURES),
        )
        .where(*received)
        .group_by(answered_by, answered_day)
    )
    u = union_all(spent, answered).subquery()
    return select(
        u.c.segment,
        u.c.day,
        *(func.sum(u.c[name]) for name in ("requests", "ok", *_MEASURES)),
    ).group_by(u.c.segment, u.c.day)


# The attempt measures per segment × day, in the order segment_report reads them: the
# rollups keep the same measures under the same names.
_MEASURES = LCPR_MEASURES
_MONEY = MONEY


def _measure_sums(per: Any) -> list[ColumnElement[Any]]:
    """Sums of the per-request attempt measures (NULL money stays NULL: nothing priced)."""
    p = per.c
    return [
        func.sum(p[name]) if name in _MONEY else func.coalesce(func.sum(p[name]), 0)
        for name in _MEASURES
    ]
