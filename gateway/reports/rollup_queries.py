"""The report queries over the rollups (gateway/ledger/models_rollups.py): each returns rows of
exactly the shape its raw-row twin returns (in store.py, store_segments.py, store_batch.py), so
the report code after the query is shared and the two can be compared cell by cell.

A window reads whole hours: ReportStore uses these only for hour-aligned windows (a month, a
day) and the raw rows otherwise. NULL dimensions are stored as '' and mapped back here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
)

from gateway.ledger.models import COST
from gateway.ledger.models_rollups import (
    rollup_attempts_table,
    rollup_dedicated_table,
    rollup_deployments_table,
    rollup_spend_table,
    rollup_workflows_table,
)
from gateway.ledger.rollup_layout import LCPR_MEASURES, MONEY, NONE
from gateway.ledger.rollup_tiers import tiered_requests
from routing.batch_paths import BATCH_ROLE, PROVIDER_BATCH

CACHE_HIT = "cache_hit"
DayOf = Callable[[ColumnElement[Any]], ColumnElement[Any]]

_d = rollup_deployments_table.c
_t = rollup_attempts_table.c
_g = rollup_dedicated_table.c


def dash(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A NULL dimension as the raw reports print it (`coalesce(column, '-')`)."""
    return case((column == NONE, literal("-")), else_=column)


