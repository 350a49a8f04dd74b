"""The Postgres rollups' compactor: adds the writer's pending rows to the rollups, off the
request path.

The ledger writer's batch statement (gateway/ledger/pending_sql.pg_merge) only inserts the
raw rows and, for exactly the rows it inserted, one pending row each (id and timestamp,
tagged with the writer's transaction id) in `rollup_pending_requests` /
`rollup_pending_attempts` (migration 0013: plain tables, so a crash loses none). A
compaction is one transaction that takes this module's advisory lock, deletes the pending
rows of whole writer transactions (about `chunk_rows` of them) and adds their raw rows to
every rollup with the same SELECTs the writer used to run per batch (pending_sql.pg_compact).
A pending row is deleted by the very transaction that adds it, so it is added exactly once
whatever crashes or runs twice; a replayed batch inserts nothing and leaves nothing pending.

Who compacts:

- `RollupCompactor`, a background task in every gateway process that owns a ledger writer
  (gateway/state.py), every `ledger.rollup_interval_s`. It *tries* the lock: while another
  replica compacts, it skips the tick.
- `flush`, before anything reads the rollups as the truth: retention's frozen check
  (gateway/ledger/retention.py) here, the reports and the rebuild through the same SQL on
  SQLAlchemy (gateway/ledger/rollups.py). It *waits* for the lock (a compaction under way
  may hold rows it has deleted but not yet committed) and compacts until it has taken every
  row that was pending when it started.

Plain asyncpg: the compactor runs on the serving worker, which never imports SQLAlchemy
(issue #25). SQLite ledgers have no compactor: their writer adds to the rollups at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.ledger.pending_sql import pg_compact
from gateway.ledger.pg import DRIVER_ERRORS, asyncpg_dsn

log = logging.getLogger("farebox.ledger")

#: The compactor's advisory lock ("fareboxR"): one compaction (or rebuild) at a time.
LOCK_KEY = 0x66617265626F7852
#: The compaction's session settings (SET LOCAL: its transaction only). JIT off: the
#: planner's guesses for freshly written rows (no statistics yet) once made it compile the
#: statement for 4 s to run it for 1 s. work_mem: its sorts and hashes of ~100k narrow rows
#: stay in memory (8 MB measured; the default is 4 MB). Sequential scans off: each pending
#: row's raw row must stay one index probe in its partition whatever that partition's
#: statistics say (a plan is made per compaction; a partition analyzed while nearly empty
#: may be costed as cheaper to scan). A compaction of 165k rows once ran for over 10
#: minutes instead of ~3 s, which is what a scan per probe takes; not reproduced since.
#: The pending tables have no index and are still scanned whole.
SESSION = ("SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'", "SET LOCAL enable_seqscan = off")
#: Pending rows per compaction transaction (whole writer transactions: a little more if one
#: alone is bigger). ~200k rows is a few seconds of a busy ledger's writes, and a few
#: seconds of work: the upserts' row locks are held no longer than that.
CHUNK_ROWS = 200_000

_STATEMENTS: dict[int, str] = {}


def compact_statement(chunk_rows: int = CHUNK_ROWS) -> str:
    """pg_compact's text for `chunk_rows` (built once per size)."""
    stmt = _STATEMENTS.get(chunk_rows)
    if stmt is None:
        stmt = _STATEMENTS[chunk_rows] = pg_compact(chunk_rows)
    return stmt


async def compact_once(conn: Any, *, wait: bool, chunk_rows: int = CHUNK_ROWS) -> tuple[int, bool]:
    """One compaction transaction on asyncpg connection `conn`. Returns (pending rows it
    added, whether it took every row pending at its start); (0, False) when `wait` is False
    and another session holds the lock."""
    async with conn.transaction():
        if wait:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY):
            return 0, False
        for setting in SESSION:
            await conn.execute(setting)
        # Its own statement after the lock: under READ COMMITTED the compaction's snapshot
        # is then taken after the previous holder committed.
        requests, attempts, complete = await conn.fetchrow(compact_statement(chunk_rows))
    return int(requests) + int(attempts), bool(complete)


async def flush(conn: Any, *, chunk_rows: int = CHUNK_ROWS) -> int:
    """Compact until every row pending when it was called is in the rollups (waiting for a
    compaction under way); rows committed meanwhile may be left for the next one. Returns
    the pending rows added."""
    total = 0
    while True:
        added, complete = await compact_once(conn, wait=True, chunk_rows=chunk_rows)
        total += added
        if complete:
            return total


class RollupCompactor:
    """Compacts every `interval_s` in the background (see the module docstring), on a
    connection of its own. A database that is down is logged and retried at the next tick;
    it never touches serving. `max_chunks` bounds one tick's work."""

    def __init__(
        self,
        url: str,
        *,
        interval_s: float = 2.0,
        chunk_rows: int = CHUNK_ROWS,
        max_chunks: int = 25,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 120.0,
    ) -> None:
        self.dsn = asyncpg_dsn(url)
        self.interval_s = interval_s
        self.chunk_rows = chunk_rows
        self.max_chunks = max_chunks
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self.rows = 0  # pending rows added to the rollups, for tests and the curious
        self.ticks = 0  # ticks that ran (the lock taken or not)
        self._conn: Any = None
        self._unmigrated = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-rollups")

    async def run_once(self) -> int:
        """One tick: compact while there is a backlog, the lock is ours and `max_chunks`
        allows. Returns the pending rows added."""
        added = 0
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = self._conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self._connect_timeout_s,
                    command_timeout=self._command_timeout_s,
                )
            for _ in range(self.max_chunks):
                rows, complete = await compact_once(conn, wait=False, chunk_rows=self.chunk_rows)
                added += rows
                if complete or rows == 0:  # done, or another replica is compacting
                    break
        except asyncpg.UndefinedTableError as exc:
            # Started before `farebox migrate` reached 0013: say so once, keep ticking.
            if not self._unmigrated:
                log.warning("ledger rollup compaction waits for `farebox migrate` (%s)", exc)
                self._unmigrated = True
        except DRIVER_ERRORS as exc:
            log.warning(
                "ledger rollup compaction failed (%s: %s); retrying in %.0f s",
                type(exc).__name__,
                exc,
                self.interval_s,
            )
            await self._drop()
        except Exception:  # a bug here must not end the loop, nor reach serving
            log.exception("ledger rollup compaction failed; retrying in %.0f s", self.interval_s)
            await self._drop()
        self.rows += added
        self.ticks += 1
        return added

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval_s)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=5)
            except Exception:  # closing at shutdown: a dead server just means terminate
                conn.terminate()
