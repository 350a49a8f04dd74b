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
    """Recompute the hourly rollups of [--from, --to] from the raw rows, in one transaction
    (delete, then insert): the writer keeps them exact, so this is for repair (rows edited
    by hand, a restore of raw rows). Reports read the rollups for whole-hour windows.

    Changes nothing when an hour of the window has rollups but no raw rows left (retention
    dropped them): its rollups are then its only record."""
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
        # No client-side statement timeout: each statement reads the whole window's raw rows
        # once (minutes for a month of 50M attempts). One window, not a day at a time: a
        # day's requests have their attempts found by request id in every partition from
        # that day on, so day by day read the month's later partitions once per day (about
        # 4 minutes a day at 50M attempts; one pass for the month is linear).
        repo = LedgerRepository.create(url, command_timeout_s=None)
        try:
            # Exact with a live writer (rollups.rebuild_live: the compactor's lock,
            # one snapshot for the pending rows and the raw rows).
            await rebuild_live(repo.engine, start, end)
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
