"""`farebox ledger …`: upkeep of the ledger database itself (`maintain`: its day partitions,
gateway/ledger/partitions.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from gateway.cli.common import database_url as database_url_of
from gateway.cli.common import fail, from_driver, reason, shown_url

ledger_app = typer.Typer(no_args_is_help=True, help="Upkeep of the ledger database.")

DatabaseOption = Annotated[
    str | None, typer.Option(help="Ledger database (default: $FAREBOX_DATABASE_URL).")
]


def _ranges(days: list[str]) -> str:
    """'2026-12-01 … 2026-12-14' per run of consecutive days, so a gap shows."""
    from datetime import date, timedelta

    parsed = [date.fromisoformat(d) for d in days]
    runs: list[tuple[date, date]] = []
    for day in parsed:
        if runs and day == runs[-1][1] + timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return ", ".join(f"{a}" if a == b else f"{a} … {b}" for a, b in runs)


@ledger_app.command("maintain")
def maintain_command(
    days: Annotated[
        int, typer.Option(min=0, help="Create day partitions through this many days ahead.")
    ] = 7,
    database_url: DatabaseOption = None,
) -> None:
    """Create the ledger's day partitions ahead (idempotent) and print those that exist.

    Rows already in the DEFAULT partition for a day that gets a partition move into it.
    The gateway does the same at start-up and every few hours; this is for cron and for
    checking. SQLite ledgers have no partitions."""
    from gateway.ledger.partitions import maintain
    from gateway.ledger.pg import is_postgres

    url = database_url_of(database_url)
    shown = shown_url(url)
    if not is_postgres(url):
        typer.echo(f"{shown}: not PostgreSQL; SQLite ledgers are not partitioned")
        return
    try:
        created, listed = asyncio.run(maintain(url, days))
    except Exception as exc:
        if not from_driver(exc):
            raise
        raise fail(f"ledger database {shown}: {reason(exc)}") from None
    if not listed:
        raise fail(f"{shown}: the ledger tables are not partitioned: run `farebox migrate` first")
    for name, moved in created:
        note = f" ({moved} rows moved from the default partition)" if moved else ""
        typer.echo(f"created {name}{note}")
    for table, partitions in listed.items():
        months = [f"{p.day:%Y-%m}" for p in partitions if p.day is not None and p.monthly]
        if months:  # history the migration found older than last month
            typer.echo(f"{table}: {len(months)} month partitions: {', '.join(months)}")
        days_held = [p.day.isoformat() for p in partitions if p.day is not None and not p.monthly]
        default = [p for p in partitions if p.day is None]
        typer.echo(f"{table}: {len(days_held)} day partitions: {_ranges(days_held) or 'none'}")
        for part in default:
            typer.echo(f"{table}: {part.name} holds {part.rows} rows")
