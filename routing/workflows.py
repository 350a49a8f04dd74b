"""Agent workflows in the LCPR report: what a finished *task* costs, not a single call (pure).

A workflow is every request carrying one `workflow_id` (a client tag or a Responses chain)
under one key. It **succeeded** when its last call (by arrival) is a successful request —
gateway.ledger.success decides that, in SQL, before anything reaches this module. Requests
without a workflow id are not workflows.

Per group of workflows (by the route or workload of each workflow's first call):

- calls per workflow: mean, p50 (nearest rank) and max;
- workflow success rate = succeeded / workflows;
- cost per successful workflow = every call's attempt cost / successful workflows (retries,
  fallbacks and the calls of failed workflows included: they were paid for);
- retry cascades: a call's retries are its attempts beyond the first; a workflow's are the
  sum over its calls (mean per workflow, and the share of workflows with at least one);
- per-call success rate = successful calls / calls.

Compounding: if every call succeeded independently with the per-call rate p, a workflow of
n calls would fail with probability 1 − pⁿ (5 % per-call failure over 6 calls fails 26 % of
workflows). routing.red_flags.workflow_failure_flag fires when the observed workflow failure
rate beats that by more than 5 points.

The ledger query hands over a histogram — per group and calls-per-workflow, the number of
workflows and their sums — so a month with millions of workflows is a few hundred rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

_ZERO = Decimal(0)
_ONE = Decimal(1)
#: The label of the line that sums every group.
ALL = "(all)"


@dataclass(frozen=True, slots=True)
class WorkflowBucket:
    """Workflows of one group that made exactly `calls` calls, with their sums."""

    group: str
    calls: int  # calls per workflow, the same for every workflow in the bucket
    workflows: int
    succeeded: int  # workflows whose last call was a successful request
    retries: int  # attempts beyond the first, summed over the calls of these workflows
    with_retries: int  # workflows with at least one retry
    successful_calls: int
    cost_usd: Decimal  # every attempt of every call


@dataclass(frozen=True, slots=True)
class WorkflowLine:
    group: str
    workflows: int
    calls: int
    calls_mean: Decimal
    calls_p50: int
    calls_max: int
    succeeded: int
    success_rate: Decimal
    cost_usd: Decimal
    cost_per_success: Decimal | None  # None: no workflow succeeded
    retries_mean: Decimal
    retry_share: Decimal  # share of workflows with at least one retry
    call_success_rate: Decimal
    # 1 − (per-call success) ^ (mean calls): the failure rate independent calls would give.
    compounded_failure_rate: Decimal

    @property
    def failure_rate(self) -> Decimal:
        return _ONE - self.success_rate


def compounded_failure(call_success_rate: Decimal, mean_calls: Decimal) -> Decimal:
    """1 − pⁿ: how often a workflow of `mean_calls` independent calls, each succeeding with
    probability `call_success_rate`, has at least one failure."""
    if call_success_rate <= 0:
        return _ONE
    return _ONE - call_success_rate**mean_calls


def p50(buckets: Iterable[WorkflowBucket]) -> int:
    """Median calls per workflow by nearest rank: the smallest count reached by half of
    the workflows (of 1, 2, 3, 4 calls: 2)."""
    ordered = sorted(buckets, key=lambda b: b.calls)
    total = sum(b.workflows for b in ordered)
    rank = (total + 1) // 2  # ceil(total / 2)
    seen = 0
    for b in ordered:
        seen += b.workflows
        if seen >= rank:
            return b.calls
    return 0


def workflow_line(group: str, buckets: Sequence[WorkflowBucket]) -> WorkflowLine | None:
    """One group's line from its buckets (None when it has no workflows)."""
    workflows = sum(b.workflows for b in buckets)
    if not workflows:
        return None
    n = Decimal(workflows)
    calls = sum(b.calls * b.workflows for b in buckets)
    succeeded = sum(b.succeeded for b in buckets)
    cost = sum((b.cost_usd for b in buckets), _ZERO)
    mean_calls = Decimal(calls) / n
    call_success = Decimal(sum(b.successful_calls for b in buckets)) / Decimal(calls)
    return WorkflowLine(
        group=group,
        workflows=workflows,
        calls=calls,
        calls_mean=mean_calls,
        calls_p50=p50(buckets),
        calls_max=max(b.calls for b in buckets if b.workflows),
        succeeded=succeeded,
        success_rate=Decimal(succeeded) / n,
        cost_usd=cost,
        cost_per_success=cost / Decimal(succeeded) if succeeded else None,
        retries_mean=Decimal(sum(b.retries for b in buckets)) / n,
        retry_share=Decimal(sum(b.with_retries for b in buckets)) / n,
        call_success_rate=call_success,
        compounded_failure_rate=compounded_failure(call_success, mean_calls),
    )


def workflow_lines(
    buckets: Iterable[WorkflowBucket],
) -> tuple[list[WorkflowLine], WorkflowLine | None]:
    """A line per group (most workflows first) and the line over all of them."""
    by_group: dict[str, list[WorkflowBucket]] = {}
    everything: dict[int, list[WorkflowBucket]] = {}
    for b in buckets:
        by_group.setdefault(b.group, []).append(b)
        everything.setdefault(b.calls, []).append(b)
    lines = [
        line
        for group, members in by_group.items()
        if (line := workflow_line(group, members)) is not None
    ]
    lines.sort(key=lambda line: (-line.workflows, line.group))
    merged = [_merge(calls, members) for calls, members in everything.items()]
    return lines, workflow_line(ALL, merged)


def _merge(calls: int, buckets: Sequence[WorkflowBucket]) -> WorkflowBucket:
    return WorkflowBucket(
        group=ALL,
        calls=calls,
        workflows=sum(b.workflows for b in buckets),
        succeeded=sum(b.succeeded for b in buckets),
        retries=sum(b.retries for b in buckets),
        with_retries=sum(b.with_retries for b in buckets),
        successful_calls=sum(b.successful_calls for b in buckets),
        cost_usd=sum((b.cost_usd for b in buckets), _ZERO),
    )
