"""Shared by the end-to-end reconciliation tests: a committed edit of ledger rows by hand
with its rollups rebuilt (tests.ledger_reads only reads), a bare POST to the simulator's
control endpoints, and the models a reconciliation report flags, read from its CSV."""

from __future__ import annotations

import asyncio
import csv
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.ledger.rollups import compacted_snapshot, rebuild_statements


def edit_ledger(url: str, sql: str, params: dict[str, Any] | None = None) -> None:
    """Edit raw ledger rows by hand (move a day's traffic to another date, spoil a token
    type) and rebuild every rollup from the raw rows in the same transaction, as an operator
    repairs hand edits (`farebox ledger rollup --rebuild`): a compacted snapshot, so rows the
    writer left pending are counted once. All time and without the
    rebuild's guard against hours whose raw rows are gone: moving rows empties their old
    hours on purpose."""

    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with compacted_snapshot(engine) as conn:
                await conn.execute(text(sql), params or {})
                for stmt in rebuild_statements(conn.dialect.name):
                    await conn.execute(stmt)
        finally:
            await engine.dispose()

    asyncio.run(run())


def post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST")).read()


def flagged_models(out: Path) -> dict[tuple[str, str], set[str]]:
    """(provider, model) -> causes, for the models `reconciliation.csv` flags."""
    flagged: dict[tuple[str, str], set[str]] = {}
    with (out / "reconciliation.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["model_flagged"] == "yes":
                flagged[(row["provider"], row["model"])] = set(
                    filter(None, row["causes"].split(";"))
                )
    return flagged
