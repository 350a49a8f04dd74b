"""The "guardrail hits" section on the console, for `farebox usage` and `farebox lcpr`
(the figures and their words: gateway/reports/guard_hits.py)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from gateway.reports.guard_hits import DEFINITION, TITLE, table
from routing.guard_summary import GuardHits


def print_guard_hits(console: Console, lines: Sequence[GuardHits]) -> None:
    """Nothing when no guard check fired in the window."""
    if not lines:
        return
    head, rows = table(lines)
    shown = Table(title=TITLE.lower())
    for column in head:
        shown.add_column(column, justify="left" if column in ("route", "checks") else "right")
    for row in rows:
        shown.add_row(*row)
    console.print(shown)
    console.print(DEFINITION)
