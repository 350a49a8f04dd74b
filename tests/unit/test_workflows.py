"""Workflow arithmetic (routing/workflows.py) and its red flag (routing/red_flags.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from routing.red_flags import workflow_failure_flag
from routing.workflows import (
    ALL,
    WorkflowBucket,
    compounded_failure,
    p50,
    workflow_line,
    workflow_lines,
)

D = Decimal


def bucket(group: str, calls: int, workflows: int, **kw: object) -> WorkflowBucket:
    fields: dict[str, object] = {
        "succeeded": workflows,
        "retries": 0,
        "with_retries": 0,
        "successful_calls": calls * workflows,
        "cost_usd": D(0),
    }
    fields.update(kw)
    return WorkflowBucket(group, calls, workflows, **fields)  # type: ignore[arg-type]


def test_the_seed_figure_5_percent_over_6_calls_fails_26_percent() -> None:
    assert round(compounded_failure(D("0.95"), D(6)), 4) == D("0.2649")
    assert compounded_failure(D(1), D("3.5")) == 0
    assert compounded_failure(D(0), D(2)) == 1


@pytest.mark.parametrize(
    ("counts", "median"),
    [
        ({1: 1, 2: 1, 3: 1, 4: 1}, 2),  # nearest rank: the 2nd of 4
        ({1: 1, 2: 1, 3: 1}, 2),
        ({1: 3, 10: 1}, 1),
        ({7: 1}, 7),
        ({2: 1, 9: 5}, 9),
    ],
)
def test_p50_is_the_nearest_rank_over_the_histogram(counts: dict[int, int], median: int) -> None:
    assert p50([bucket("g", calls, n) for calls, n in counts.items()]) == median


def test_a_group_line_from_its_buckets() -> None:
    line = workflow_line(
        "chat",
        [
            # three 2-call workflows: two succeeded, one retried twice; 5 of 6 calls good
            bucket(
                "chat", 2, 3, succeeded=2, retries=2, with_retries=1, successful_calls=5,
                cost_usd=D("0.6"),
            ),
            # one 4-call workflow that failed, after 3 retries; 2 of 4 calls good
            bucket(
                "chat", 4, 1, succeeded=0, retries=3, with_retries=1, successful_calls=2,
                cost_usd=D("0.4"),
            ),
        ],
    )  # fmt: skip
    assert line is not None
    assert (line.workflows, line.calls, line.calls_p50, line.calls_max) == (4, 10, 2, 4)
    assert line.calls_mean == D("2.5")
    assert (line.succeeded, line.success_rate, line.failure_rate) == (2, D("0.5"), D("0.5"))
    # every call's cost, the failed workflow's too, over the successful workflows
    assert (line.cost_usd, line.cost_per_success) == (D("1.0"), D("0.5"))
    assert (line.retries_mean, line.retry_share) == (D("1.25"), D("0.5"))
    assert line.call_success_rate == D("0.7")
    assert line.compounded_failure_rate == 1 - D("0.7") ** D("2.5")


def test_no_successful_workflow_has_no_cost_per_success() -> None:
    line = workflow_line("g", [bucket("g", 3, 2, succeeded=0, successful_calls=0, cost_usd=D(1))])
    assert line is not None
    assert line.cost_per_success is None and line.success_rate == 0
    assert line.compounded_failure_rate == 1
    assert workflow_line("g", []) is None


def test_lines_per_group_and_over_all() -> None:
    lines, total = workflow_lines(
        [
            bucket("a", 1, 1, cost_usd=D("0.1")),
            bucket("b", 2, 2, succeeded=1, successful_calls=3, cost_usd=D("0.4")),
            bucket("b", 1, 1, cost_usd=D("0.1")),
        ]
    )
    assert [(line.group, line.workflows) for line in lines] == [("b", 3), ("a", 1)]
    assert total is not None and total.group == ALL
    assert (total.workflows, total.calls, total.succeeded) == (4, 6, 3)
    assert total.calls_p50 == 1  # 1, 1, 2, 2 calls: the 2nd
    assert total.cost_usd == D("0.6") and total.cost_per_success == D("0.2")
    assert total.call_success_rate == D(5) / D(6)
    assert workflow_lines([]) == ([], None)


def test_the_flag_fires_only_beyond_the_compounded_rate_plus_5_points() -> None:
    # 5 % per-call failure over 6 calls: 26.5 % expected, the limit is 31.5 %.
    assert workflow_failure_flag("chat", D("0.26"), D("0.95"), D(6)) == []
    assert workflow_failure_flag("chat", D("0.31"), D("0.95"), D(6)) == []
    (flag,) = workflow_failure_flag("chat", D("0.40"), D("0.95"), D(6))
    assert (flag.code, flag.subject) == ("workflow_failure_high", "chat")
    for number in ("40.0 %", "31.5 %", "0.950^6.00", "26.5 %", "95.0 %", "6.00 calls"):
        assert number in flag.message, flag.message
    # Every call failing: every workflow fails, as expected: no flag.
    assert workflow_failure_flag("x", D(1), D(0), D(3)) == []
