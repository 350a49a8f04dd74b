"""Guardrail hits in the reports: per route, the requests a guard check fired on, by
outcome (blocked, rerouted, masked, flagged) and per check.

One GROUP BY over the window's requests that carry a guard summary (`requests.guard` is
NULL on every other, so the read stays on the partial index `ix_requests_guard_received_at`
however big the month) by route, summary and error class; the summaries are split by
routing.guard_summary. Shown by `farebox usage` and `farebox lcpr` (console and --json),
and in the LCPR report's Markdown and HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.models import requests_table
from routing.guard_summary import GuardHits, outcomes_of, tally

TITLE = "Guardrail hits"
DEFINITION = (
    "Requests a route's guard checks fired on, by strongest outcome (a request refused "
    "with guardrail_blocked is blocked), and per check the requests it fired on. Blocked "
    "requests made no upstream call: they cost nothing and count as failed requests."
)


def _utc(when: datetime, pg: bool) -> datetime:
    # SQLite compares offset-less UTC text; Postgres compares instants.
    when = when.astimezone(UTC)
    return when if pg else when.replace(tzinfo=None)


async def guard_hits(
    engine: AsyncEngine, start: datetime, end: datetime | None = None
) -> list[GuardHits]:
    """Per route, the guarded requests received in [start, end) (no end: up to now)."""
    r = requests_table.c
    pg = engine.dialect.name == "postgresql"
    where = [r.received_at >= _utc(start, pg), r.guard.is_not(None)]
    if end is not None:
        where.append(r.received_at < _utc(end, pg))
    stmt = (
        select(r.route, r.guard, r.error_class, func.count())
        .where(*where)
        .group_by(r.route, r.guard, r.error_class)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return tally((route, guard, error, int(n)) for route, guard, error, n in rows)


def hits_dict(hits: GuardHits) -> dict[str, Any]:
    return {
        "route": hits.route,
        "requests": hits.requests,
        **{outcome: hits.outcomes.get(outcome, 0) for outcome in outcomes_of([hits])},
        "checks": [
            {"check": name, "outcome": label, "requests": n}
            for name, label, n in hits.ranked_checks()
        ],
    }


def header(lines: Sequence[GuardHits]) -> tuple[str, ...]:
    return ("route", "requests", *outcomes_of(lines), "checks")


def cells(hits: GuardHits, outcomes: Sequence[str]) -> list[str]:
    checks = ", ".join(f"{name} ({label}) {n:,}" for name, label, n in hits.ranked_checks())
    return [
        hits.route,
        f"{hits.requests:,}",
        *(f"{hits.outcomes.get(outcome, 0):,}" for outcome in outcomes),
        checks,
    ]


def table(lines: Sequence[GuardHits]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The section's header and rows, the same in every rendering."""
    outcomes = outcomes_of(lines)
    return header(lines), [cells(line, outcomes) for line in lines]


def markdown_section(lines: Sequence[GuardHits]) -> str:
    """The section, or "" when no check fired in the window (the report then omits it)."""
    if not lines:
        return ""
    head, rows = table(lines)
    out = [f"## {TITLE}", "", DEFINITION, ""]
    out.append("| " + " | ".join(head) + " |")
    aligns = ["---" if h in ("route", "checks") else "---:" for h in head]
    out.append("|" + "|".join(aligns) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def html_section(lines: Sequence[GuardHits]) -> str:
    if not lines:
        return ""
    head, rows = table(lines)
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        f"<h2>{TITLE}</h2><p>{html.escape(DEFINITION)}</p>"
        f"<table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"
    )
