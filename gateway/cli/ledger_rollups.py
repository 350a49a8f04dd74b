"""`farebox ledger rollup --rebuild [--from DAY --to DAY]`: recompute the hourly rollups
(gateway/ledger/rollups.py) of a window from the raw rows, for repair.

Registered on the `ledger` group (gateway/cli/ledger.py imports this module at its end).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import typer

from gateway.cli.common import database_url as database_url_of
from gateway.cli.common import fail, from_driver, reason, shown_url
from gateway.cli.ledger import DatabaseOption, ledger_app


def _day(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(f"{option} takes a UTC day, YYYY-MM-DD") from None


@ledger_app.command("rollup")
def rollup_command(
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Recompute the rollups from the raw rows.")
    ] = False,
    since: Annotated[
        str | None, typer.Option("--from", help="First UTC day (default: the first row).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last UTC day, included (default: the last row).")
    ] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Recompute the hourly rollups of [--from, --to] from the raw rows, one UTC day per
    transaction (delete, then insert; without a window, all time in one): the writer keeps
    them exact, so this is for repair (rows edited by hand, a restore of raw rows). Reports
    read the rollups for whole-hour windows.

    Stops at the first day that has an hour with rollups but no raw rows left (retention
    dropped them), changing nothing of that day: its rollups are then its only record."""
    from gateway.ledger.repository import LedgerRepository
    from gateway.ledger.rollups import RawRowsGone, rebuild_live

    if not rebuild:
        raise typer.BadParameter("say --rebuild (the writer keeps the rollups otherwise)")
    start = _day(since, "--from")
    end_day = _day(until, "--to")
    end = None if end_day is None else end_day + timedelta(days=1)
    if start is not None and end is not None and end <= start:
        raise typer.BadParameter("--to is before --from")
    url = database_url_of(database_url)
    shown = shown_url(url)

    async def run() -> None:
        repo = LedgerRepository.create(url)
        try:
            # A day at a time when the window has both ends: each transaction's statements
            # stay within the connection's command timeout on a large ledger (a month of
            # 50M attempts in one transaction ran past it), and a day done stays done.
            for lo, hi in _days(start, end):
                # Exact with a live writer (rollups.rebuild_live: the compactor's lock,
                # one snapshot for the pending rows and the raw rows).
                await rebuild_live(repo.engine, lo, hi)
                if lo is not None and hi is not None and hi - lo == timedelta(days=1):
                    typer.echo(f"rebuilt {lo:%Y-%m-%d}")
        finally:
            await repo.close()

    try:
        asyncio.run(run())
    except RawRowsGone as exc:
        raise fail(f"ledger database {shown}: nothing rebuilt: {exc}") from None
    except Exception as exc:
        if not from_driver(exc):
            raise
        raise fail(f"ledger database {shown}: {reason(exc)}") from None
    window = f"{since or 'the first row'} … {until or 'the last row'}"
    typer.echo(f"rebuilt the rollups of {window} (UTC days) from the raw rows")


def _days(
    start: datetime | None, end: datetime | None
) -> list[tuple[datetime | None, datetime | None]]:
    """The window as whole UTC days (both ends given), else as it is."""
    if start is None or end is None:
        return [(start, end)]
    days: list[tuple[datetime | None, datetime | None]] = []
    while start < end:
        days.append((start, min(start + timedelta(days=1), end)))
        start += timedelta(days=1)
    return days