def nullable(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A NULL dimension back as NULL."""
    return func.nullif(column, NONE)


def _in(hour: ColumnElement[Any], lo: datetime, hi: datetime) -> list[ColumnElement[bool]]:
    return [hour >= lo, hour < hi]


def segment_days(by: str, lo: datetime, hi: datetime, utc_day: DayOf) -> Any:
    """segment_query's rows (segments.py) from rollup_requests / rollup_deployments."""
    q = tiered_requests(lo, hi).c
    sums = [func.coalesce(func.sum(q[m]), 0) for m in LCPR_MEASURES]
    if by != "model":
        column = {"route": q.route, "workload": q.workload, "key": q.key_id}[by]
        segment, day = dash(column), utc_day(q.hour)
        return select(segment, day, func.sum(q.requests), func.sum(q.successful), *sums).group_by(
            segment, day
        )
    zero: ColumnElement[Any] = literal_column("0")
    spent_day = utc_day(_d.hour)
    spent = (
        select(
            _d.deployment.label("segment"),
            spent_day.label("day"),
            zero.label("requests"),
            zero.label("ok"),
            *(func.sum(_d[m]).label(m) for m in LCPR_MEASURES),
        )
        .where(*_in(_d.hour, lo, hi))
        .group_by(_d.deployment, spent_day)
    )
    answered_by, answered_day = dash(q.final_deployment), utc_day(q.hour)
    answered = select(
        answered_by.label("segment"),
        answered_day.label("day"),
        func.sum(q.requests).label("requests"),
        func.sum(q.successful).label("ok"),
        *((cast(null(), COST) if m in MONEY else zero).label(m) for m in LCPR_MEASURES),
    ).group_by(answered_by, answered_day)
    u = union_all(spent, answered).subquery()
    return select(
        u.c.segment,
        u.c.day,
        *(func.sum(u.c[name]) for name in ("requests", "ok", *LCPR_MEASURES)),
    ).group_by(u.c.segment, u.c.day)


def dedicated_by_segment(by: str, lo: datetime, hi: datetime) -> Any:
    """(segment, provider, tokens) of dedicated providers, as store_segments' raw query."""
    if by == "model":
        tokens = _t.input_uncached + _t.cached_read + _t.cache_write + _t.output
        return (
            select(_t.deployment, _t.provider, func.sum(tokens))
            .where(_t.provider_kind == "dedicated", _t.role != CACHE_HIT, *_in(_t.hour, lo, hi))
            .group_by(_t.deployment, _t.provider)
        )
    column = {"route": _g.route, "workload": _g.workload, "key": _g.key_id}[by]
    segment = dash(column)
    return (
        select(segment, _g.provider, func.sum(_g.tokens))
        .where(*_in(_g.hour, lo, hi))
        .group_by(segment, _g.provider)
    )


def _role_count(role: str) -> ColumnElement[Any]:
    return func.sum(case((_t.role == role, _t.attempts), else_=0))


def ledger_days(lo: datetime, hi: datetime, utc_day: DayOf, provider_batch: bool = False) -> Any:
    """ReportStore.ledger_days' rows (response-cache hits left out); with `provider_batch`
    only batch lines' attempts whose batch went through a provider's batch API."""
    day = utc_day(_t.hour)
    only = (
        [_t.role == BATCH_ROLE, _t.batch_path == PROVIDER_BATCH]
        if provider_batch
        else [_t.role != CACHE_HIT]
    )
    keys = (_t.provider, _t.provider_kind, _t.deployment, _t.upstream_model)
    return (
        select(
            *keys,
            day,
            func.sum(_t.attempts),
            func.sum(_t.failed),
            func.sum(_t.input_uncached),
            func.sum(_t.cached_read),
            func.sum(_t.cache_write),
            func.sum(_t.output),
            func.sum(_t.cost),
            func.sum(_t.unpriced),
            _role_count("retry"),
            _role_count("fallback"),
            func.sum(_t.gated),
            func.sum(_t.passed),
            func.sum(_t.busy_ms),
        )
        .where(*only, *_in(_t.hour, lo, hi))
        .group_by(*keys, day)
    )


def spend_by_role(lo: datetime, hi: datetime) -> Any:
    return (
        select(_t.provider, _t.role, func.sum(_t.attempts), func.sum(_t.cost))
        .where(_t.role != CACHE_HIT, *_in(_t.hour, lo, hi))
        .group_by(_t.provider, _t.role)
        .order_by(_t.provider, _t.role)
    )


def price_versions(lo: datetime, hi: datetime) -> Any:
    return (
        select(_t.provider, _t.deployment, _t.price_version, func.min(_t.first_at))
        .where(_t.price_version != NONE, *_in(_t.hour, lo, hi))
        .group_by(_t.provider, _t.deployment, _t.price_version)
    )


def dedicated_use(lo: datetime, hi: datetime) -> Any:
    tokens = _t.input_uncached + _t.cached_read + _t.cache_write + _t.output
    return (
        select(_t.provider, func.sum(_t.busy_ms), func.sum(tokens))
        .where(_t.provider_kind == "dedicated", _t.role != CACHE_HIT, *_in(_t.hour, lo, hi))
        .group_by(_t.provider)
    )


def answered_requests(lo: datetime, hi: datetime) -> Any:
    q = tiered_requests(lo, hi).c
    deployment = nullable(q.final_deployment)
    return select(deployment, func.sum(q.requests), func.sum(q.successful)).group_by(deployment)


def request_groups(lo: datetime, hi: datetime) -> Any:
    """BatchQueries.request_groups' rows."""
    q = tiered_requests(lo, hi).c
    deployment = nullable(q.final_deployment)
    workload = dash(q.workload)
    return select(
        workload,
        q.route,
        q.batch,
        deployment,
        func.sum(q.requests),
        func.sum(q.successful),
    ).group_by(workload, q.route, q.batch, deployment)


def spend_groups(lo: datetime, hi: datetime, deferrable: Sequence[str], utc_day: DayOf) -> Any:
    """BatchQueries.spend_groups' rows: batch lines' attempts, and live requests' of the
    deferrable workloads, by request dims (window) and the attempt's UTC day."""
    s = rollup_spend_table.c
    which: ColumnElement[bool] = s.batch == 1
    if deferrable:
        which = or_(which, and_(s.batch == 0, s.workload.in_(list(deferrable))))
    keys = (dash(s.workload), s.route, s.batch, s.deployment, s.provider, s.provider_kind)
    day = utc_day(s.started_hour)
    return (
        select(
            *keys,
            s.upstream_model,
            day,
            func.sum(s.attempts),
            func.sum(s.input_uncached),
            func.sum(s.cached_read),
            func.sum(s.cache_write),
            func.sum(s.output),
            func.sum(s.cost),
            func.sum(s.unpriced),
        )
        .where(which, *_in(s.hour, lo, hi))
        .group_by(*keys, s.upstream_model, day)
    )


def dedicated_busy(lo: datetime, hi: datetime) -> Any:
    """BatchQueries.dedicated_busy's rows."""
    batch = case((_t.role == BATCH_ROLE, 1), else_=0)
    return (
        select(_t.provider, _t.deployment, batch, func.sum(_t.attempts), func.sum(_t.busy_ms))
        .where(_t.provider_kind == "dedicated", _t.role != CACHE_HIT, *_in(_t.hour, lo, hi))
        .group_by(_t.provider, _t.deployment, batch)
    )


def workflow_buckets(group_by: str, lo: datetime, hi: datetime) -> Any:
    """store_workflows.workflow_query's rows from rollup_workflows, for a window of whole
    UTC months: one row per workflow and month (a month's calls, the first and last of
    them), grouped by its first call's route or workload; it won when its last call
    succeeded. Over one month, one aggregate; over several, `_workflow_months`."""
    w = rollup_workflows_table.c
    if (hi.year * 12 + hi.month) - (lo.year * 12 + lo.month) != 1:
        return _workflow_months(group_by, lo, hi)
    group = {"route": w.first_route, "workload": dash(w.first_workload)}[group_by]
    return (
        select(
            group,
            w.calls,
            func.count(),
            func.sum(w.last_ok),
            func.sum(w.retries),
            func.sum(case((w.retries > 0, 1), else_=0)),
            func.sum(w.ok_calls),
            func.sum(w.cost),
        )
        .where(w.month == lo)
        .group_by(group, w.calls)
        .order_by(group, w.calls)
    )


def _workflow_months(group_by: str, lo: datetime, hi: datetime) -> Any:
    """`workflow_buckets` over several months: a workflow's months in the window add up its
    calls, its group is its first call's and it won when its last call in the window
    succeeded (first and last by received_at, then id, as in the raw query)."""
    w = rollup_workflows_table.c
    column = {"route": w.first_route, "workload": dash(w.first_workload)}[group_by]
    workflow = (w.key_id, w.workflow_id)
    hours = (
        select(
            w.key_id,
            w.workflow_id,
            column.label("grp"),
            w.calls,
            w.ok_calls,
            w.retries,
            w.cost,
            w.last_ok,
            func.row_number()
            .over(partition_by=workflow, order_by=(w.first_at, w.first_id))
            .label("nth"),
            func.row_number()
            .over(partition_by=workflow, order_by=(w.last_at.desc(), w.last_id.desc()))
            .label("from_end"),
        ).where(*_in(w.month, lo, hi))
    ).subquery()
    h = hours.c
    per_workflow = (
        select(
            func.max(case((h.nth == 1, h.grp))).label("grp"),
            func.sum(h.calls).label("calls"),
            func.max(case((h.from_end == 1, h.last_ok), else_=0)).label("won"),
            func.sum(h.ok_calls).label("ok_calls"),
            func.sum(h.retries).label("retries"),
            func.sum(h.cost).label("cost"),
        ).group_by(h.key_id, h.workflow_id)
    ).subquery()
    p = per_workflow.c
    return (
        select(
            p.grp,
            p.calls,
            func.count(),
            func.sum(p.won),
            func.sum(p.retries),
            func.sum(case((p.retries > 0, 1), else_=0)),
            func.sum(p.ok_calls),
            func.sum(p.cost),
        )
        .group_by(p.grp, p.calls)
        .order_by(p.grp, p.calls)
    )
