"""`farebox lcpr --by workflow`: what agent workflows cost and how often they succeed.

The ledger's histogram comes from ReportStore.workflow_buckets (store_workflows.py); the
arithmetic and the red flag are routing.workflows and routing.red_flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.reports.reconcile import month_window
from gateway.reports.store import ReportStore
from routing.red_flags import RedFlag, workflow_failure_flag
from routing.workflows import WorkflowLine, workflow_lines

#: Printed under the numbers, next to the success rule.
DEFINITION = (
    "Workflow: the requests of one key tagged with one workflow id (x-farebox-workflow, "
    "metadata.workflow_id or a previous_response_id chain) that arrived in the month; it "
    "succeeded when its last call is a successful request. Requests without a workflow id "
    "are not counted. Cost per successful workflow = the attempts of every call, failed "
    "workflows' included, / successful workflows. Retries = attempts beyond the first."
)


@dataclass(slots=True)
class WorkflowReport:
    month: str
    group_by: str  # route | workload (of each workflow's first call)
    lines: list[WorkflowLine]
    total: WorkflowLine | None
    red_flags: list[RedFlag] = field(default_factory=list)
    elapsed_s: float = 0.0


async def workflow_report(store: ReportStore, month: str, group_by: str) -> WorkflowReport:
    started = time.perf_counter()
    start, end = month_window(month)
    lines, total = workflow_lines(await store.workflow_buckets(group_by, start, end))
    flags = [
        flag
        for line in lines
        for flag in workflow_failure_flag(
            line.group, line.failure_rate, line.call_success_rate, line.calls_mean
        )
    ]
    report = WorkflowReport(month, group_by, lines, total, flags)
    report.elapsed_s = time.perf_counter() - started
    return report


def _s(value: Decimal | None, places: int = 8) -> str | None:
    return None if value is None else str(round(value, places))


def line_dict(line: WorkflowLine) -> dict[str, Any]:
    return {
        "group": line.group,
        "workflows": line.workflows,
        "calls": line.calls,
        "calls_per_workflow": {
            "mean": _s(line.calls_mean, 4),
            "p50": line.calls_p50,
            "max": line.calls_max,
        },
        "successful_workflows": line.succeeded,
        "workflow_success_rate": _s(line.success_rate, 4),
        "cost_usd": _s(line.cost_usd),
        "cost_per_successful_workflow_usd": _s(line.cost_per_success),
        "retries_per_workflow": _s(line.retries_mean, 4),
        "workflows_with_retries_share": _s(line.retry_share, 4),
        "call_success_rate": _s(line.call_success_rate, 4),
        "compounded_failure_rate": _s(line.compounded_failure_rate, 4),
    }


def report_dict(r: WorkflowReport) -> dict[str, Any]:
    return {
        "month": r.month,
        "by": "workflow",
        "group_by": r.group_by,
        "total": None if r.total is None else line_dict(r.total),
        "groups": [line_dict(line) for line in r.lines],
        "red_flags": [
            {"code": f.code, "subject": f.subject, "message": f.message} for f in r.red_flags
        ],
    }
