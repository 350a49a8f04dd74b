"""`farebox usage` over the rollups: the whole hours of the window from rollup_requests (its
whole days from rollup_requests_daily: gateway/ledger/rollup_tiers.py) and rollup_attempts,
the ragged first hour (`--since 30m` starts mid-hour) from the raw rows,
added up per group. The same figures as gateway/ledger/usage.py over raw rows alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal_column, select, union_all

from gateway.ledger.models_rollups import NONE, rollup_attempts_table
from gateway.ledger.rollup_tiers import tiered_requests
from gateway.ledger.usage import UsageLine

_t = rollup_attempts_table.c
_TOKENS = ("input_uncached", "cached_read", "cache_write", "output_all", "reasoning")


def next_hour(when: datetime) -> datetime:
    """The first whole hour at or after `when`: where the rollups take over."""
    hour = when.replace(minute=0, second=0, microsecond=0)
    return hour if hour == when else hour + timedelta(hours=1)


def usage_rollup_query(since: datetime, by: str) -> Select[Any]:
    """UsageLine rows (usage.usage_line's order) from the rollup hours at or after `since`
    (a whole hour, in the bound form the dialect compares)."""
    q = tiered_requests(since).c
    if by in ("route", "key"):
        group = q.route if by == "route" else func.nullif(q.key_id, NONE)
        return select(
            group,
            func.sum(q.requests),
            func.sum(q.attempts),
            *(func.sum(q[n]) for n in _TOKENS),
            func.sum(q.cost),
            func.sum(q.unpriced),
            func.sum(q.successful),
            func.sum(q.failed),
        ).group_by(group)
    if by != "deployment":
        raise ValueError(f"by must be route, key or deployment, not {by!r}")
    zero: ColumnElement[Any] = literal_column("0")
    spent = (
        select(
            _t.deployment.label("grp"),
            zero.label("requests"),
            zero.label("successful"),
            func.sum(_t.attempts).label("attempts"),
            func.sum(_t.input_uncached).label("input_uncached"),
            func.sum(_t.cached_read).label("cached_read"),
            func.sum(_t.cache_write).label("cache_write"),
            func.sum(_t.output).label("output_all"),
            func.sum(_t.reasoning).label("reasoning"),
            func.sum(_t.cost).label("cost"),
            func.sum(_t.unpriced).label("unpriced"),
            func.sum(_t.failed).label("failed"),
        )
        .where(_t.hour >= since)
        .group_by(_t.deployment)
    )
    answered_by = func.nullif(q.final_deployment, NONE)
    answered = select(
        answered_by.label("grp"),
        func.sum(q.requests).label("requests"),
        func.sum(q.successful).label("successful"),
        *(zero.label(n) for n in ("attempts", *_TOKENS, "cost", "unpriced", "failed")),
    ).group_by(answered_by)
    u = union_all(spent, answered).subquery()
    return select(
        u.c.grp,
        *(
            func.sum(u.c[n])
            for n in ("requests", "attempts", *_TOKENS, "cost", "unpriced", "successful", "failed")
        ),
    ).group_by(u.c.grp)


def merged(parts: Iterable[UsageLine]) -> list[UsageLine]:
    """Lines of the same group added up; most expensive first (then by group)."""
    out: dict[str | None, UsageLine] = {}
    for line in parts:
        have = out.get(line.group)
        if have is None:
            out[line.group] = line
            continue
        out[line.group] = UsageLine(
            group=line.group,
            **{
                name: getattr(have, name) + getattr(line, name)
                for name in UsageLine.__dataclass_fields__
                if name != "group"
            },
        )
    return sorted(out.values(), key=lambda u: (-u.cost_usd, u.group is None, u.group or ""))
