"""The ledger writer's Postgres sink: COPY on one raw asyncpg connection, no SQLAlchemy.

`LedgerWriter` (gateway/ledger/writer.py) hands it batches of rows that are already tuples
in the tables' column order (gateway/ledger_rows.py), so a batch goes to `COPY` as it is:
no per-row conversion, no ORM, no pool checkout. Each batch is one transaction. New rows
(the usual batch) are COPYed straight into the raw tables, and their ids and timestamps into
the pending tables for the compactor (`_fresh`). A batch that repeats a row (a replay from
the spool or journal recovery) fails that COPY on the raw tables' unique key and takes the
staging path instead: COPY into a per-connection temporary staging table, then one
statement that inserts the staged rows (`ON CONFLICT DO NOTHING`) and records exactly the
rows it inserted as pending (gateway/ledger/pending_sql.pg_merge), so a replay adds nothing
twice. The rollups are the compactor's business
(gateway/ledger/rollup_compactor.py), off this path: upserting them per batch cost ~2/3 of
the batch's time (issue 26). A deadlock or serialization failure retries the batch
(gateway/ledger/retry.py). The staging tables
are created once per connection and emptied on commit (no catalog churn per batch); the
explicit column lists keep a stale staging table harmless after a migration adds columns.

The writer calls it from one task, one batch at a time, so one connection is enough. It is
opened on first use and dropped on any error (a COPY cut by a dying server can leave the
protocol mid-stream): the writer then spools and probes with `ping`, which reconnects.

SQLite ledgers keep `LedgerRepository.write_batch` (gateway/ledger/repository.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.ledger.pending_sql import pg_merge
from gateway.ledger.pg import asyncpg_dsn, is_postgres
from gateway.ledger.retry import is_retryable, retrying
from gateway.ledger.rollup_layout import PENDING, PENDING_COLUMNS
from gateway.ledger_rows import ATTEMPT_FIELDS, REQUEST_FIELDS, AttemptRow, RequestRow

# (table, its staging table, columns) in the order a batch writes them.
_TABLES = (
    ("requests", "farebox_stage_requests", list(REQUEST_FIELDS)),
    ("attempts", "farebox_stage_attempts", list(ATTEMPT_FIELDS)),
)
_CREATE_STAGING = ";".join(
    f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
    for table, stage, _ in _TABLES
)


# Both staging tables are always read (an empty one adds nothing): one statement per batch.
_MERGE = pg_merge(*_TABLES)
# The fresh path's pending rows: (table, its pending table, the columns COPY writes).
_PENDING = tuple(
    (table, PENDING[table][0], ["txn", *PENDING_COLUMNS[1:], PENDING[table][1]])
    for table, _, _ in _TABLES
)
# Where each row's id and timestamp are (the pending row's id and partition key).
_KEYS = tuple(
    (columns.index("id"), columns.index(PENDING[table][1])) for table, _, columns in _TABLES
)


class PgLedgerSink:
    """`LedgerSink` for a PostgreSQL ledger (see the module docstring)."""

    def __init__(
        self, url: str, *, connect_timeout_s: float = 5.0, command_timeout_s: float = 60.0
    ) -> None:
        self.dsn = asyncpg_dsn(url)
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._conn: Any = None
        self._staged = False  # the staging tables exist on self._conn

    async def _connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.is_closed():
            self._staged = False
            conn = self._conn = await asyncpg.connect(
                self.dsn, timeout=self._connect_timeout_s, command_timeout=self._command_timeout_s
            )
        return conn

    async def write_batch(
        self, requests: Sequence[RequestRow], attempts: Sequence[AttemptRow]
    ) -> None:
        """Insert both kinds of rows in one transaction; rows whose id exists are skipped."""
        if not requests and not attempts:
            return
        await retrying(lambda: self._write(requests, attempts))

    async def _write(self, requests: Sequence[RequestRow], attempts: Sequence[AttemptRow]) -> None:
        try:
            conn = await self._connection()
            if await self._fresh(conn, (requests, attempts)):
                return
            async with conn.transaction():
                if not self._staged:
                    await conn.execute(_CREATE_STAGING)
                for (_, stage, columns), rows in zip(_TABLES, (requests, attempts), strict=True):
                    if rows:
                        await conn.copy_records_to_table(stage, records=rows, columns=columns)
                # fetchrow, not execute: a prepared statement, kept in the connection's
                # statement cache, so the merge (an aggregate and an upsert per rollup) is planned
                # once per connection rather than per batch.
                await conn.fetchrow(_MERGE)
            self._staged = True  # committed: the CREATE (if any) stuck
        except BaseException as exc:
            # A deadlock is a clean rollback on a sound connection: keep it for the retry.
            if not is_retryable(exc):
                await self._drop()
            raise

    async def _fresh(self, conn: Any, batch: tuple[Sequence[Any], Sequence[Any]]) -> bool:
        """The usual batch, rows never written before: COPY straight into the raw tables
        and their pending rows (four COPYs, one transaction), no staging and no upsert —
        about a third of the database's work per batch. False, with nothing written, when
        a row's id is there already (a replay from the spool or the journal): the staging
        path then skips exactly those rows."""
        try:
            async with conn.transaction():
                txn = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
                for (table, _, columns), rows, (id_at, ts_at), (_, pending, keys) in zip(
                    _TABLES, batch, _KEYS, _PENDING, strict=True
                ):
                    if rows:
                        await conn.copy_records_to_table(table, records=rows, columns=columns)
                        marks = [(txn, row[id_at], row[ts_at]) for row in rows]
                        await conn.copy_records_to_table(pending, records=marks, columns=keys)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def ping(self) -> None:
        try:
            conn = await self._connection()
            await conn.fetchval("SELECT 1")
        except BaseException:
            await self._drop()
            raise

    async def _drop(self) -> None:
        conn, self._conn, self._staged = self._conn, None, False
        if conn is not None:
            # Not a polite close: the connection may be mid-COPY or the server gone.
            with contextlib.suppress(Exception):
                conn.terminate()

    async def close(self) -> None:
        conn, self._conn, self._staged = self._conn, None, False
        if conn is not None:
            try:
                await conn.close(timeout=5)
            except Exception:  # closing at shutdown: a dead server just means terminate
                conn.terminate()


def writer_sink(url: str, repository: Any) -> tuple[Any, bool]:
    """The ledger writer's sink for the database at `url`, and whether the writer owns it:
    a Postgres ledger gets its own `PgLedgerSink`; SQLite keeps the repository's
    `write_batch` (shared, so closed by its owner)."""
    if is_postgres(url):
        return PgLedgerSink(url), True
    return repository, False
