"""Retention of a Postgres ledger's raw rows: whole day (or month) partitions dropped once
their rollups are verified, so the history the reports read survives.

`ledger.retention_days` (FAREBOX_LEDGER_RETENTION_DAYS, 0: keep raw rows forever) keeps
that many days of raw `requests` and `attempts`; older partitions go, whole — a DROP, not
row-by-row deletes (no bloat, no long transaction). What stays is the rollups
(gateway/ledger/models_rollups.py): every report of a past month (`farebox usage`, `lcpr`,
`reconcile`, the red flags) reads them for whole-hour windows, so a month's reconciliation
and LCPR are the same after its raw rows are gone (tests/integration/test_ledger_retention.py).

A partition is dropped only when its rollups are **frozen**: checked against its raw rows
first (the writer's pending rows flushed into them, gateway/ledger/rollup_compactor.py) —
the requests it holds equal the requests rollup_requests counts for the same hours, and its
attempts and their cost equal rollup_attempts' — so a rollup that went wrong (a row
edited by hand, a restore of raw rows without their rollups) holds the partition back, with
an error in the log naming the repair (`farebox ledger rollup --rebuild`), instead of
losing the only true copy. Once dropped, a rebuild of those hours is refused
(gateway/ledger/rollups.py: RawRowsGone). The current UTC month is never dropped, whatever
the setting: the budget seed reads this month's raw requests (gateway/ledger/keys_reads.py).

No SQLAlchemy: it runs in the PartitionKeeper beside the ledger writer on the serving
process (gateway/ledger/partitions.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.ledger.partitions import (
    TABLES,
    Partition,
    is_partitioned,
    list_partitions,
    today_utc,
)

# The partition upkeep's own lock and time helpers: retention takes the same advisory lock
# (one maintainer at a time across replicas) and the same short lock_timeout.
from gateway.ledger.partitions import _begin as begin_upkeep
from gateway.ledger.partitions import _utc_midnight as utc_midnight
from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.rollup_compactor import flush

log = logging.getLogger("farebox.ledger")

# Each raw table's figures and the rollup that must hold the same for the same hours.
_RAW = {
    "requests": "SELECT count(*), 0::numeric FROM requests "
    "WHERE received_at >= $1 AND received_at < $2",
    "attempts": "SELECT count(*), COALESCE(sum(cost_usd), 0) FROM attempts "
    "WHERE started_at >= $1 AND started_at < $2",
}
_ROLLUP = {
    "requests": "SELECT COALESCE(sum(requests), 0), 0::numeric FROM rollup_requests "
    "WHERE hour >= $1 AND hour < $2",
    "attempts": "SELECT COALESCE(sum(attempts), 0), COALESCE(sum(cost), 0) FROM rollup_attempts "
    "WHERE hour >= $1 AND hour < $2",
}


@dataclass
class RetentionRun:
    """What one pass did: partitions dropped, and those held back (their rollups disagree
    with their raw rows), with the figures that disagreed."""

    cutoff: date
    dropped: list[str] = field(default_factory=list)
    held: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def cutoff_for(retention_days: int, today: date | None = None) -> date:
    """The first day whose raw rows are kept: `retention_days` back, never into this month."""
    today = today or today_utc()
    return min(today - timedelta(days=retention_days), today.replace(day=1))


async def frozen(conn: Any, table: str, part: Partition) -> tuple[bool, tuple[Any, Any]]:
    """Whether `part`'s rows (over its whole range, DEFAULT's strays included) are what the
    rollups say; and (raw figures, rollup figures)."""
    assert part.day is not None and part.end is not None
    lo, hi = utc_midnight(part.day), utc_midnight(part.end)
    raw = tuple(await conn.fetchrow(_RAW[table], lo, hi))
    rolled = tuple(await conn.fetchrow(_ROLLUP[table], lo, hi))
    return raw == rolled, (raw, rolled)


async def apply_retention(
    conn: Any, retention_days: int, today: date | None = None
) -> RetentionRun:
    """Drop the partitions of both raw tables whose days are all before the cutoff and whose
    rollups are frozen; DEFAULT's rows of a dropped partition's days go with it."""
    run = RetentionRun(cutoff_for(retention_days, today))
    # The writer's rows still pending are not in the rollups yet: without this, a day
    # whose last rows wait for the compactor would look unfrozen (held back, not lost).
    await flush(conn)
    for table, key in TABLES.items():
        if not await is_partitioned(conn, table):
            continue
        for part in await list_partitions(conn, table):
            if part.day is None or part.end is None or part.end > run.cutoff:
                continue
            ok, figures = await frozen(conn, table, part)
            if not ok:
                run.held[part.name] = figures
                log.error(
                    "ledger retention: %s kept: its rows (count, cost %s) disagree with the "
                    "rollups %s; repair with `farebox ledger rollup --rebuild --from %s --to %s`",
                    part.name,
                    figures[0],
                    figures[1],
                    part.day,
                    part.end - timedelta(days=1),
                )
                continue
            lo, hi = utc_midnight(part.day), utc_midnight(part.end)
            async with conn.transaction():
                await begin_upkeep(conn)
                await conn.execute(f"DROP TABLE IF EXISTS {part.name}")
                if await conn.fetchval("SELECT to_regclass($1)", f"{table}_default"):
                    await conn.execute(
                        f"DELETE FROM {table}_default WHERE {key} >= $1 AND {key} < $2", lo, hi
                    )
            run.dropped.append(part.name)
            log.info(
                "ledger retention: dropped %s (%s rows, rollups verified)", part.name, figures[0][0]
            )
    return run


async def retain(url: str, retention_days: int, *, connect_timeout_s: float = 5.0) -> RetentionRun:
    """`apply_retention` on the ledger at `url`, on a connection of its own."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout_s)
    try:
        return await apply_retention(conn, retention_days)
    finally:
        await conn.close()
