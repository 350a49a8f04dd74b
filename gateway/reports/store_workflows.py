"""The workflow query of `farebox lcpr --by workflow`: a histogram of workflows per group
and calls-per-workflow, summed in the database (routing/workflows.py does the arithmetic).

A workflow is the requests of one (key, workflow_id) that arrived in the window; a workflow
that straddles the window's edge counts, in each window, with the calls that arrived in it.
Its group is the route (or workload) of its first call; it succeeded when its last call is
a successful request by gateway.ledger.success (ties in arrival time break by request id).
A window of whole UTC months reads rollup_workflows (one row per workflow × month); any
other window reads the raw rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, literal, select

from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.success import SUCCESS_FLAG
from gateway.reports import rollup_queries
from gateway.reports.store_base import StoreBase, dec, report_session, utc_bound
from routing.workflows import WorkflowBucket

#: What a workflow can be grouped by: a column of its first call.
WORKFLOW_GROUPS = ("route", "workload")


def workflow_query(group_by: str, lo: datetime, hi: datetime) -> Any:
    """Three levels: every tagged call with its rank from each end of its workflow (window
    functions), then one row per workflow, then one per group × calls per workflow."""
    r, a = requests_table.c, attempts_table.c
    if group_by not in WORKFLOW_GROUPS:
        raise ValueError(f"workflows group by {' or '.join(WORKFLOW_GROUPS)}, not {group_by!r}")
    column = {"route": r.route, "workload": r.workload}[group_by]
    # Per call through the attempts' request_id index; unpriced attempts add nothing (as in
    # the LCPR token cost), a call without attempts costs nothing.
    cost = select(func.sum(a.cost_usd)).where(a.request_id == r.id).scalar_subquery()
    workflow = (r.key_id, r.workflow_id)
    calls = (
        select(
            r.key_id.label("key"),
            r.workflow_id.label("workflow"),
            func.coalesce(column, literal("-")).label("grp"),
            SUCCESS_FLAG.label("ok"),
            case((r.attempts > 1, r.attempts - 1), else_=0).label("retries"),
            cost.label("cost"),
            func.row_number()
            .over(partition_by=workflow, order_by=(r.received_at, r.id))
            .label("nth"),
            func.row_number()
            .over(partition_by=workflow, order_by=(r.received_at.desc(), r.id.desc()))
            .label("from_end"),
        ).where(r.workflow_id.is_not(None), r.received_at >= lo, r.received_at < hi)
    ).subquery()
    c = calls.c
    per_workflow = (
        select(
            func.max(case((c.nth == 1, c.grp))).label("grp"),
            func.count().label("calls"),
            func.max(case((c.from_end == 1, c.ok), else_=0)).label("won"),
            func.sum(c.ok).label("ok_calls"),
            func.sum(c.retries).label("retries"),
            func.sum(c.cost).label("cost"),
        ).group_by(c.key, c.workflow)
    ).subquery()
    w = per_workflow.c
    return (
        select(
            w.grp,
            w.calls,
            func.count(),
            func.sum(w.won),
            func.sum(w.retries),
            func.sum(case((w.retries > 0, 1), else_=0)),
            func.sum(w.ok_calls),
            func.sum(w.cost),
        )
        .group_by(w.grp, w.calls)
        .order_by(w.grp, w.calls)
    )


def _month_start(when: datetime) -> bool:
    return (when.day, when.hour) == (1, 0)  # whole hours already (`_rollup_window`)


class WorkflowQueries(StoreBase):
    async def workflow_buckets(
        self, group_by: str, start: datetime, end: datetime
    ) -> list[WorkflowBucket]:
        query = workflow_query(group_by, utc_bound(start, self._pg), utc_bound(end, self._pg))
        window = await self._rollup_window(start, end)
        if window is not None and all(_month_start(t) for t in window):
            query = rollup_queries.workflow_buckets(group_by, *window)
        async with self.engine.begin() as conn:
            if self._pg:
                await report_session(conn)
            rows = (await conn.execute(query)).all()
        return [
            WorkflowBucket(
                group=str(grp),
                calls=int(calls),
                workflows=int(workflows),
                succeeded=int(won or 0),
                retries=int(retries or 0),
                with_retries=int(with_retries or 0),
                successful_calls=int(ok_calls or 0),
                cost_usd=dec(cost),
            )
            for grp, calls, workflows, won, retries, with_retries, ok_calls, cost in rows
        ]
