"""The Postgres ledger's day partitions: create them ahead, list them, drop old ones.

Since migration 0011 `requests` is `PARTITION BY RANGE (received_at)` and `attempts` is
`PARTITION BY RANGE (started_at)`, one partition per UTC day (`requests_p20261207` holds
[2026-12-07 00:00 UTC, 2026-12-08 00:00 UTC)), plus a DEFAULT partition (`requests_default`)
that catches a row for a day without a partition: clock skew, a journal replayed after
retention dropped its day, or a gateway whose partitions ran out. History that was already
older than last month when the migration ran got one partition per month instead
(`requests_m202609`). This module owns those partitions; `farebox ledger maintain` and the
`PartitionKeeper` (started beside the ledger writer in gateway/state.py) call it. SQLite
ledgers have no partitions and never get here.

Every change runs in one transaction under a transaction-scoped advisory lock, and skips a
partition that already exists, so any number of replicas can run it at once. Each also sets
a short `lock_timeout`: attaching a partition needs an exclusive lock on the DEFAULT
partition and dropping one an exclusive lock on the parent, and waiting behind a long report
would queue every writer behind us. A maintenance run that times out is retried later; the
week created ahead leaves plenty of slack.

Plain asyncpg, no SQLAlchemy: the keeper runs in serving workers (see gateway/ledger/pg.py).
Dropping partitions is the retention primitive only; deciding WHEN a day may go (its
rollups frozen) is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.ledger.pg import DRIVER_ERRORS, asyncpg_dsn

log = logging.getLogger("farebox.ledger")

# The partitioned tables and their partition keys.
TABLES: dict[str, str] = {"requests": "received_at", "attempts": "started_at"}
AHEAD_DAYS = 7
# Any fixed 64-bit number no other part of the gateway uses: "fareboxP".
_LOCK_KEY = 0x66617265626F7850
_LOCK_TIMEOUT = "5s"
# Day partitions, month partitions (migration 0011 gives history older than last month one
# per month) and the DEFAULT one.
_NAME = re.compile(r"^(requests|attempts)_(?:p(\d{8})|m(\d{6})|(default))$")


def is_partition(name: str) -> bool:
    """Whether `name` is one of the partitions this module makes (Alembic's autogenerate and
    the models-match-migrations test skip them: the models describe the parents only)."""
    return _NAME.match(name) is not None


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def month_name(table: str, day: date) -> str:
    """The month partition that would hold `day` (only the migration makes them)."""
    return f"{table}_m{day:%Y%m}"


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _bounds(day: date) -> str:
    # Explicit +00 offsets: the bounds are UTC days whatever the session's TimeZone is.
    end = day + timedelta(days=1)
    return f"FROM ('{day.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def today_utc() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    day: date | None  # the first day it holds; None: the DEFAULT partition
    end: date | None  # the day after its last (a month partition holds a month)
    rows: int  # the planner's estimate (pg_class.reltuples), exact for the DEFAULT one

    @property
    def monthly(self) -> bool:
        return self.day is not None and self.end is not None and (self.end - self.day).days > 1


async def is_partitioned(conn: Any, table: str) -> bool:
    """False before migration 0011 (or on a table someone un-partitioned by hand)."""
    found = await conn.fetchval(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.oid = to_regclass($1)",
        table,
    )
    return found is not None


async def list_partitions(conn: Any, table: str) -> list[Partition]:
    """`table`'s partitions by first day (months and days), then the DEFAULT one."""
    found = await conn.fetch(
        "SELECT c.relname, greatest(c.reltuples, 0)::bigint AS rows FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1) "
        "ORDER BY c.relname",
        table,
    )
    days: list[Partition] = []
    default: list[Partition] = []
    for name, rows in found:
        match = _NAME.match(name)
        if match is None or match.group(1) != table:
            continue  # attached by hand under another name: not ours to manage
        if match.group(4):
            exact = await conn.fetchval(f"SELECT count(*) FROM {name}")
            default.append(Partition(table, name, None, None, int(exact)))
        elif match.group(3):
            month = datetime.strptime(match.group(3), "%Y%m").date()
            days.append(Partition(table, name, month, _next_month(month), int(rows)))
        else:
            day = datetime.strptime(match.group(2), "%Y%m%d").date()
            days.append(Partition(table, name, day, day + timedelta(days=1), int(rows)))
    return sorted(days, key=lambda p: p.day or date.min) + default


async def _begin(conn: Any) -> None:
    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)


async def _exists(conn: Any, name: str) -> bool:
    return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name) is True


