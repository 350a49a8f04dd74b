"""Shared by the end-to-end reconciliation tests: a committed SQL write (tests.ledger_reads
only reads), a bare POST to the simulator's control endpoints, and the models a
reconciliation report flags, read from its CSV."""

from __future__ import annotations

import asyncio
import csv
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def sql_execute(url: str, sql: str, params: dict[str, Any] | None = None) -> None:
    """One committed write, on a fresh engine (the test's loop is not the gateway's)."""

    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql), params or {})
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
