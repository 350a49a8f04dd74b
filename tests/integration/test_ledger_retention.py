"""Retention (gateway/ledger/retention.py) on a partitioned Postgres ledger: a month's raw
partitions are dropped once their rollups are verified, and that month's reports —
reconciliation's ledger days and provider-batch slice, spend by role, price versions,
dedicated use, LCPR by every segment, usage groups — are the same after as before. A day
whose rollups disagree with its raw rows is kept (and named), and the current month is
never dropped."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text

from gateway.ledger.partitions import ensure_days, list_partitions
from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.retention import apply_retention, cutoff_for
from gateway.ledger.rollups import flush_pending
from gateway.reports.store import ReportStore
from tests.integration.test_ledger_repository import with_repo
from tests.integration.test_ledger_rollups import MONTH, generate, reports, write

FIRST = MONTH[0].date()
DAYS = [FIRST + timedelta(days=n) for n in range((MONTH[1] - MONTH[0]).days + 2)]
# A day after the month, for the cutoff: everything of the month is before it.
TODAY = date(2026, 1, 15)


async def _partitions(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            t: [p.name for p in await list_partitions(conn, t)] for t in ("requests", "attempts")
        }
    finally:
        await conn.close()


async def _month_partitions(url: str) -> None:
    """Day partitions for the generated month (and the day after it, where late attempts of
    its last requests land), made before the rows arrive, as the gateway's keeper does."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await ensure_days(conn, DAYS)
    finally:
        await conn.close()


async def _retain(url: str, days: int, today: date = TODAY) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await apply_retention(conn, days, today)
    finally:
        await conn.close()


def test_a_month_without_raw_rows_reports_the_same(pg_url: str) -> None:
    ledger = generate(1200, Decimal("1e-10"))

    async def main(repo: LedgerRepository) -> None:
        await _month_partitions(pg_url)
        await write(pg_url, repo, ledger)
        store = ReportStore(repo.engine)
        before = await reports(store, MONTH)
        assert before["ledger days"] and before["lcpr route"] and before["provider batch days"]
        usage_before = {by: await repo.usage(MONTH[0], by) for by in ("route", "key")}

        run = await _retain(pg_url, 30)
        assert run.cutoff == TODAY - timedelta(days=30)
        assert not run.held
        left = await _partitions(pg_url)
        for table in ("requests", "attempts"):
            assert not any(f"{table}_p{d:%Y%m%d}" in left[table] for d in DAYS[:-2]), left
        assert await repo.counts() == (0, 0)  # the month's raw rows are gone

        after = await reports(store, MONTH)
        for name in before:
            assert after[name] == before[name], name
        for by, lines in usage_before.items():
            assert await repo.usage(MONTH[0], by) == lines, by
        # Nothing left to drop: a second pass is a no-op.
        assert (await _retain(pg_url, 30)).dropped == []

    with_repo(pg_url, main)


def test_a_day_whose_rollups_disagree_is_kept(pg_url: str) -> None:
    ledger = generate(300, Decimal("1e-10"))
    spoiled = FIRST + timedelta(days=16)

    async def main(repo: LedgerRepository) -> None:
        await _month_partitions(pg_url)
        await write(pg_url, repo, ledger)
        async with repo.engine.connect() as conn:  # the writer's pending rows in first
            await flush_pending(conn)
        async with repo.engine.begin() as conn:  # a rollup row edited by hand
            await conn.execute(
                text(
                    "UPDATE rollup_attempts SET attempts = attempts + 1 WHERE hour = "
                    "(SELECT min(hour) FROM rollup_attempts WHERE hour >= :lo AND hour < :hi)"
                ),
                {"lo": MONTH[0] + timedelta(days=16), "hi": MONTH[0] + timedelta(days=17)},
            )
        run = await _retain(pg_url, 30)
        assert list(run.held) == [f"attempts_p{spoiled:%Y%m%d}"]
        left = await _partitions(pg_url)
        assert f"attempts_p{spoiled:%Y%m%d}" in left["attempts"]
        assert f"requests_p{spoiled:%Y%m%d}" not in left["requests"]  # its requests were fine
        assert f"attempts_p{FIRST:%Y%m%d}" not in left["attempts"]

    with_repo(pg_url, main)


def test_the_current_month_is_never_dropped() -> None:
    assert cutoff_for(0, date(2026, 12, 7)) == date(2026, 12, 1)
    assert cutoff_for(3, date(2026, 12, 20)) == date(2026, 12, 1)
    assert cutoff_for(90, date(2026, 12, 7)) == date(2026, 9, 8)
