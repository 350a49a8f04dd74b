"""SQL for stored Responses (table `responses`, gateway/ledger/models_responses.py).

Runs on the ledger's own engine (Postgres in production, SQLite in the demo): the store in
gateway/conversations adds the timeouts, the never-raise save and the id rules on top.

Saves come in batches (the store's group commit, gateway/conversations/group_commit.py): one
statement per batch, built once. On Postgres with asyncpg it is a single `INSERT … SELECT FROM
unnest($1::text[], …)`: one fixed text whatever the batch size, so the driver prepares it once
per connection and the server runs one statement per batch. Other dialects execute one prebuilt
Core insert over the rows (`executemany`). Either way SQLAlchemy compiles nothing per save.

The two JSON columns are written and read as text the caller has already encoded (orjson):
a conversation can be hundreds of kilobytes, and the stdlib encoder SQLAlchemy would use is
several times slower on the event loop. Timestamps go in as UTC, because SQLite keeps them
as text without an offset, and come back aware.

Nothing here may log a conversation: the ledger engine hides statement parameters from log
lines and exception messages (`hide_parameters`, gateway/ledger/repository.py), and aiosqlite's
per-statement debug lines, which print them, are turned off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Insert,
    Text,
    bindparam,
    cast,
    delete,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.models_responses import responses_table
from gateway.ledger.responses_pg import row_error

__all__ = ["ResponsesRepository", "quiet_aiosqlite", "row_error"]

_JSON_COLUMNS = ("input_items", "response")
_TIME_COLUMNS = ("created_at", "expires_at")
_c = responses_table.c
# Every column, the JSON ones as their text (decoded by the caller with orjson): cast in SQL,
# since asyncpg would otherwise decode a json column itself, with the stdlib decoder.
_SELECT = select(
    *(cast(col, Text).label(col.name) if col.name in _JSON_COLUMNS else col for col in _c)
)
# The row a key may see: built once with bind parameters, so a lookup compiles nothing (the
# chain's lookup is on the request path of every `previous_response_id`).
_VISIBLE = (
    _c.id == bindparam("response_id"),
    _c.key_id.is_not_distinct_from(bindparam("key_id")),
    _c.expires_at > bindparam("now"),
)
_FETCH = _SELECT.where(*_VISIBLE)
_DELETE = delete(responses_table).where(*_VISIBLE)


def quiet_aiosqlite() -> None:
    """aiosqlite logs every statement with its parameters at DEBUG (a root logger at DEBUG
    turns it on): here those parameters are the stored conversations, which are never logged.
    Its warnings and errors still show."""
    driver_log = logging.getLogger("aiosqlite")
    # Its own level, not the effective one: a root logger lowered to DEBUG later must not
    # turn the statements on.
    if driver_log.level < logging.INFO:  # NOTSET (0) included
        driver_log.setLevel(logging.INFO)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _core_params(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _COLUMNS:
        value = row[name]
        if name in _JSON_COLUMNS:
            out[f"{name}_text"] = value
        else:
            out[f"{name}_value"] = _utc(value) if name in _TIME_COLUMNS else value
    return out


def _unnest_insert() -> str:
    """The asyncpg batch insert: one array parameter per column, every row in one statement.
    Built from the table, so a column added to the model is not silently left out."""
    names, arrays, values = [], [], []
    for n, col in enumerate(_c, start=1):
        names.append(col.name)
        if isinstance(col.type, DateTime):
            arrays.append(f"${n}::timestamptz[]")
        else:  # strings, and the JSON columns as their text
            arrays.append(f"${n}::text[]")
        values.append(f"{col.name}::json" if col.name in _JSON_COLUMNS else col.name)
    columns = ", ".join(names)
    return (
        f"INSERT INTO {responses_table.name} ({columns}) "
        f"SELECT {', '.join(values)} FROM unnest({', '.join(arrays)}) AS r({columns}) "
        "ON CONFLICT DO NOTHING"
    )


def _core_insert(dialect: str) -> Insert:
    """The other dialects' batch insert, one bind parameter per column, executed over the rows.
    The JSON columns' parameters are text (SQLAlchemy's JSON type would encode it again);
    Postgres will not put a text parameter in a json column unless told to, and SQLite's JSON
    is text already (a CAST to an unknown type there would make it a number)."""
    values: dict[str, ColumnElement[Any]] = {}
    for col in _c:
        if col.name in _JSON_COLUMNS:
            text = bindparam(f"{col.name}_text", type_=Text)
            values[col.name] = cast(text, JSON) if dialect == "postgresql" else text
        else:
            values[col.name] = bindparam(f"{col.name}_value", type_=col.type)
    if dialect == "postgresql":
        return pg_insert(responses_table).values(values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(responses_table).values(values).on_conflict_do_nothing()
    return insert(responses_table).values(values)  # a replay then fails on the primary key


_UNNEST_INSERT = _unnest_insert()
_COLUMNS = tuple(col.name for col in _c)


class ResponsesRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        # Shared with the ledger: disposed by its owner (LedgerRepository.close), not here.
        self.engine = engine
        dialect = engine.dialect
        if dialect.name == "sqlite":
            quiet_aiosqlite()
        self._unnest = dialect.name == "postgresql" and dialect.driver == "asyncpg"
        self._insert = _core_insert(dialect.name)

    async def insert(self, row: Mapping[str, Any]) -> bool:
        """One row; `input_items` and `response` are JSON text. False when the id exists
        (a replayed save), which leaves the stored row as it was."""
        return await self.insert_many((row,)) == 1

    async def insert_many(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Every row in one statement and one transaction (all or none of them); the JSON
        columns are text. A row whose id exists is skipped, the stored row left as it was
        (also a second row with the same id in `rows`). How many rows were inserted, where
        the driver says (asyncpg, SQLite); -1 where it does not."""
        if not rows:
            return 0
        async with self.engine.begin() as conn:
            if self._unnest:
                arrays = tuple(
                    [_utc(row[name]) for row in rows]
                    if name in _TIME_COLUMNS
                    else [row[name] for row in rows]
                    for name in _COLUMNS
                )
                result = await conn.exec_driver_sql(_UNNEST_INSERT, arrays)
            else:
                params = [_core_params(row) for row in rows]
                # One row: a plain execute, whose rowcount every driver reports.
                result = await conn.execute(self._insert, params[0] if len(params) == 1 else params)
        return int(result.rowcount)

    async def fetch(
        self, response_id: str, key_id: str | None, now: datetime
    ) -> dict[str, Any] | None:
        """The row (JSON columns as text) if it exists, belongs to `key_id` (None matches only
        rows stored without a key) and has not expired."""
        params = {"response_id": response_id, "key_id": key_id, "now": _utc(now)}
        async with self.engine.connect() as conn:
            found = (await conn.execute(_FETCH, params)).mappings().first()
        if found is None:
            return None
        out = dict(found)
        for name in _TIME_COLUMNS:
            out[name] = _utc(out[name])
        return out

    async def delete(self, response_id: str, key_id: str | None, now: datetime) -> bool:
        """Delete the row if `fetch` would have returned it; whether one was deleted."""
        params = {"response_id": response_id, "key_id": key_id, "now": _utc(now)}
        async with self.engine.begin() as conn:
            result = await conn.execute(_DELETE, params)
        return bool(result.rowcount)

    async def purge_batch(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` rows expired at `now`, in one short transaction (the
        expires_at index finds them); how many were deleted."""
        expired = select(_c.id).where(_c.expires_at <= _utc(now)).limit(limit)
        stmt = delete(responses_table).where(_c.id.in_(expired))
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)
