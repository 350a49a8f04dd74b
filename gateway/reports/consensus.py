"""Consensus routes in the reports: agreement rate and cost multiple versus a single call.

One GROUP BY over the month's consensus requests (`requests.consensus` is set only on
them) and one over their answered attempts; the arithmetic is routing.lcpr.consensus_line.
Shown by `farebox lcpr` (console and --json) and in the reconciliation report (Markdown,
HTML and `consensus.csv`).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select

from gateway.ledger.models import attempts_table, requests_table
from gateway.reports.store import ReportStore
from routing.consensus import AGREE, DISAGREE, MAJORITY
from routing.lcpr import ConsensusLine, ConsensusTotals, consensus_line

CSV_COLUMNS = (
    "route",
    "requests",
    "agree_rate",
    "majority_rate",
    "disagree_rate",
    "attempts_per_request",
    "mean_request_usd",
    "mean_candidate_usd",
    "cost_multiple",
)
# Attempts start after their request arrives, within the route's timeout.
_SLACK = timedelta(days=1)


def _utc(when: datetime, pg: bool) -> datetime:
    # SQLite compares offset-less UTC text; Postgres compares instants.
    when = when.astimezone(UTC)
    return when if pg else when.replace(tzinfo=None)


def _dec(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


async def consensus_lines(
    store: ReportStore, start: datetime, end: datetime
) -> list[ConsensusLine]:
    r = requests_table.c
    a = attempts_table.c
    pg = store.engine.dialect.name == "postgresql"
    start, end = (_utc(w, pg) for w in (start, end))
    in_window = (r.received_at >= start, r.received_at < end, r.consensus.is_not(None))

    def count_of(outcome: str) -> Any:
        return func.sum(case((r.consensus == outcome, 1), else_=0))

    per_request = (
        select(
            r.route,
            func.count(),
            count_of(AGREE),
            count_of(MAJORITY),
            count_of(DISAGREE),
            func.sum(r.attempts),
            func.sum(r.cost_usd),
        )
        .where(*in_window)
        .group_by(r.route)
    )
    per_answer = (
        select(r.route, func.count(), func.sum(a.cost_usd))
        .select_from(attempts_table.join(requests_table, a.request_id == r.id))
        .where(
            *in_window,
            a.started_at >= start,
            a.started_at < end + _SLACK,
            a.error_class.is_(None),
            a.cost_usd.is_not(None),
        )
        .group_by(r.route)
    )
    async with store.engine.connect() as conn:
        requests = (await conn.execute(per_request)).all()
        answers = {row[0]: row for row in (await conn.execute(per_answer)).all()}
    lines = []
    for route, n, agree, majority, disagree, attempts, cost in requests:
        answered = answers.get(route)
        totals = ConsensusTotals(
            route=route,
            requests=int(n),
            agree=int(agree or 0),
            majority=int(majority or 0),
            disagree=int(disagree or 0),
            attempts=int(attempts or 0),
            cost_usd=_dec(cost),
            answered=int(answered[1]) if answered else 0,
            answered_cost_usd=_dec(answered[2]) if answered else Decimal(0),
        )
        lines.append(consensus_line(totals))
    return sorted(lines, key=lambda line: line.route)


def _rate(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _usd(value: Decimal | None) -> str:
    return "n/a" if value is None else f"${value:,.6f}"


def _times(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _plain(value: Decimal | None, places: int) -> str:
    return "" if value is None else str(round(value, places))


def line_dict(line: ConsensusLine) -> dict[str, Any]:
    return {
        "route": line.route,
        "requests": line.requests,
        "agree_rate": _plain(line.agree_rate, 4) or None,
        "majority_rate": _plain(line.majority_rate, 4) or None,
        "disagree_rate": _plain(line.disagree_rate, 4) or None,
        "attempts_per_request": _plain(line.attempts_per_request, 2) or None,
        "mean_request_usd": _plain(line.mean_request_usd, 10) or None,
        "mean_candidate_usd": _plain(line.mean_candidate_usd, 10) or None,
        "cost_multiple": _plain(line.cost_multiple, 3) or None,
    }


def _cells(line: ConsensusLine) -> list[str]:
    return [
        line.route,
        f"{line.requests:,}",
        _rate(line.agree_rate),
        _rate(line.majority_rate),
        _rate(line.disagree_rate),
        "n/a" if line.attempts_per_request is None else f"{line.attempts_per_request:.2f}",
        _usd(line.mean_request_usd),
        _usd(line.mean_candidate_usd),
        _times(line.cost_multiple),
    ]


_HEADER = (
    "route",
    "requests",
    "agree",
    "majority",
    "disagree",
    "attempts / request",
    "mean request",
    "mean candidate call",
    "cost multiple",
)
DEFINITION = (
    "Cost multiple = mean cost of a consensus request ÷ mean cost of one candidate call "
    "that answered (what a single call costs); failed and cancelled candidates are in the "
    "request's cost."
)


def markdown_section(lines: Sequence[ConsensusLine]) -> str:
    if not lines:
        return ""
    out = ["## Consensus routes", "", DEFINITION, ""]
    out.append("| " + " | ".join(_HEADER) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(_HEADER))) + "|")
    out += ["| " + " | ".join(_cells(line)) + " |" for line in lines]
    return "\n".join(out) + "\n"


def html_section(lines: Sequence[ConsensusLine]) -> str:
    if not lines:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(line)) + "</tr>"
        for line in lines
    )
    return (
        f"<h2>Consensus routes</h2><p>{html.escape(DEFINITION)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def csv_text(lines: Sequence[ConsensusLine]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        values = line_dict(line)
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return buffer.getvalue()
