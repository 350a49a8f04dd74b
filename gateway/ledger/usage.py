"""`farebox usage`: the ledger's totals per route, key or deployment (SQL builders only;
LedgerRepository.usage runs them).

Successful requests are counted by the one rule (gateway.ledger.success). By route and key
every figure is the group's requests' (attempts joined to their request); by deployment,
attempts, tokens and cost are the deployment's own attempts while requests and successes
belong to the deployment that answered (the request's final deployment), so requests and
successes add up to the same totals in every grouping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
)

from gateway.ledger.models import COST, attempts_table, requests_table
from gateway.ledger.success import SUCCESS_FLAG, SUCCESSFUL

_TOKEN_COLUMNS = (
    "input_uncached_tokens",
    "cached_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One row of `farebox usage`.

    `group` is the route, key id or deployment (None for requests made without a key, or,
    by deployment, requests no deployment answered). Token and cost totals cover every
    attempt (retries, fallbacks, hedges are all billed). `cost_usd` sums only priced
    attempts; `unpriced_attempts` says how many were left out, so an unknown price never
    silently reads as $0.

    By deployment, attempts, tokens and cost are the deployment's own attempts, while
    `requests` and `successful` count the requests it answered (their final deployment):
    `requests` and `successful` then sum to the same totals in every grouping.
    """

    group: str | None
    requests: int
    attempts: int
    input_uncached_tokens: int
    cached_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal
    unpriced_attempts: int
    # Successful requests (gateway.ledger.success); by deployment, those it answered.
    successful: int = 0
    # Attempts that failed (any error class): the attempt-level error rate, not the
    # complement of `successful`.
    failed_attempts: int = 0

    @property
    def cost_per_success(self) -> Decimal | None:
        """Spend divided by successes: what one good answer really costs (failed and
        escalated attempts included)."""
        if not self.successful:
            return None
        return self.cost_usd / self.successful


def usage_query(since: datetime, by: str, until: datetime | None = None) -> Select[Any]:
    """The query for one grouping; `since` (and `until`, excluded) are UTC instants."""
    if by in ("route", "key"):
        return _usage_by_request(since, by, until)
    if by == "deployment":
        return _usage_by_deployment(since, until)
    raise ValueError(f"by must be route, key or deployment, not {by!r}")


def usage_line(row: Sequence[Any]) -> UsageLine:
    return UsageLine(
        group=row[0],
        requests=int(row[1] or 0),
        attempts=int(row[2] or 0),
        input_uncached_tokens=int(row[3] or 0),
        cached_read_tokens=int(row[4] or 0),
        cache_write_tokens=int(row[5] or 0),
        output_tokens=int(row[6] or 0),
        reasoning_tokens=int(row[7] or 0),
        cost_usd=decimal_of(row[8]),
        unpriced_attempts=int(row[9] or 0),
        successful=int(row[10] or 0),
        failed_attempts=int(row[11] or 0),
    )


def decimal_of(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    # SQLite sums NUMERIC as REAL; go through str so the float's repr, not its binary
    # expansion, becomes the Decimal.
    return Decimal(str(value))


def _attempt_aggregates(
    group: ColumnElement[Any], requests: ColumnElement[Any], successful: ColumnElement[Any]
) -> tuple[list[ColumnElement[Any]], ColumnElement[Any]]:
    """Select list for the per-request groupings, plus the expression to rank groups by cost."""
    a = attempts_table.c
    tokens = [func.coalesce(func.sum(a[name]), 0) for name in _TOKEN_COLUMNS]
    cost = func.sum(a.cost_usd)
    # a.id is NULL for a request without attempts (LEFT JOIN): that is not an unpriced attempt.
    unpriced = func.coalesce(
        func.sum(case((a.id.is_not(None) & a.cost_usd.is_(None), 1), else_=0)), 0
    )
    failed = func.coalesce(func.sum(case((a.error_class.is_not(None), 1), else_=0)), 0)
    columns = [
        group,
        requests,
        func.count(a.id),
        *tokens,
        type_coerce(cost, COST),
        unpriced,
        successful,
        failed,
    ]
    return columns, func.coalesce(cost, 0).desc()


def _usage_by_request(since: datetime, by: str, until: datetime | None) -> Select[Any]:
    r = requests_table.c
    group = r.route if by == "route" else r.key_id
    successful = func.count(func.distinct(case((SUCCESSFUL, r.id))))
    columns, by_cost = _attempt_aggregates(group, func.count(func.distinct(r.id)), successful)
    # LEFT JOIN keeps requests that never reached an upstream (rejected, no route) in the count.
    return (
        select(*columns)
        .select_from(requests_table.outerjoin(attempts_table, attempts_table.c.request_id == r.id))
        .where(r.received_at >= since, *([r.received_at < until] if until else []))
        .group_by(group)
        .order_by(by_cost, group)
    )


def _usage_by_deployment(since: datetime, until: datetime | None) -> Select[Any]:
    """Attempts, tokens and cost where they were spent (each attempt's deployment); requests
    and successes where they were answered (each request's final deployment, None when no
    deployment answered). So the requests and successes of every grouping add up to the same
    totals, while a deployment's cost still includes its failed attempts."""
    a, r = attempts_table.c, requests_table.c
    zero: ColumnElement[Any] = literal_column("0")
    no_cost = cast(null(), COST)
    spent = (
        select(
            a.deployment.label("grp"),
            zero.label("requests"),
            zero.label("successful"),
            func.count().label("attempts"),
            *(func.sum(a[name]).label(name) for name in _TOKEN_COLUMNS),
            func.sum(a.cost_usd).label("cost"),
            func.sum(case((a.cost_usd.is_(None), 1), else_=0)).label("unpriced"),
            func.sum(case((a.error_class.is_not(None), 1), else_=0)).label("failed"),
        )
        .where(a.started_at >= since, *([a.started_at < until] if until else []))
        .group_by(a.deployment)
    )
    answered = (
        select(
            r.final_deployment.label("grp"),
            func.count().label("requests"),
            func.sum(SUCCESS_FLAG).label("successful"),
            zero.label("attempts"),
            *(zero.label(name) for name in _TOKEN_COLUMNS),
            no_cost.label("cost"),
            zero.label("unpriced"),
            zero.label("failed"),
        )
        .where(r.received_at >= since, *([r.received_at < until] if until else []))
        .group_by(r.final_deployment)
    )
    u = union_all(spent, answered).subquery()
    cost = func.sum(u.c.cost)

    def total(name: str) -> ColumnElement[Any]:
        return func.coalesce(func.sum(u.c[name]), 0)

    return (
        select(
            u.c.grp,
            total("requests"),
            total("attempts"),
            *(total(name) for name in _TOKEN_COLUMNS),
            type_coerce(cost, COST),
            total("unpriced"),
            total("successful"),
            total("failed"),
        )
        .group_by(u.c.grp)
        .order_by(func.coalesce(cost, 0).desc(), u.c.grp)
    )