async def create_partition(conn: Any, table: str, day: date) -> int | None:
    """Create `table`'s partition for `day` unless it exists (or a month partition holds the
    day). Returns None if it existed, else how many rows it took over from DEFAULT.

    Postgres refuses to add a partition while the DEFAULT one holds rows of its range, so
    rows that landed there before the day had a partition must move. The new table is
    built detached, filled from DEFAULT and then ATTACHed, all in one transaction: the
    DEFAULT partition is locked first (ATTACH needs that lock anyway, taking it before the
    move means no row for the day can land there between the move and the attach), and
    writers of other days never wait, since ATTACH takes only SHARE UPDATE EXCLUSIVE on the
    parent where `CREATE TABLE … PARTITION OF` would take ACCESS EXCLUSIVE. Detaching the
    DEFAULT partition instead would make inserts for days without a partition fail while it
    is out, and create-then-move is impossible (the CREATE itself is what is refused).
    """
    key = TABLES[table]
    name = partition_name(table, day)
    default = f"{table}_default"
    async with conn.transaction():
        await _begin(conn)
        if await _exists(conn, name) or await _exists(conn, month_name(table, day)):
            return None
        # LIKE copies columns in the parent's order, NOT NULLs and defaults; ATTACH then
        # builds the parent's indexes (primary key included) on it.
        await conn.execute(
            f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        # Proves the rows fit, so ATTACH skips scanning the new table for them.
        lo, hi = _utc_midnight(day), _utc_midnight(day + timedelta(days=1))
        await conn.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds "
            f"CHECK ({key} IS NOT NULL AND {key} >= '{lo.isoformat()}' "
            f"AND {key} < '{hi.isoformat()}')"
        )
        moved = 0
        if await _exists(conn, default):
            await conn.execute(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE")
            status = await conn.execute(
                f"WITH moved AS (DELETE FROM {default} WHERE {key} >= $1 AND {key} < $2 "
                f"RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                lo,
                hi,
            )
            moved = int(status.rsplit(" ", 1)[-1])
        await conn.execute(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES {_bounds(day)}")
        # Redundant once attached (the partition bound says the same): the partition ends up
        # as one made by `CREATE TABLE … PARTITION OF`.
        await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")
    if moved:
        log.info("ledger partition %s created; %d rows moved from %s", name, moved, default)
    return moved


async def ensure_days(conn: Any, days: Iterable[date]) -> list[tuple[str, int]]:
    """Create each partitioned table's partition for each of `days` (existing ones are
    skipped). Returns (partition, rows moved from DEFAULT) for those it created."""
    wanted = sorted(set(days))  # once: `days` may be a generator
    created: list[tuple[str, int]] = []
    for table in TABLES:
        if not await is_partitioned(conn, table):
            continue
        for day in wanted:
            moved = await create_partition(conn, table, day)
            if moved is not None:
                created.append((partition_name(table, day), moved))
    return created


async def create_ahead(
    conn: Any, ahead_days: int = AHEAD_DAYS, today: date | None = None
) -> list[tuple[str, int]]:
    """Partitions from yesterday (a late batch just after midnight) through `ahead_days`
    after today, so the writer never needs the DEFAULT partition in normal operation."""
    start = (today or today_utc()) - timedelta(days=1)
    return await ensure_days(conn, (start + timedelta(days=n) for n in range(ahead_days + 2)))


async def drop_before(conn: Any, cutoff: date) -> list[str]:
    """The retention primitive: drop every partition whose days are all before `cutoff` (a
    month partition goes once its whole month is) and delete the DEFAULT partition's rows
    from before it. Returns the partitions dropped. The caller decides when that is
    allowed."""
    dropped: list[str] = []
    for table, key in TABLES.items():
        if not await is_partitioned(conn, table):
            continue
        for part in await list_partitions(conn, table):
            if part.end is None or part.end > cutoff:
                continue
            async with conn.transaction():
                await _begin(conn)
                await conn.execute(f"DROP TABLE IF EXISTS {part.name}")
            dropped.append(part.name)
        default = f"{table}_default"
        async with conn.transaction():
            await _begin(conn)
            if await _exists(conn, default):
                await conn.execute(f"DELETE FROM {default} WHERE {key} < $1", _utc_midnight(cutoff))
    if dropped:
        log.info("ledger partitions dropped (before %s): %s", cutoff, ", ".join(dropped))
    return dropped


async def drop_older_than(conn: Any, days: int, today: date | None = None) -> list[str]:
    """`drop_before` the day `days` days before today: the last `days` days stay."""
    return await drop_before(conn, (today or today_utc()) - timedelta(days=days))


async def maintain(
    url: str, ahead_days: int = AHEAD_DAYS, *, connect_timeout_s: float = 5.0
) -> tuple[list[tuple[str, int]], dict[str, list[Partition]]]:
    """Create partitions ahead on the ledger at `url`; return what was created and every
    partitioned table's partitions afterwards (empty before migration 0011)."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout_s)
    try:
        created = await create_ahead(conn, ahead_days)
        listed = {
            table: await list_partitions(conn, table)
            for table in TABLES
            if await is_partitioned(conn, table)
        }
    finally:
        await conn.close()
    return created, listed


class PartitionKeeper:
    """Runs `maintain` at start-up and every `interval_s` after, in the process that owns
    the ledger writer. A database that is down (or a lock it cannot get in time) is logged
    and retried after `retry_s`; it never touches serving, and rows for a day without a
    partition land in DEFAULT meanwhile and move out when the day's partition is made."""

    def __init__(
        self,
        url: str,
        *,
        ahead_days: int = AHEAD_DAYS,
        interval_s: float = 6 * 3600.0,
        retry_s: float = 300.0,
        retention_days: int = 0,
        retain: Callable[[str, int], Awaitable[object]] | None = None,
    ) -> None:
        self.url = url
        self.ahead_days = ahead_days
        # 0: raw rows are kept forever; else `retain` (gateway/ledger/retention.py, which
        # builds on this module, hence passed in) after each run.
        self.retention_days = retention_days
        self._retain = retain
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.runs = 0  # successful runs, for tests and the curious
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-partitions")

    async def run_once(self) -> bool:
        try:
            created, _ = await maintain(self.url, self.ahead_days)
            if self.retention_days > 0 and self._retain is not None:
                await self._retain(self.url, self.retention_days)
        except DRIVER_ERRORS as exc:
            log.warning(
                "ledger partition maintenance failed (%s: %s); retrying in %.0f s",
                type(exc).__name__,
                exc,
                self.retry_s,
            )
            return False
        except Exception:  # a bug here must not end the loop, nor reach serving
            log.exception("ledger partition maintenance failed; retrying in %.0f s", self.retry_s)
            return False
        self.runs += 1
        if created:
            log.info("ledger partitions created: %s", ", ".join(name for name, _ in created))
        return True

    async def _run(self) -> None:
        while True:
            ok = await self.run_once()
            await asyncio.sleep(self.interval_s if ok else self.retry_s)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
